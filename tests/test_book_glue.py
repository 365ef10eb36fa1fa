"""Every number a chapter's prose takes from its run ({glue:text}`name:spec`) is glued by that chapter's committed
outputs, and formats with its spec: a renamed key or a notebook committed without re-execution fails here, not as a
silent "…" or a build warning on the published page."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import nbformat
import pytest

from normxlogit.teaching import _GLUE, _glue_outputs, _glued

format_plain_text = pytest.importorskip("myst_nb.core.variables").format_plain_text

BOOK = Path(__file__).resolve().parents[1] / "book"
CHAPTERS = sorted(BOOK.glob("*.ipynb"))


def _roles(nb) -> list[tuple[str, str]]:
    return [(m["name"], m["spec"] or "") for cell in nb.cells if cell.cell_type == "markdown"
            for m in _GLUE.finditer(cell.source)]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_glued_number_in_the_prose_comes_from_the_committed_run(path: Path):
    nb = nbformat.read(path, as_version=4)
    values = _glued(nb)
    missing = sorted({name for name, _ in _roles(nb)} - set(values))
    assert not missing, f"{path.name}: the prose quotes {missing}, which no output glues; re-execute the chapter"
    for name, spec in _roles(nb):
        format_plain_text(values[name], spec)  # raises on a spec that does not fit the value


def test_the_check_sees_a_missing_key():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("A drop of {glue:text}`drop:.3f`.")])
    assert _roles(nb) == [("drop", ".3f")] and _glued(nb) == {}


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_no_key_is_glued_twice(path: Path):
    # myst-nb warns "glue key ... duplicate" and the prose shows whichever value it met last.
    counts = Counter(name for name, _ in _glue_outputs(nbformat.read(path, as_version=4)))
    twice = sorted(name for name, n in counts.items() if n > 1)
    assert not twice, f"{path.name}: {twice} glued in more than one output; give each a name of its own"


def test_the_check_sees_a_key_glued_twice():
    def glued(name):
        return nbformat.v4.new_output("display_data", data={"text/plain": "1"},
                                      metadata={"scrapbook": {"name": name}})
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(outputs=[glued("a")]),
                                         nbformat.v4.new_code_cell(outputs=[glued("a"), glued("b")])])
    assert [name for name, _ in _glue_outputs(nb)] == ["a", "a", "b"] and _glued(nb) == {"a": "1", "b": "1"}
