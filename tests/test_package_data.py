"""What the chapters read ships with the package, and loads from an installed wheel outside the checkout.

A reader on Colab or Binder installs the package (from a wheel or from git) and runs a chapter without the
repository around it: every file a chapter reads must be package data, found with ``nx.resource``. The wheel test
builds the wheel (``pip wheel . --no-deps``), installs it into a temporary folder outside the checkout and, in a
fresh interpreter started there, loads every resource the chapters name (a few seconds; whole chapters are too slow
to run here).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import normxlogit as nx

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "book").glob("*.ipynb"))


def _code(notebook: Path) -> str:
    cells = json.loads(notebook.read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def _named_resources() -> set[str]:
    return {name for nb in CHAPTERS for name in re.findall(r"""resource\(\s*["']([^"']+)["']""", _code(nb))}


def test_chapters_read_files_through_the_package_not_the_checkout():
    # project_root() points into site-packages once installed; a chapter that reads the repository's data/ or
    # tests/ folders works only from a clone.
    readers = {nb.name for nb in CHAPTERS if re.search(r"project_root\(\)\s*/\s*[\"'](data|tests)[\"']", _code(nb))}
    assert not readers, sorted(readers)


def test_every_named_resource_exists_and_parses():
    names = _named_resources()
    assert {"efficiency_cpu.json", "efficiency_decompx_cpu.json", "blimp_gold.jsonl"} <= names, names
    for name in names:
        text = nx.resource(name).read_text()
        rows = [json.loads(line) for line in text.splitlines() if line.strip()] if name.endswith(".jsonl") else [json.loads(text)]
        assert rows and all(rows)


def test_an_unknown_resource_says_what_there_is():
    with pytest.raises(FileNotFoundError, match="ships no resource 'nope.json'.*blimp_gold.jsonl"):
        nx.resource("nope.json")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The package installed from a freshly built wheel into a folder outside the checkout."""
    wheels = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(wheels)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (wheel,) = wheels.glob("normxlogit-*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("normxlogit/resources/")}
    assert {f"normxlogit/resources/{n}" for n in _named_resources()} <= shipped, shipped
    target = tmp_path_factory.mktemp("site")
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                              str(target), str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    return target


def test_resources_load_from_an_installed_wheel(installed, tmp_path):
    names = sorted(_named_resources())
    script = (
        "import json, sys, normxlogit as nx\n"
        "print(nx.__file__)\n"
        f"for name in {names!r}:\n"
        "    text = nx.resource(name).read_text()\n"
        "    print(name, len(text.splitlines()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(installed)
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert Path(lines[0]).resolve().is_relative_to(installed.resolve()), lines[0]  # not the checkout's package
    assert not Path(lines[0]).resolve().is_relative_to(ROOT)
    assert [line.split()[0] for line in lines[1:]] == names and all(int(line.split()[1]) > 0 for line in lines[1:])
