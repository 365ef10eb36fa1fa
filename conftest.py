"""Root pytest configuration: tests and notebooks run in the quick profile unless NORMXLOGIT_PROFILE says otherwise.

The notebook kernels that nbval starts inherit this environment.

Before nbval runs the chapters, the fine-tuned models they load (``nx.pretrained("sst2")`` ...) that are not cached
yet are trained here, in the open: the terminal says which model, how long it usually takes, shows the training
progress bars and the time it took. Otherwise a first ``pytest`` sits silent for half an hour inside chapter 3's
first cell while nbval waits on the kernel.
"""

import json
import os
import re
import time
from pathlib import Path

os.environ.setdefault("NORMXLOGIT_PROFILE", "quick")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Measured on a shared 2-core CPU (book/teachers.md, "How long each chapter takes").
TYPICAL_TRAINING = {"sst2": "4-5 min", "stsb": "about 5 min", "blimp": "about 9 min", "sst2-smollm2": "about 10 min",
                    "stsb-smollm2": "about 12 min"}


def models_the_notebooks_load(paths) -> list[str]:
    """The recipe names the notebooks at ``paths`` load with ``pretrained("<name>")``, in first-use order."""
    names = []
    for path in paths:
        cells = json.loads(Path(path).read_text(encoding="utf-8"))["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        names += [n for n in re.findall(r"""pretrained\(\s*["']([\w-]+)["']""", code) if n not in names]
    return names


def pytest_collection_finish(session):
    if session.config.option.collectonly:
        return
    notebooks = sorted({str(item.path) for item in session.items if item.path.suffix == ".ipynb"})
    if not notebooks:
        return
    from normxlogit.training import cached_path, get_recipe, is_cached, list_recipes, pretrained

    missing = [n for n in models_the_notebooks_load(notebooks) if n in list_recipes() and not is_cached(n)]
    if not missing:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    capture = session.config.pluginmanager.get_plugin("capturemanager")
    reporter.write_sep("=", f"fine-tuning {len(missing)} model(s) the chapters need, once: {', '.join(missing)}")
    for name in missing:
        typical = TYPICAL_TRAINING.get(name, "a few minutes")
        reporter.write_line(f"normxlogit: fine-tuning {name!r} ({get_recipe(name).task}; usually {typical} on 2 CPU "
                            f"cores), cached in {cached_path(name)} ...", bold=True)
        start = time.perf_counter()
        with capture.global_and_fixture_disabled():  # let the training progress bars through
            pretrained(name)
        reporter.write_line(f"normxlogit: {name!r} ready after {time.perf_counter() - start:.0f} s")
    reporter.write_sep("=", "models ready; running the tests")
