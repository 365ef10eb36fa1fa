"""Every library name the book's prose mentions exists.

The markdown of each chapter (and of the book's ``.md`` pages) names functions and modules in backticks:
``nx.evaluate``, ``normxlogit.evaluation.stats``, ``na.norm_sources``. A renamed or never-written function leaves
the reader with a name that raises ``AttributeError``. This test resolves each such name:

- ``nx.<...>`` and ``normxlogit.<...>``: attribute by attribute from the package (importing submodules on the way);
- ``<alias>.<...>`` where the chapter's code binds ``<alias>`` to a normxlogit module or object
  (``import normxlogit.studies.norms as na``, ``from normxlogit.data import blimp``);
- a chapter's own variables (``result.aopc``) are skipped;
- ``<Name>.<...>`` where ``<Name>`` is a public name of the facade (``Attribution.ranking``) or a normxlogit module
  (``evidence.paper_reference``);
- any other two-letter head (``fa.paired_difference``) is an alias the chapter never defines: reported too.

Other dotted names (``model.lm_head``, ``torch.tanh``, ``requirements.txt``) are left alone.
"""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import re
from pathlib import Path

import pytest

import normxlogit as nx

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "book").glob("*.ipynb")) + sorted((ROOT / "book").glob("*.md")) + [ROOT / "README.md"]
DOTTED = re.compile(r"(?<![\w./-])([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)(?![\w/-])")
FILE_SUFFIXES = {"py", "json", "jsonl", "md", "ipynb", "yml", "yaml", "txt", "bib", "csv", "toml", "com", "html"}


def _modules() -> dict[str, str]:
    """Every normxlogit module by its last name (``evidence`` -> ``normxlogit.data.evidence``)."""
    found = {}
    for info in pkgutil.walk_packages(nx.__path__, "normxlogit."):
        found.setdefault(info.name.rsplit(".", 1)[1], info.name)
    return found


MODULES = _modules()


def _third_party(head: str) -> bool:
    """Whether ``head`` is a package of its own (``captum.metrics``, ``inseq.load_model``): the integrations'
    modules share their peers' names, and a mention of the peer is not a normxlogit name."""
    import importlib.util

    return importlib.util.find_spec(head) is not None


def _resolve(path: str) -> object:
    """``normxlogit.a.b.c`` as an object: attributes, importing submodules where an attribute is missing."""
    parts = path.split(".")
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], start=1):
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        obj = importlib.import_module(".".join(parts[: i + 1]))  # ModuleNotFoundError when it does not exist
    return obj


def _markdown_and_aliases(page: Path) -> tuple[list[str], dict[str, str]]:
    """(markdown texts, {alias: normxlogit dotted path}) of a notebook or markdown page."""
    aliases = {"nx": "normxlogit"}
    if page.suffix != ".ipynb":
        return [page.read_text()], aliases
    cells = json.loads(page.read_text())["cells"]
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        source = "\n".join(line for line in "".join(cell["source"]).splitlines() if not line.lstrip().startswith(("%", "!")))
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                aliases.setdefault(node.id, "")  # a variable of the chapter (`result.aopc`): not a library name
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("normxlogit"):
                        aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("normxlogit"):
                for a in node.names:
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    return [("".join(c["source"])) for c in cells if c["cell_type"] == "markdown"], aliases


def _mentions(texts: list[str]) -> list[str]:
    names = []
    for text in texts:
        for code in re.findall(r"`([^`\n]+)`", text):
            names += DOTTED.findall(code)
    return names


def _target(name: str, aliases: dict[str, str]) -> str | None:
    """The normxlogit path a mention means, or None when it is not a normxlogit name."""
    head, _, rest = name.partition(".")
    if name.rsplit(".", 1)[1] in FILE_SUFFIXES:
        return None
    if head == "normxlogit":
        return name
    if head in aliases:
        return f"{aliases[head]}.{rest}" if aliases[head] else None
    if head in nx.__all__ if hasattr(nx, "__all__") else hasattr(nx, head) and not head.startswith("_"):
        return f"normxlogit.{name}"
    if head in MODULES and not _third_party(head):
        return f"{MODULES[head]}.{rest}"
    if len(head) == 2 and head.islower():
        return f"<undefined alias {head!r}>.{rest}"
    return None


def test_the_scan_finds_names_and_flags_a_missing_one():
    texts = ["See `nx.explain`, `na.missing_fn(x)` and `fa.paired_difference` and `model.lm_head` and `data/x.json`."]
    names = _mentions(texts)
    assert names == ["nx.explain", "na.missing_fn", "fa.paired_difference", "model.lm_head"]
    aliases = {"nx": "normxlogit", "na": "normxlogit.studies.norms"}
    targets = [_target(n, aliases) for n in names]
    assert targets[0] == "normxlogit.explain" and targets[3] is None
    _resolve(targets[0])
    with pytest.raises((AttributeError, ImportError)):
        _resolve(targets[1])
    assert targets[2].startswith("<undefined alias 'fa'>")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_library_name_in_the_prose_exists(page):
    texts, aliases = _markdown_and_aliases(page)
    missing = []
    for name in sorted(set(_mentions(texts))):
        target = _target(name, aliases)
        if target is None:
            continue
        if target.startswith("<undefined"):
            missing.append(f"`{name}`: {target.split('>')[0][1:]} in this page's code")
            continue
        try:
            _resolve(target)
        except (AttributeError, ImportError) as error:
            missing.append(f"`{name}` (read as {target}): {error}")
    assert not missing, f"{page.name} names what does not exist:\n" + "\n".join(missing)
