"""A teacher's kit built from the chapters themselves: lecture slides, a 90-minute timeline, a rubric.

    python -m normxlogit.teaching book/ teaching/       # every chapter of book/ into teaching/

Nothing here is a second copy of the book: every line is read from the chapter notebooks (their headings, the
opening paragraph, the figures their outputs hold, the exercises and written solutions, and how long each cell took
in the committed full-profile run, which ``jupyter execute`` records in each cell's metadata). Rerun it after a
chapter changes. It writes, per chapter ``<name>``:

- ``<name>/slides.md``: a lecture outline as slides (Markdown with ``---`` between slides, as Marp, reveal.js's
  Markdown plugin and Jupyter's RISE-style converters read it): the title and what the chapter asks, one slide per
  section with its first sentences and its figures (PNG files written beside it), the exercises, the run time;
- ``<name>/timeline.md``: a 90-minute session plan, minutes per section in proportion to its reading and figures,
  with the cells to run before class (the slow ones, with their measured times) and the exercises' share;

and ``rubric.md`` for the three-star written exercises of every chapter: the exercise, what a full answer contains
(the book's own solution) and the levels a grader scores. Only the standard library and nbformat are used.
"""

from __future__ import annotations

import argparse
import base64
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Iterator, Sequence

import nbformat

SESSION_MINUTES = 90
PRE_RUN_SECONDS = 60  # a cell slower than this in the committed run is run before class
_EXERCISE = re.compile(r"^[`:]{3,}\s*\{exercise\}\s*(?P<title>.*?)\s*\n:label:\s*(?P<label>\S+)(?P<body>.*?)^[`:]{3,}\s*$",
                       re.S | re.M)
_SOLUTION = re.compile(r"^[`:]{3,}\s*\{solution\}\s*(?P<label>\S+)\s*\n(?P<body>.*?)^[`:]{3,}\s*$", re.S | re.M)
_HEADING = re.compile(r"^(?P<hashes>#{1,3})\s+(?P<text>.+?)\s*$", re.M)
_FIGURE_TITLE = re.compile(r"""(?:suptitle\(|title=)\s*f?["']([^"']{6,})["']""")


@dataclass
class Exercise:
    label: str
    title: str
    stars: int
    text: str
    solution: str = ""


@dataclass
class Section:
    title: str
    level: int
    text: list[str] = field(default_factory=list)  # its markdown, cell by cell
    figures: list[tuple[str, bytes]] = field(default_factory=list)  # (a title, PNG bytes)
    seconds: list[tuple[int, float]] = field(default_factory=list)  # (cell number, seconds) of its code cells
    claims: int = 0  # assert statements in its code cells

    @property
    def words(self) -> int:
        return sum(len(t.split()) for t in self.text)


@dataclass
class Outline:
    name: str
    title: str
    opening: str
    run_time: str
    sections: list[Section]
    exercises: list[Exercise]


def _plain(markdown: str) -> str:
    """Markdown and MyST roles reduced to readable text: {term}`x <y>` -> x, {cite:p}`k` -> dropped."""
    text = re.sub(r"\{cite:[pt]\}`[^`]*`", "", markdown)
    text = re.sub(r"\{(?:term|doc|ref|numref)\}`([^`<]*?)\s*(?:<[^`]*>)?`", r"\1", text)
    text = re.sub(r"\s+([,.;:)])", r"\1", text)
    return re.sub(r"[ \t]+", " ", text).strip()


_GLUE = re.compile(r"\{glue(?::text)?\}`(?P<name>[^`:]+)(?::(?P<spec>[^`]*))?`")


def _glue_outputs(nb) -> Iterator[tuple[str, str | None]]:
    """Each output a chapter glues (myst-nb's ``glue``), in order: its name and text/plain repr (None if it has none).
    A key glued twice appears twice."""
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            name = out.get("metadata", {}).get("scrapbook", {}).get("name")
            data = out.get("data", {})
            text = data.get("application/papermill.record/text/plain", data.get("text/plain"))
            if name:
                yield name, None if text is None else "".join(text)


def _glued(nb) -> dict[str, str]:
    """The values a chapter glues: name -> its text/plain repr, from the executed outputs."""
    return {name: text for name, text in _glue_outputs(nb) if text is not None}


def _paste(markdown: str, values: dict[str, str]) -> str:
    """``{glue:text}`name:fmt``` replaced by the run's value, formatted by myst-nb itself; unknown names become "…"."""
    from myst_nb.core.variables import format_plain_text  # the book's toolchain (jupyter-book), used only here

    def one(match: re.Match) -> str:
        if match["name"] not in values:
            return "…"
        try:
            return format_plain_text(values[match["name"]], match["spec"] or "")
        except (TypeError, ValueError):
            return values[match["name"]]
    return _GLUE.sub(one, markdown)


def _first_sentences(markdown: str, count: int = 2) -> str:
    """The first ``count`` sentences of the first prose paragraph (not a heading, table, fence or formula)."""
    for paragraph in re.split(r"\n\s*\n", markdown):
        lines = [line for line in paragraph.splitlines() if line.strip()]
        if lines and not lines[0].lstrip().startswith(("#", "|", "```", ":::", ":", "$$", "<", "!", "-")):
            text = re.sub(r"\s+", " ", _plain(" ".join(lines)))
            return " ".join(re.split(r"(?<=[.!?])\s+(?=[A-Z*`])", text)[:count]).strip()
    return ""


def _stars(title: str) -> int:
    found = re.search(r"\((★+)\)\s*$", title)
    return len(found.group(1)) if found else 0


def _seconds(cell) -> float | None:
    timing = cell.get("metadata", {}).get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not (start and end):
        return None
    parse = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    return (parse(end) - parse(start)).total_seconds()


def _figures(cell) -> list[tuple[str, bytes]]:
    titles = _FIGURE_TITLE.findall(cell.source)
    title = re.sub(r"\{[^}]*\}", "…", titles[0]).replace("\\n", " ") if titles else "figure"
    return [(title, base64.b64decode(out["data"]["image/png"])) for out in cell.get("outputs", [])
            if "image/png" in out.get("data", {})]


def chapter_outline(path: str | Path) -> Outline:
    """Read one chapter: its title, opening paragraph, run-time note, sections, figures, timings and exercises."""
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    glued = _glued(nb)  # the prose's {glue:text} numbers, as the built book shows them
    title, opening, run_time = path.stem, "", ""
    sections: list[Section] = []
    exercises: dict[str, Exercise] = {}
    for number, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            source = _paste(cell.source, glued)
            for match in _EXERCISE.finditer(source):
                exercises[match["label"]] = Exercise(match["label"], _plain(match["title"]), _stars(match["title"]),
                                                     _plain(match["body"]))
            for match in _SOLUTION.finditer(source):
                if match["label"] in exercises:
                    body = "\n".join(l for l in match["body"].splitlines() if not l.startswith(":class:"))
                    exercises[match["label"]].solution = _plain(body)
            source = _SOLUTION.sub("", _EXERCISE.sub("", source))
            if "**Run time.**" in source:
                run_time = _plain(source.split("**Run time.**", 1)[1].split("\n\n", 1)[0])
            last = 0
            for heading in _HEADING.finditer(source):
                if sections or heading["hashes"] != "#":
                    if sections:
                        sections[-1].text.append(source[last:heading.start()])
                    sections.append(Section(_plain(heading["text"]), len(heading["hashes"])))
                else:
                    title = _plain(heading["text"])
                last = heading.end()
            rest = source[last:]
            if sections:
                sections[-1].text.append(rest)
            elif not opening and rest.strip():
                opening = _first_sentences(rest, 3)
        elif cell.cell_type == "code" and sections:
            seconds = _seconds(cell)
            if seconds is not None:
                sections[-1].seconds.append((number, seconds))
            sections[-1].figures += _figures(cell)
            sections[-1].claims += len(re.findall(r"^\s*assert\b", cell.source, re.M))
    return Outline(path.stem, title, opening, run_time, sections, list(exercises.values()))


def _is_exercises(section: Section) -> bool:
    return section.title.lower().startswith("exercise")


def slides(outline: Outline, figure_dir: str = "figures") -> tuple[str, dict[str, bytes]]:
    """The lecture outline as Markdown slides, and the figure files it links ({file name: PNG bytes})."""
    files: dict[str, bytes] = {}
    out = [f"# {outline.title}\n", outline.opening]
    if outline.run_time:
        out.append(f"\n*Run time: {outline.run_time}*")
    for section in outline.sections:
        if _is_exercises(section):
            continue
        out.append(f"\n---\n\n{'#' if section.level <= 2 else '##'}# {section.title}\n")
        lead = _first_sentences("\n".join(section.text))
        if lead:
            out.append(f"- {lead}")
        if section.claims:
            out.append(f"- claims checked in code here: {section.claims} `assert` statement(s)")
        for k, (title, png) in enumerate(section.figures, 1):
            name = f"{outline.name}-{len(files) + 1:02d}.png"
            files[name] = png
            out.append(f"\n![{title}]({figure_dir}/{name})")
    if outline.exercises:
        out.append("\n---\n\n## Exercises\n")
        out += [f"- {e.title}" for e in outline.exercises]
    return "\n".join(out) + "\n", files


def timeline(outline: Outline, minutes: int = SESSION_MINUTES) -> str:
    """A session plan: fixed opening, exercise and closing blocks, the rest shared by the sections in proportion to
    their words plus two minutes' worth per figure; and the cells to run before class."""
    opening, closing = 10, 5
    exercise_minutes = 20 if outline.exercises else 0
    teach = [s for s in outline.sections if not _is_exercises(s) and s.level == 2 and not s.title.lower().startswith(("summary", "what we"))]
    weight = [s.words + 150 * len(s.figures) for s in teach]
    budget = minutes - opening - closing - exercise_minutes
    shares = [round(budget * w / max(sum(weight), 1)) for w in weight]
    if shares:
        shares[-1] += budget - sum(shares)  # rounding: the last section absorbs it
    rows = ["| minutes | what | in the notebook |", "|---|---|---|",
            f"| 0-{opening} | the question: {_plain(outline.opening)[:140]}… | title and opening cells |"]
    t = opening
    for section, share in zip(teach, shares):
        figures = f"{len(section.figures)} figure(s)" if section.figures else "prose"
        rows.append(f"| {t}-{t + share} | {section.title} | {figures}; {section.claims} assert(s) |")
        t += share
    if exercise_minutes:
        stars = ", ".join(f"{e.title}" for e in outline.exercises)
        rows.append(f"| {t}-{t + exercise_minutes} | exercises in pairs | {stars} |")
        t += exercise_minutes
    rows.append(f"| {t}-{minutes} | what we measured; assign the rest | summary section |")
    slow = [(n, s, sec.title) for sec in outline.sections for n, s in sec.seconds if s >= PRE_RUN_SECONDS]
    pre = ["", "**Before class**, run the whole chapter once in the profile the class will use: models and results are "
           "cached under `nx.cache_dir()`, so the class's own run is quick. The slow cells (a minute or more in the "
           "committed full-profile run, which may itself have read cached results):", ""]
    pre += [f"- cell {n} in \"{title}\": {s / 60:.1f} min" for n, s, title in slow] or ["- nothing: every cell ran in "
                                                                                       "under a minute"]
    head = [f"# {outline.title}: a {minutes}-minute session", ""]
    if outline.run_time:
        head += [f"Run time (from the chapter): {outline.run_time}", ""]
    return "\n".join(head + rows + pre) + "\n"


RUBRIC_LEVELS = (
    ("claim", "states a clear, testable answer to the question asked", "an answer, but vague or hedged",
     "no answer, or one that restates the question"),
    ("evidence", "cites numbers from their own run, with intervals, and the profile they ran",
     "numbers without intervals, or from the book instead of their run", "no numbers"),
    ("method", "names the comparison or control that would settle it and why it isolates the effect",
     "a comparison, without saying what it rules out", "none"),
    ("limits", "says what the result does not show (model, sample, protocol) and what would change it",
     "mentions a limit in passing", "none"),
)


def rubric(outlines: Sequence[Outline]) -> str:
    """The grading rubric for every three-star exercise: shared criteria, then each exercise with the book's answer."""
    out = ["# Rubric for the three-star written exercises", "",
           "Each criterion scores 2 (full), 1 (partial) or 0; 6 of 8 is a good answer. The book's solution says what "
           "a full answer contains; a different answer that meets the criteria scores as well.", "",
           "| criterion | 2 | 1 | 0 |", "|---|---|---|---|"]
    out += [f"| {name} | {full} | {partial} | {none} |" for name, full, partial, none in RUBRIC_LEVELS]
    for outline in outlines:
        for e in (e for e in outline.exercises if e.stars >= 3):
            out += ["", f"## {outline.title}: {e.title}", "", e.text, "",
                    f"**A full answer contains** (the book's solution): {e.solution or 'see the chapter.'}"]
    return "\n".join(out) + "\n"


def write_kit(source: str | Path, out: str | Path) -> list[Path]:
    """Slides, timeline and figures per chapter, and the rubric, from every chapter in ``source`` into ``out``."""
    source, out = Path(source), Path(out)
    paths = sorted(source.glob("[0-9]*.ipynb")) if source.is_dir() else [source]
    if not paths:
        raise FileNotFoundError(f"no chapter notebooks in {source}")
    written, outlines = [], []
    for path in paths:
        outline = chapter_outline(path)
        outlines.append(outline)
        folder = out / outline.name
        (folder / "figures").mkdir(parents=True, exist_ok=True)
        text, files = slides(outline)
        for name, png in files.items():
            (folder / "figures" / name).write_bytes(png)
        for name, content in (("slides.md", text), ("timeline.md", timeline(outline))):
            (folder / name).write_text(content, encoding="utf-8")
            written.append(folder / name)
    (out / "rubric.md").write_text(rubric(outlines), encoding="utf-8")
    return written + [out / "rubric.md"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m normxlogit.teaching",
                                     description="Write lecture slides, a 90-minute timeline per chapter and the "
                                                 "three-star rubric, all read from the chapters.")
    parser.add_argument("source", nargs="?", default="book", help="a folder of chapters or one .ipynb (default: book)")
    parser.add_argument("out", nargs="?", default="teaching", help="folder to write into (default: teaching)")
    args = parser.parse_args(argv)
    try:
        for path in write_kit(args.source, args.out):
            print(path)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
