"""The teaching kit (normxlogit.teaching) is read from the chapters: slides, a 90-minute plan, the rubric."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import nbformat
import pytest

from normxlogit import teaching

ROOT = Path(__file__).resolve().parent.parent
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")


def _timed(seconds: float) -> dict:
    return {"execution": {"iopub.execute_input": "2026-01-01T00:00:00.000000Z",
                          "shell.execute_reply": f"2026-01-01T00:{int(seconds) // 60:02d}:{int(seconds) % 60:02d}.000000Z"}}


@pytest.fixture()
def chapter(tmp_path) -> Path:
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell('fig.suptitle("Norm against frequency")\nassert x > 0\nassert y', metadata=_timed(90))
    code.outputs = [nbformat.v4.new_output("display_data", data={"image/png": base64.b64encode(PNG).decode()})]
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Norms and frequency\n\nDo frequent words have small norms? We measure it. "
                                      "Then we test it.\n\n**Run time.** Quick profile about 1 min."),
        nbformat.v4.new_markdown_cell("## 1. The data\n\nSST-2's {term}`tokens <token>` and their counts "
                                      "{cite:p}`socher2013sst`. More text here."),
        nbformat.v4.new_code_cell("load()", metadata=_timed(5)),
        nbformat.v4.new_markdown_cell("## 2. Norm against frequency\n\nThe ρ between them, with an interval."),
        code,
        nbformat.v4.new_markdown_cell("## Exercises\n\n```{exercise} Count them (★)\n:label: ex-a\n\nCount.\n```\n\n"
                                      "```{exercise} Is it causal? (★★★)\n:label: ex-b\n\nArgue.\n```\n\n"
                                      "```{solution} ex-b\n:class: dropdown\n\nNo: a matched comparison is needed.\n```"),
    ]
    path = tmp_path / "01_norms.ipynb"
    nbformat.write(nb, path)
    return path


def test_outline_reads_the_chapter(chapter):
    outline = teaching.chapter_outline(chapter)
    assert outline.title == "Norms and frequency"
    assert outline.opening == "Do frequent words have small norms? We measure it. Then we test it."
    assert outline.run_time == "Quick profile about 1 min."
    assert [s.title for s in outline.sections] == ["1. The data", "2. Norm against frequency", "Exercises"]
    data, norm, _ = outline.sections
    assert data.text and "SST-2's tokens and their counts." in teaching._first_sentences("\n".join(data.text))
    assert norm.claims == 2 and norm.figures == [("Norm against frequency", PNG)] and norm.seconds == [(4, 90.0)]
    assert [(e.label, e.stars) for e in outline.exercises] == [("ex-a", 1), ("ex-b", 3)]
    assert outline.exercises[1].solution == "No: a matched comparison is needed."


def test_slides_timeline_and_rubric(chapter, tmp_path):
    written = teaching.write_kit(chapter, tmp_path / "kit")
    folder = tmp_path / "kit" / "01_norms"
    slides = (folder / "slides.md").read_text()
    assert slides.startswith("# Norms and frequency") and slides.count("\n---\n") == 3  # two sections, exercises
    assert "![Norm against frequency](figures/01_norms-01.png)" in slides
    assert (folder / "figures" / "01_norms-01.png").read_bytes() == PNG
    assert "2 `assert` statement(s)" in slides and "Count them (★)" in slides
    plan = (folder / "timeline.md").read_text()
    spans = [tuple(map(int, m)) for m in re.findall(r"^\| (\d+)-(\d+) \|", plan, re.M)]
    assert spans[0][0] == 0 and spans[-1][1] == 90 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert '- cell 4 in "2. Norm against frequency": 1.5 min' in plan and "load()" not in plan
    rubric = (tmp_path / "kit" / "rubric.md").read_text()
    assert "Is it causal? (★★★)" in rubric and "No: a matched comparison is needed." in rubric
    assert "Count them" not in rubric
    assert set(written) == {folder / "slides.md", folder / "timeline.md", tmp_path / "kit" / "rubric.md"}


def test_the_books_kit_covers_every_chapter_and_every_three_star_exercise(tmp_path):
    teaching.write_kit(ROOT / "book", tmp_path)
    chapters = sorted((ROOT / "book").glob("[0-9]*.ipynb"))
    rubric = (tmp_path / "rubric.md").read_text()
    for path in chapters:
        plan = (tmp_path / path.stem / "timeline.md").read_text()
        assert re.search(r"^\| \d+-90 \|", plan, re.M), path.stem
        for title in re.findall(r"\{exercise\}\s*(.*?\(★★★\))", path.read_text()):
            assert teaching._plain(title.replace('\\"', '"')) in rubric, title
    assert (tmp_path / "03_head_on_top" / "figures").is_dir()


def test_glued_numbers_are_pasted_as_the_book_shows_them(tmp_path, monkeypatch):
    """{glue:text} roles become the run's values (formatted as myst-nb formats them), never raw roles."""
    from myst_nb import glue
    from IPython.core.interactiveshell import InteractiveShell

    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell("glue(...)")
    shell = InteractiveShell.instance()
    captured = []
    # glue() publishes a display_data output; capture it as a kernel would write it into the notebook
    monkeypatch.setattr(shell.display_pub, "publish", lambda data, metadata=None, **kw: captured.append((data, metadata)))
    for name, value in (("margin", 0.11818), ("n", 400), ("reading", "higher")):
        glue(name, value, display=False)
    code.outputs = [nbformat.v4.new_output("display_data", data=data, metadata=meta) for data, meta in captured]
    nb.cells = [nbformat.v4.new_markdown_cell("# T\n\nOpening."),
                nbformat.v4.new_markdown_cell("## 1. Result\n\nA margin of {glue:text}`margin:+.3f` over "
                                              "{glue:text}`n` sentences, {glue:text}`reading`; {glue}`missing`."),
                code]
    nbformat.write(nb, tmp_path / "01_t.ipynb")
    outline = teaching.chapter_outline(tmp_path / "01_t.ipynb")
    text = "".join(outline.sections[0].text)
    assert "A margin of +0.118 over 400 sentences, higher; …." in text and "{glue" not in text
