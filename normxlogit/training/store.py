"""The model store: fine-tuned models trained on first use, cached on disk, loaded by name (``nx.pretrained``).

``pretrained(name)`` returns the model of recipe ``name`` (``"sst2"``, ``"stsb"``, ``"blimp"``, or any registered
recipe). The first call trains it and saves model, tokenizer and ``normxlogit.json`` metadata under
``cache_dir()/<name>-<recipe hash>``, atomically (a temporary folder renamed into place) and under a file lock (a
second process waits for the first's model instead of training its own); later calls load that copy.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, set_seed

from .. import settings
from ..models import load_model
from .loop import available_cores, num_threads
from .recipes import Recipe, get_recipe, recipe_dict, recipe_hash
from .sequence import evaluate_sequence_model, train_sequence_model

METADATA_FILE = "normxlogit.json"


def cached_path(name: str) -> Path:
    """Where the model of recipe ``name`` is (or will be) cached: ``cache_dir()/<name>-<recipe hash>``."""
    return settings.cache_dir() / f"{name}-{recipe_hash(get_recipe(name))}"


def is_cached(name: str) -> bool:
    """Whether the model of recipe ``name`` is already trained and cached (``pretrained(name)`` will not train)."""
    return _is_complete(cached_path(name))


def _is_complete(path: Path) -> bool:
    # The metadata file is written last, and the folder only appears by an atomic rename, so this suffices.
    return (path / METADATA_FILE).is_file()


def pretrained(
    name: str, *, device: str | torch.device | None = None, force: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The fine-tuned model ``name`` (``"sst2"``, ``"stsb"``, or any registered recipe) and its tokenizer, in eval mode.

    Trains it on first use (or always with ``force=True``) and caches it; ``device`` is where the returned model lives
    (default CPU); training uses it too, or CUDA when available and ``device`` is None.
    """
    recipe = get_recipe(name)
    path = cached_path(name)
    if force or not _is_complete(path):
        # The lock makes a second process wait for the first's model instead of training its own.
        with settings.file_lock(path.parent / f".{path.name}.lock"):
            if force or not _is_complete(path):
                train_device = torch.device(device) if device is not None else _default_device()
                _train_and_save(name, recipe, path, train_device)
    return load_model(path, recipe.task, recipe.num_labels, device=device)


def pretrained_info(name: str) -> dict[str, Any]:
    """The metadata of the cached model ``name``: recipe, seed, validation metric, train time, versions."""
    path = cached_path(name)
    if not _is_complete(path):
        raise FileNotFoundError(
            f"No cached model for {name!r} at {path}; create it with normxlogit.pretrained({name!r}) "
            f"or `normxlogit finetune {name}`."
        )
    return json.loads((path / METADATA_FILE).read_text())


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import datasets
    import transformers

    try:
        own = version("normxlogit")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        own = "unknown"
    return {
        "normxlogit": own,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "numpy": np.__version__,
    }


def _jsonable(value: Any) -> Any:
    """numpy/torch scalars as numbers, anything else unknown as text (custom train functions return stats)."""
    return value.item() if hasattr(value, "item") else str(value)


def _train_and_save(name: str, recipe: Recipe, final: Path, device: torch.device) -> None:
    """Train, evaluate and write the model to ``final`` atomically (a temp folder renamed into place)."""
    print(f"normxlogit: fine-tuning {name!r}; the model will be cached in {final}", file=sys.stderr)
    set_seed(recipe.seed)  # seeds python, numpy and torch: the new head's init and dropout
    model, tokenizer = load_model(recipe.base_model, recipe.task, recipe.num_labels)
    if recipe.label_names is not None:
        model.config.id2label = dict(enumerate(recipe.label_names))
        model.config.label2id = {label: i for i, label in enumerate(recipe.label_names)}
    model.to(device)
    train_fn = recipe.train_fn or train_sequence_model
    eval_fn = recipe.eval_fn or evaluate_sequence_model
    threads = available_cores()
    with num_threads(threads):
        start, cpu_start = time.perf_counter(), time.process_time()
        train_stats = train_fn(model, tokenizer, recipe, device=device)
        train_time, train_cpu = time.perf_counter() - start, time.process_time() - cpu_start
        start = time.perf_counter()
        metrics = eval_fn(model, tokenizer, recipe, device=device)
        eval_time = time.perf_counter() - start
    if recipe.metric not in metrics:
        raise KeyError(
            f"The evaluation of {name!r} returned {sorted(metrics)}, not the recipe's metric {recipe.metric!r}."
        )
    print(f"normxlogit: {name!r}: {recipe.metric} = {metrics[recipe.metric]:.4f} on {recipe.eval_split} "
          f"({metrics.get('examples', '?')} examples); trained in {train_time:.0f} s", file=sys.stderr)
    metadata = {
        "name": name,
        "recipe_hash": recipe_hash(recipe),
        "recipe": recipe_dict(recipe),
        "seed": recipe.seed,
        "metric": recipe.metric,
        "metric_value": float(metrics[recipe.metric]),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "eval_examples": int(metrics.get("examples", 0)),
        "train": train_stats,
        "train_time_s": round(train_time, 1),
        "train_cpu_s": round(train_cpu, 1),  # CPU seconds summed over threads
        "eval_time_s": round(eval_time, 1),
        "device": str(device),
        "num_threads": threads,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": _versions(),
    }
    parent = final.parent
    for stale in parent.glob(f".tmp-{final.name}-*"):  # left by an interrupted run; we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    tmp = parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        model.cpu().save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=_jsonable) + "\n")
        old = None
        if final.exists():  # force=True: move the old copy aside, so the swap itself is a rename
            old = parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
            final.rename(old)
        tmp.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
