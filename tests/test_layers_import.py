"""The package's layering, checked from the source: each layer imports only the layers below it, no import
circles, no other module's private names, no module over about 450 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "normxlogit"
#: layer of each top-level part of the package; a module may import from its own layer or lower ones.
LAYERS = {"settings": 0, "models": 0, "local_models": 0, "core": 1, "methods": 2, "evaluation": 3, "data": 4, "training": 5,
          "studies": 6, "corpus": 7, "generation": 7, "student": 7, "teaching": 7, "__init__": 8, "cli": 8,
          "integrations": 8}
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")}


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every package-internal import of ``name``."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "normxlogit":
                # "from package import module" imports that module; other names come from the target itself
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    if sub in MODULES or f"{sub}.__init__" in MODULES:
                        out.append((sub, []))
                    else:
                        out.append((target, [a.name]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.split(".")[0] == "normxlogit"]
    return out


def _layer(module: str) -> int:
    parts = module.removesuffix(".__init__").split(".")
    return LAYERS["__init__"] if len(parts) == 1 else LAYERS[parts[1]]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_follow_the_layers(name):
    for target, names in _imports(name, MODULES[name]):
        assert _layer(target) <= _layer(name), f"{name} (layer {_layer(name)}) imports {target} (layer {_layer(target)})"
        private = [n for n in names if n.startswith("_") and n != "__version__"]
        assert not private, f"{name} imports private names {private} from {target}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it by idea"


def test_no_import_circles():
    graph = {}
    for name, path in MODULES.items():
        targets = set()
        for target, _ in _imports(name, path):
            targets.add(target)
        graph[name] = {t for t in targets if t in MODULES and t != name}
    # A package's __init__ importing its own submodules is the facade, not a circle: leave package nodes out.
    packages = {n for n, p in MODULES.items() if p.name == "__init__.py"}
    graph = {n: {t for t in ts if t not in packages} for n, ts in graph.items() if n not in packages}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])
