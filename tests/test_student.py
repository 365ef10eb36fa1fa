"""Student copies of the chapters: solutions removed, exercises and checks kept, outputs cleared."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

from normxlogit.student import PLACEHOLDER, main, strip_notebook, write_student_notebooks

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "tests" / "data" / "student_example.ipynb"


@pytest.fixture(scope="module")
def example():
    return nbformat.read(EXAMPLE, as_version=4)


@pytest.fixture(scope="module")
def student(example):
    return strip_notebook(example)


def _text(nb) -> str:
    parts = []
    for cell in nb.cells:
        parts.append(cell.source)
        for output in cell.get("outputs", []):
            parts.append(str(output))
    return "\n".join(parts)


def test_the_example_has_a_solution_of_every_kind(example):
    # SECRET-ANSWER-1..9 mark the nine solutions the example hides; the test below needs all of them there.
    text = _text(example)
    assert all(f"SECRET-ANSWER-{i}" in text for i in range(1, 10))


def test_every_solution_is_removed(student):
    assert "SECRET" not in _text(student).replace("Everything without a SECRET", "")
    assert not [c for c in student.cells if "{solution" in c.source]


def test_exercises_checks_and_prose_are_kept(student):
    text = _text(student)
    for label in ("ex-print", "ex-answer", "ex-double", "ex-gated"):
        assert f":label: {label}" in text
    assert "(★★★)" in text  # difficulty marks survive
    checks = [c.source for c in student.cells if "check" in c.metadata.get("tags", [])]
    assert checks == ["assert answer == 42, answer", "assert double(4) == 8"]
    for prose in ("Text after the first solution stays.", "Before the gated solution.", "After the gated solution.",
                  "## What remains"):
        assert prose in text


def test_code_solutions_become_placeholders(student):
    code = [c for c in student.cells if c.cell_type == "code"]
    assert [c.source.splitlines()[0] for c in code] == [
        "x = 2", PLACEHOLDER, "assert answer == 42, answer", "def double(v):", "assert double(4) == 8"]
    scaffold = code[3].source
    assert f"    {PLACEHOLDER}" in scaffold and "print(double(4))" in scaffold and "SOLUTION" not in scaffold
    ast.parse(scaffold)  # the stub still parses
    # The tags that fold a solution in the book are gone: the student must see the stub.
    assert "tags" not in code[1].metadata


def test_outputs_cleared_and_teacher_cells_dropped(student, example):
    assert all(c.outputs == [] and c.execution_count is None for c in student.cells if c.cell_type == "code")
    assert not [c for c in student.cells if "remove-cell-student" in c.metadata.get("tags", [])]
    assert len(example.cells) == 16 and len(student.cells) == 12
    nbformat.validate(student)
    assert student.metadata["normxlogit"]["student_copy"] is True


def test_the_source_notebook_is_not_changed(example):
    before = nbformat.writes(example)
    strip_notebook(example)
    assert nbformat.writes(example) == before


def test_an_unclosed_gated_solution_is_an_error():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("```{solution-start} ex\n```\n\nhidden")])
    with pytest.raises(ValueError, match="solution-end"):
        strip_notebook(nb)


def test_the_command_writes_a_folder(tmp_path, capsys):
    source = tmp_path / "book"
    source.mkdir()
    (source / "ch.ipynb").write_bytes(EXAMPLE.read_bytes())
    assert main([str(source), str(tmp_path / "students")]) == 0
    written = tmp_path / "students" / "ch.ipynb"
    assert capsys.readouterr().out.strip() == str(written)
    assert "SECRET-ANSWER-2" not in written.read_text()
    assert main([str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
    with pytest.raises(ValueError, match="overwrite"):
        write_student_notebooks(source, source)


def test_every_chapter_has_a_student_copy(tmp_path):
    chapters = sorted((ROOT / "book").glob("*.ipynb"))
    written = write_student_notebooks(ROOT / "book", tmp_path)
    assert [p.name for p in written] == [p.name for p in chapters]
    for path in written:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
        assert "{solution" not in _text(nb)
