"""Student copies of the book's chapters: exercises kept, solutions and outputs removed.

    python -m normxlogit.student book/ students/        # every chapter of book/ into students/
    python -m normxlogit.student book/03_head_on_top.ipynb students/

The convention the chapters follow (see book/teachers.md):

- An exercise is a sphinx-exercise block in a markdown cell, its difficulty in stars at the end of its title::

      ```{exercise} Which tokens does the norm rank first? (★★)
      :label: ex-norm-top
      ...
      ```

- A written solution is a ``{solution}`` block (backtick or colon fence) after it, in the same or a later markdown
  cell; the book folds it (``:class: dropdown``). A solution that spans code cells is written with the gated form
  ``{solution-start} ex-label`` ... ``{solution-end}``: everything between the two, cells included, is removed.
- A code solution is a code cell tagged ``solution`` (and ``hide-input`` so that the book folds it). In the student
  copy its source becomes ``# YOUR CODE HERE``; if the cell has ``### BEGIN SOLUTION`` / ``### END SOLUTION``
  lines, only the lines between them are replaced (the scaffold around them stays; an indented region becomes the
  placeholder and ``...``, so the cell still parses).
- A coding exercise is checked by the next code cell, tagged ``check``: ``assert`` statements over the student's
  variables. It is kept, so a student knows when the answer is right.
- A cell tagged ``remove-cell-student`` (any cell type) is left out of the student copy, as is a markdown cell
  tagged ``solution``.

Every output and execution count is cleared. Only the standard library and nbformat are used.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path
from typing import Sequence

import nbformat

SOLUTION_TAG = "solution"
CHECK_TAG = "check"
REMOVE_TAG = "remove-cell-student"
# Tags that fold or hide a solution in the book; a student's stub must be visible.
_HIDING_TAGS = {"hide-input", "hide-cell", "hide-output", "remove-input", "remove-cell", "remove-output"}
PLACEHOLDER = "# YOUR CODE HERE"

_FENCE_OPEN = re.compile(r"^(?P<indent>[ \t]{0,3})(?P<fence>`{3,}|:{3,})\s*\{(?P<name>[\w-]+)\}")
_BEGIN = re.compile(r"^(?P<indent>\s*)#+\s*BEGIN SOLUTION\b")
_END = re.compile(r"^\s*#+\s*END SOLUTION\b")


def _closes(line: str, fence: str) -> bool:
    """Whether ``line`` closes a block opened by ``fence`` (same character, at least as long, nothing after)."""
    stripped = line.strip()
    return bool(stripped) and set(stripped) == {fence[0]} and len(stripped) >= len(fence)


def _fence_end(lines: list[str], start: int, fence: str) -> int:
    """Index of the line that closes the fence opened at ``start`` (``len(lines)`` if it never closes)."""
    for j in range(start + 1, len(lines)):
        if _closes(lines[j], fence):
            return j
    return len(lines)


class _Stripper:
    """Removes solutions from markdown text, carrying an open gated solution from one cell to the next."""

    def __init__(self) -> None:
        self.in_gated = False  # between {solution-start} and {solution-end}

    def markdown(self, text: str) -> str:
        lines = text.splitlines(keepends=True)
        kept: list[str] = []
        i = 0
        while i < len(lines):
            match = _FENCE_OPEN.match(lines[i])
            name = match["name"] if match else None
            if self.in_gated:
                if name == "solution-end":
                    self.in_gated = False
                    i = _fence_end(lines, i, match["fence"]) + 1
                else:
                    # Skip the whole of any block inside the gated solution, so its fences cannot confuse us.
                    i = _fence_end(lines, i, match["fence"]) + 1 if match else i + 1
                continue
            if name == "solution":
                i = _fence_end(lines, i, match["fence"]) + 1
            elif name == "solution-start":
                self.in_gated = True
                i = _fence_end(lines, i, match["fence"]) + 1
            elif match:
                # Any other block (exercise, admonition, code) is kept whole: a {solution} inside a longer fence
                # is still found, because we only skip its opening line here and scan on.
                kept.append(lines[i])
                i += 1
            else:
                kept.append(lines[i])
                i += 1
        if len(kept) == len(lines):
            return text
        # Removing a block leaves blank lines where it was: keep at most one.
        return re.sub(r"\n{3,}", "\n\n", "".join(kept)).strip("\n")


def _stub(source: str) -> str:
    """The student's version of a code solution: the marked region (or the whole cell) becomes a placeholder."""
    lines = source.splitlines()
    if not any(_BEGIN.match(line) for line in lines):
        return PLACEHOLDER
    out: list[str] = []
    skipping = False
    for line in lines:
        begin = _BEGIN.match(line)
        if begin:
            out.append(f"{begin['indent']}{PLACEHOLDER}")
            if begin["indent"]:
                out.append(f"{begin['indent']}...")  # an indented block must not be left empty
            skipping = True
        elif skipping and _END.match(line):
            skipping = False
        elif not skipping:
            out.append(line)
    return "\n".join(out)


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def strip_notebook(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A student copy of ``nb``: solutions removed (see the module's docstring), exercises and checks kept,
    outputs cleared. ``nb`` itself is not changed."""
    nb = copy.deepcopy(nb)
    stripper = _Stripper()
    cells = []
    for cell in nb.cells:
        tags = _tags(cell)
        if REMOVE_TAG in tags:
            continue
        if cell.cell_type == "markdown":
            if SOLUTION_TAG in tags:
                continue
            text = stripper.markdown(cell.source)
            if not text.strip():
                continue
            cell.source = text
        elif stripper.in_gated:
            continue  # a code (or raw) cell inside a gated solution
        elif cell.cell_type == "code":
            if SOLUTION_TAG in tags:
                cell.source = _stub(cell.source)
                kept = [t for t in tags if t != SOLUTION_TAG and t not in _HIDING_TAGS]
                if kept:
                    cell.metadata["tags"] = kept
                else:
                    cell.metadata.pop("tags", None)
            cell.outputs = []
            cell.execution_count = None
            cell.metadata.pop("execution", None)
        cells.append(cell)
    if stripper.in_gated:
        raise ValueError("a {solution-start} block is never closed by {solution-end}")
    nb.cells = cells
    nb.metadata.pop("widgets", None)
    nb.metadata.setdefault("normxlogit", {})["student_copy"] = True
    return nb


def _sources(source: Path) -> list[Path]:
    if source.is_dir():
        return sorted(p for p in source.glob("*.ipynb") if not p.name.startswith("."))
    if source.suffix == ".ipynb" and source.is_file():
        return [source]
    raise FileNotFoundError(f"no notebook at {source} (give a .ipynb file or a folder of them)")


def write_student_notebooks(source: str | Path, out: str | Path) -> list[Path]:
    """Write a student copy of every notebook in ``source`` (a folder or one .ipynb file) into the folder ``out``,
    under the same names. Returns the paths written."""
    out = Path(out)
    paths = _sources(Path(source))
    if not paths:
        raise FileNotFoundError(f"no .ipynb files in {source}")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        target = out / path.name
        if target.resolve() == path.resolve():
            raise ValueError(f"refusing to overwrite the source notebook {path}")
        nbformat.write(strip_notebook(nb), target)
        written.append(target)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's arguments, for ``python -m normxlogit.student`` and the ``normxlogit`` CLI alike."""
    parser.add_argument("source", nargs="?", default="book",
                        help="a folder of chapters or one .ipynb file (default: book)")
    parser.add_argument("out", nargs="?", default="students", help="folder to write into (default: students)")


def run(args: argparse.Namespace) -> int:
    for path in write_student_notebooks(args.source, args.out):
        print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m normxlogit.student",
        description="Write student copies of the chapters: exercises kept, solutions and outputs removed.")
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
