"""The first ``pytest`` trains the models the chapters need in the open, before nbval runs them (root conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Stands in for the slow fine-tuning: every model is "not cached", and "training" one prints a line.
FAKE = '''
import normxlogit.training as training
trained = []
training.is_cached = lambda name: name in trained
def pretrained(name, **kwargs):
    print(f"FAKE-TRAINING {name}", flush=True)
    trained.append(name)
training.pretrained = pretrained
'''


def test_missing_models_are_trained_visibly_before_the_notebooks(tmp_path):
    notebook = {"cells": [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                           "source": ['model = "sst2"  # a chapter would call nx.pretrained("sst2"), nx.pretrained("blimp")']}],
                "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
                "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "chapter.ipynb").write_text(json.dumps(notebook))
    (tmp_path / "fake_training.py").write_text(FAKE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "fake_training", "-p", "conftest", "--nbval-lax",
                          "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path / "chapter.ipynb")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = run.stdout
    assert run.returncode == 0, out[-3000:] + run.stderr[-3000:]
    assert "fine-tuning 2 model(s) the chapters need, once: sst2, blimp" in out, out
    assert "usually 4-5 min on 2 CPU cores" in out and "usually about 9 min" in out, out
    # each announced, trained (its output not captured), then timed; all before the notebook's test runs
    order = [out.index(s) for s in ("fine-tuning 'sst2'", "FAKE-TRAINING sst2", "'sst2' ready after",
                                    "fine-tuning 'blimp'", "FAKE-TRAINING blimp", "models ready")]
    assert order == sorted(order), out
    assert "1 passed" in out
