"""Small Sphinx additions for the book, loaded through ``sphinx: local_extensions`` in _config.yml.

- ``authoryear``: a pybtex style for the bibliography, entries sorted by author and year and labelled
  "Abbasi et al. 2025", the way the author-year citations in the text name them (sphinxcontrib-bibtex otherwise
  numbers the list). Selected by ``bibtex_default_style: authoryear``.
- Each page's inline scripts once: with jupyter-book 1.0.4 the configuration scripts of sphinx-thebe and
  sphinx-togglebutton are added twice, and the second ``const THEBE_JS_URL = ...`` is a JavaScript SyntaxError in
  every page's console.
- Figures keep their aspect ratio: myst-nb passes a retina PNG's display size (its ``width`` and ``height``
  metadata) to the image as an inline ``style="width: 740px; height: 711px"``. The inline height wins over the
  stylesheet's ``height: auto``, so a figure wider than the column was squashed; the height is dropped here and the
  browser derives it from the width (``custom.css`` adds ``height: auto !important`` for images built elsewhere).
- Downloads for teachers (linked from book/teachers.md): at the end of each build, the student copies of the
  chapters (``normxlogit.student``: solutions and outputs removed) and the teaching kit (``normxlogit.teaching``:
  slides, a 90-minute timeline per chapter, the three-star rubric) are written from the chapters into
  ``_static/downloads/``, one file each and as two zip archives, so they always match the pages.
- A code cell tagged ``solution`` folds as a whole, its output with its code, behind one "Show the solution"
  toggle: with ``hide-input`` alone myst-nb folds the code and prints the answer right under the exercise.
"""

from __future__ import annotations

import shutil
import sys
from collections import Counter
from pathlib import Path

from docutils import nodes
from sphinx.transforms.post_transforms import SphinxPostTransform
from pybtex.plugin import register_plugin
from pybtex.style.formatting.plain import Style as PlainStyle
from pybtex.style.labels import BaseLabelStyle


def _surname(person) -> str:
    return " ".join(person.prelast_names + person.last_names) or " ".join(person.first_names)


def _label(entry) -> str:
    people = entry.persons.get("author") or entry.persons.get("editor") or []
    names = [_surname(p).replace("{", "").replace("}", "") for p in people]
    if not names:
        who = entry.fields.get("title", entry.key)
    elif len(names) == 1:
        who = names[0]
    elif len(names) == 2:
        who = f"{names[0]} & {names[1]}"
    else:
        who = f"{names[0]} et al."
    return f"{who} {entry.fields.get('year', 'n.d.')}"


class AuthorYearLabels(BaseLabelStyle):
    def format_labels(self, sorted_entries):
        entries = list(sorted_entries)
        labels = [_label(e) for e in entries]
        counts, seen = Counter(labels), Counter()
        for label in labels:
            if counts[label] > 1:  # two works by the same authors in one year: 2020a, 2020b
                seen[label] += 1
                label += "abcdefghijklmnopqrstuvwxyz"[seen[label] - 1]
            yield label


class AuthorYearStyle(PlainStyle):
    default_label_style = "authoryear"


register_plugin("pybtex.style.labels", "authoryear", AuthorYearLabels)
register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle)


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        # An inline script is added once with filename None and once with "": the same script.
        attributes = getattr(script, "attributes", {})
        key = (getattr(script, "filename", str(script)) or "", tuple(sorted((k, str(v)) for k, v in attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique


def _keep_aspect_ratio(app, doctree, docname):
    for image in doctree.findall(nodes.image):
        if image.get("width") and image.get("height"):
            del image["height"]


class FoldSolutionCells(SphinxPostTransform):
    """Give solution cells myst-nb's "hide-cell" mode before its HideInputCells (priority 199) wraps them."""

    default_priority = 198
    formats = ("html",)

    def run(self, **kwargs) -> None:
        for node in self.document.findall(nodes.container):
            tags = (node.get("cell_metadata") or {}).get("tags") or []
            if node.get("nb_element") == "cell_code" and "solution" in tags:
                node["hide_mode"] = "all"
                node["prompt_show"] = "Show the solution"
                node["prompt_hide"] = "Hide the solution"


ROOT = Path(__file__).resolve().parents[2]
DOWNLOADS = "_static/downloads"


def _write_downloads(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    if str(ROOT) not in sys.path:  # building from a checkout without the package installed
        sys.path.insert(0, str(ROOT))
    from normxlogit.student import write_student_notebooks
    from normxlogit.teaching import write_kit

    out = Path(app.outdir) / DOWNLOADS
    shutil.rmtree(out, ignore_errors=True)
    chapters = sorted((ROOT / "book").glob("[0-9]*.ipynb"))
    for chapter in chapters:
        write_student_notebooks(chapter, out / "students")
    write_kit(ROOT / "book", out / "teaching")
    for name in ("students", "teaching"):
        shutil.make_archive(str(out / name), "zip", out, name)


def setup(app):
    app.connect("build-finished", _write_downloads)
    app.add_post_transform(FoldSolutionCells)
    app.connect("html-page-context", _dedupe_scripts)
    app.connect("doctree-resolved", _keep_aspect_ratio)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
