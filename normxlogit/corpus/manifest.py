"""The manifest of a corpus run (``manifest.json``): what was run, on what, and how far it got.

The main process opens the output directory (refusing a run with other settings, or a directory that is not one of
ours), lists the shards still to compute (removing what a killed run left), and, when every process is done, checks
that the shards hold every example exactly once before it writes the final manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..evaluation.faithfulness import model_fingerprint
from .errors import CorpusError
from .shards import shard_path, shard_problem, shard_rows, write_json

FORMAT = "normxlogit-corpus/1"
MANIFEST = "manifest.json"
#: How seeded methods (``random``) draw: per example, from (seed, the example's index in the whole input), as
#: ``nx.explain`` does on the whole list. Runs started before this (which drew per shard) are not resumed.
SEEDING = "example"


def package_version() -> str:
    """The installed normxlogit version (read from the distribution: this layer sits below the package facade)."""
    try:
        return metadata.version("normxlogit")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def read_manifest(output_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of an :func:`explain_dataset` output directory."""
    path = Path(output_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{output_dir} holds no {MANIFEST}: it is not an explain_dataset output directory.")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CorpusError(f"{path} is not valid JSON ({err}); delete the directory to start over.") from err
    if manifest.get("format") != FORMAT:
        raise CorpusError(f"{path} has format {manifest.get('format')!r}, not {FORMAT!r}.")
    return manifest


def _jsonable(value: Any) -> Any:
    """Options as JSON: plain values as they are, anything else (a head callable) by its name."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, torch.dtype):
        return str(value)
    name = getattr(value, "__qualname__", None) or type(value).__qualname__
    return f"<{getattr(value, '__module__', '')}.{name}>"


def _model_identity(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """What a rerun must share with the run it resumes: the weights and tokenizer by content, not by path (a path
    may differ between machines or working directories)."""
    try:
        fingerprint = model_fingerprint(model)
    except (RuntimeError, NotImplementedError):  # weights offloaded to disk (meta tensors): the config must do
        fingerprint = hashlib.sha256(model.config.to_json_string().encode()).hexdigest()[:16]
    vocab = json.dumps([type(tokenizer).__name__, sorted(tokenizer.get_vocab().items()),
                        tokenizer.all_special_tokens, tokenizer.model_max_length], default=str)
    return {
        "class": type(model).__name__,
        "fingerprint": fingerprint,
        "dtype": str(next(model.parameters()).dtype),
        "tokenizer_fingerprint": hashlib.sha256(vocab.encode()).hexdigest()[:16],
    }


def run_config(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, method: str,
               options: dict[str, Any], seed: int, data: dict[str, Any], shard_size: int) -> dict[str, Any]:
    """The settings a rerun must share with the run it resumes (model and tokenizer by content)."""
    return {
        "model": _model_identity(model, tokenizer),
        "method": method,
        "options": _jsonable(options),
        "seed": seed,
        "seeding": SEEDING,
        "data": data,
        "shard_size": shard_size,
    }


def model_names(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> dict[str, str]:
    """The model's and tokenizer's names or paths, recorded in the manifest (not compared on resuming)."""
    return {"model": getattr(model.config, "_name_or_path", "") or type(model).__name__,
            "tokenizer": getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__}


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} there, {b!r} now")
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def open_output(out: Path, config: dict[str, Any], names: dict[str, str], n: int, num_shards: int) -> dict[str, Any]:
    """Check ``out`` against ``config`` (refusing other settings), or start it; return the manifest."""
    version = package_version()
    if (out / MANIFEST).is_file():
        manifest = read_manifest(out)
        changed = _differences(manifest["config"], config)
        if changed:
            raise CorpusError(
                f"{out} holds a run with other settings ({'; '.join(changed)}). Rerun with the same settings to "
                "resume it, or write to a new output directory (or delete this one to start over).")
        if manifest.get("package_version") != version:
            warnings.warn(f"{out} was started with normxlogit {manifest.get('package_version')}; continuing with "
                          f"{version}.", stacklevel=2)
        return manifest
    for tmp in out.glob(f".{MANIFEST}.*.tmp") if out.is_dir() else []:
        tmp.unlink()  # a run killed while writing its first manifest
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CorpusError(f"{out} exists and is not an empty directory, and holds no {MANIFEST}. Choose a new "
                          "output directory.")
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"format": FORMAT, "status": "running", "package_version": version, **names, "config": config,
                "examples": n, "shards": num_shards, "rows": 0, "created": _now(), "runs": []}
    write_json(out / MANIFEST, manifest)
    return manifest


def pending_shards(out: Path, n: int, shard_size: int, num_shards: int) -> list[int]:
    """Shards still to compute; removes temporary files of killed runs and shards that are not whole."""
    (out / "data").mkdir(exist_ok=True)
    for tmp in [*(out / "data").glob(".*.tmp"), *out.glob(f".{MANIFEST}.*.tmp")]:
        tmp.unlink()  # left by a killed run
    pending = []
    for shard in range(num_shards):
        path = shard_path(out, shard, num_shards)
        if path.is_file():
            problem = shard_problem(path, shard_rows(shard, n, shard_size))
            if problem is None:
                continue
            warnings.warn(f"{path.name} is {problem}; computing it again.", stacklevel=2)
            path.unlink()
        pending.append(shard)
    return pending


def finish_output(out: Path, manifest: dict[str, Any], n: int, shard_size: int, num_shards: int,
                  written: list, batch_size: int) -> dict[str, Any]:
    """Check that the shards hold every example exactly once, then write the final manifest."""
    version = package_version()
    rows = []
    for shard in range(num_shards):
        path = shard_path(out, shard, num_shards)
        problem = shard_problem(path, shard_rows(shard, n, shard_size)) if path.is_file() else "missing"
        if problem is not None:
            raise RuntimeError(f"{path.name} is {problem} after every process finished; rerun to compute it.")
        rows.append(len(shard_rows(shard, n, shard_size)))
    manifest = dict(manifest)
    manifest.update(status="complete", rows=int(sum(rows)), finished=_now(), package_version=version)
    manifest["runs"] = list(manifest.get("runs", [])) + [{
        "finished": _now(),
        "processes": len(written),
        "batch_size": batch_size,
        "shards_written": int(sum(w[1] for w in written)),
        "examples_written": int(sum(w[2] for w in written)),
        "seconds": round(max(w[3] for w in written), 3),
        "package_version": version,
    }]
    write_json(out / MANIFEST, manifest)
    return manifest
