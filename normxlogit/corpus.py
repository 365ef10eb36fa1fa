"""Corpus-scale attribution: a dataset in, Parquet shards out; resumable, and data parallel under accelerate/torchrun.

The unit of work is the *shard*: ``shard_size`` consecutive examples of the input, numbered from 0. The shard layout
depends only on the number of examples and ``shard_size``, never on the number of processes, so a shard's scores
are the same bit for bit whichever process computes it (one process, N processes, or a resumed run on a different
N). Each process takes every N-th pending shard (by its rank in accelerate's :class:`~accelerate.PartialState`, which
wraps ``torch.distributed``), writes each one to a temporary file and renames it into place, so a shard file either
holds all of its rows or does not exist. The main process checks the output directory before the work starts
(manifest, complete shards, truncated ones) and writes the final ``manifest.json`` when every process is done.

Output directory::

    manifest.json                          model, method, options, data fingerprint, package version, row counts
    data/train-00000-of-00042.parquet      one row per example: index, text, tokens, input_ids, scores, target,
    data/train-00001-of-00042.parquet      prediction, method, layer, ...
    ...

The shard names follow the Hugging Face Hub's layout, so ``datasets.load_dataset("parquet", data_dir=...)`` finds
the shards and nothing else (or use :func:`load_corpus`), and
:func:`to_attributions` / :func:`load_dataset_attributions` turn rows into :class:`~normxlogit.Attribution` objects.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .core.attribution import Attribution
from .core.explain import explain
from .evaluation.faithfulness import evaluate
from .evaluation.results import FaithfulnessResult

if TYPE_CHECKING:  # pragma: no cover
    import datasets
    from accelerate import PartialState

DataInput = Union["datasets.Dataset", "pd.DataFrame", str, os.PathLike]

FORMAT = "normxlogit-corpus/1"
MANIFEST = "manifest.json"
SHARD_SIZE = 256  # rows per shard: small enough to balance many processes and lose little on a kill
# Processes wait at barriers for the slowest one; a shard of a large model can take long, so the default 30 minutes
# of torch.distributed would kill healthy runs.
SYNC_TIMEOUT = timedelta(hours=12)
_SCAN_ROWS = 65_536  # rows per chunk when the main process checks and fingerprints the input
_READERS: dict[str, tuple[str, dict[str, Any]]] = {
    ".csv": ("csv", {}),
    # TSV files (GLUE among them) do not quote fields: a lone '"' in a sentence is text, not a quote.
    ".tsv": ("csv", {"delimiter": "\t", "quoting": csv.QUOTE_NONE}),
    ".jsonl": ("json", {}),
    ".json": ("json", {}),
    ".parquet": ("parquet", {}),
}
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4")


class CorpusError(ValueError):
    """Bad input or an output directory that cannot be used; the message says what to do."""


# --- processes -----------------------------------------------------------------------------------------------------
def _has_accelerator() -> bool:
    accelerator = getattr(torch, "accelerator", None)
    return torch.cuda.is_available() or bool(accelerator is not None and accelerator.is_available())


def process_state() -> "PartialState":
    """accelerate's process state: rank, world size and device of this process (one process when not launched).

    Under ``torchrun`` or ``accelerate launch`` this joins the process group (gloo on CPUs, NCCL on GPUs); a state
    the caller already created (an ``Accelerator``, say) is reused as it is.
    """
    from accelerate import PartialState

    # accelerate picks gloo only when asked for CPUs; without an accelerator there is nothing else to use.
    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not _has_accelerator()
    return PartialState(cpu=cpu, timeout=SYNC_TIMEOUT)


def _place(model: PreTrainedModel, state: "PartialState") -> None:
    """Put the model on this process's device, as accelerate would, unless it was placed with a device_map."""
    if getattr(model, "hf_device_map", None):
        return  # dispatched over several devices by device_map="auto": leave it where it is
    if state.device.type != "cpu" and next(model.parameters()).device != state.device:
        model.to(state.device)


def _broadcast(value: Any, state: "PartialState") -> Any:
    """The main process's ``value`` on every process."""
    if state.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value if state.is_main_process else None]
    broadcast_object_list(box)
    return box[0]


def _on_main(fn, state: "PartialState") -> Any:
    """Run ``fn`` on the main process and hand its result, or its error, to every process.

    Without this, an error on the main process (a bad column, a refused directory) would leave the others waiting.
    """
    outcome: tuple[str, Any] = ("ok", None)
    failure: BaseException | None = None
    if state.is_main_process:
        try:
            outcome = ("ok", fn())
        except Exception as err:
            failure = err
            outcome = ("error", (type(err), str(err)))
    outcome = _broadcast(outcome, state)
    if failure is not None:
        raise failure
    if outcome[0] == "error":
        kind, message = outcome[1]
        try:
            error = kind(message)
        except Exception:  # an exception type that takes other arguments
            error = RuntimeError(message)
        raise error
    return outcome[1]


def _shard_seed(seed: int, shard: int) -> int:
    """The seed shard ``shard`` runs with: seeded methods (``random``) then draw per (seed, shard, row in shard), which
    the number of processes does not change."""
    return int.from_bytes(hashlib.sha256(f"{int(seed)}:{int(shard)}".encode()).digest()[:7], "big")


# --- input ---------------------------------------------------------------------------------------------------------
def load_data(data: DataInput, state: "PartialState | None" = None) -> "datasets.Dataset":
    """A ``datasets.Dataset`` from a Dataset, a pandas DataFrame, a CSV/TSV/JSONL/JSON/Parquet file (optionally
    compressed) or a directory written by ``Dataset.save_to_disk``. Files are read through ``datasets``, memory-mapped,
    so a corpus larger than memory streams from disk."""
    import datasets

    if isinstance(data, datasets.Dataset):
        return data.with_format(None)
    if isinstance(data, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise CorpusError(f"Got a DatasetDict with splits {sorted(data)}: pass one split, e.g. data['validation'].")
    if isinstance(data, datasets.IterableDataset):
        raise CorpusError("Got an IterableDataset: resuming needs random access by row. Pass a map-style Dataset "
                          "(load_dataset(..., streaming=False)) or a file.")
    if isinstance(data, pd.DataFrame):
        return datasets.Dataset.from_pandas(data, preserve_index=False)
    if not isinstance(data, (str, os.PathLike)):
        raise TypeError(f"data must be a datasets.Dataset, a pandas DataFrame or a file path, not "
                        f"{type(data).__name__}.")
    path = Path(data).expanduser()
    if path.is_dir():
        if not (path / "dataset_info.json").is_file() and not (path / "state.json").is_file():
            raise CorpusError(f"{path} is a directory but not one written by Dataset.save_to_disk; pass a file "
                              f"({', '.join(_READERS)}) or such a directory.")
        return datasets.load_from_disk(str(path))
    if not path.is_file():
        raise FileNotFoundError(f"No such data file: {path}")
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes = suffixes[:-1]
    suffix = suffixes[-1] if suffixes else ""
    if suffix not in _READERS:
        raise CorpusError(f"Cannot read {path.name}: unknown file type {suffix or '(none)'!r}. Use one of "
                          f"{', '.join(_READERS)} (optionally compressed: {', '.join(_COMPRESSED)}), or pass a "
                          "datasets.Dataset.")
    if path.stat().st_size == 0:
        raise CorpusError(f"{path} is empty: there is nothing to explain.")
    builder, kwargs = _READERS[suffix]

    def read() -> "datasets.Dataset":
        try:
            return datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
        except Exception as err:  # datasets wraps parser errors in several types; name the file and the cause
            raise CorpusError(f"Could not read {path} as {suffix[1:].upper()}: {err}") from err

    if state is None or state.num_processes == 1:
        return read()
    # The main process builds datasets' Arrow cache once; the others then open it instead of racing to write it.
    with state.main_process_first():
        return read()


def _check_columns(ds: "datasets.Dataset", columns: dict[str, str | None]) -> None:
    """Every named column exists (``columns`` maps a role, e.g. 'text_column', to a column name or None)."""
    if len(ds) == 0:
        raise CorpusError("The dataset has no rows: there is nothing to explain.")
    for role, name in columns.items():
        if name is not None and name not in ds.column_names:
            raise CorpusError(f"{role}={name!r} is not a column of the dataset; its columns are "
                              f"{', '.join(map(repr, ds.column_names))}.")


def _scan(ds: "datasets.Dataset", text_columns: Sequence[str], other_columns: Sequence[str]) -> str:
    """Check every text is a non-empty string and no other used value is missing; return a fingerprint of them all.

    Runs on Arrow chunks, so it reads a large corpus once at disk speed. The fingerprint lets a rerun tell whether it
    sees the same data as the run it resumes.
    """
    digest = hashlib.sha256()
    arrow = ds.with_format("arrow")
    for start in range(0, len(ds), _SCAN_ROWS):
        table = arrow[start : start + _SCAN_ROWS]
        for name in list(text_columns) + list(other_columns):
            column = table.column(name)
            if column.null_count:
                row = start + int(pc.index(pc.is_null(column), True).as_py())
                raise CorpusError(f"Row {row} has no value in column {name!r}. Drop or fill the missing rows first.")
            if name in text_columns:
                if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
                    raise CorpusError(f"Column {name!r} holds {column.type} values, not text.")
                blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(column)), 0)
                if pc.any(blank).as_py():
                    row = start + int(pc.index(blank, True).as_py())
                    raise CorpusError(f"Row {row} of column {name!r} is empty or whitespace only; there is nothing "
                                      "to explain. Drop such rows first.")
            digest.update(name.encode() + b"\x00")
            digest.update(json.dumps(column.to_pylist(), ensure_ascii=False).encode())
    return digest.hexdigest()[:16]


def _rows(ds: "datasets.Dataset", start: int, stop: int, text_column: str, pair_column: str | None) -> list:
    """Texts (or text pairs) of rows ``start:stop``, as :func:`normxlogit.explain` takes them."""
    batch = ds[start:stop]
    texts = batch[text_column]
    return list(zip(texts, batch[pair_column])) if pair_column else list(texts)


# --- output --------------------------------------------------------------------------------------------------------
MAX_SHARDS = 99_999  # the Hub's shard names have five digits


def shard_path(out: Path, shard: int, num_shards: int) -> Path:
    """Where shard ``shard`` of ``num_shards`` lives under the output directory ``out``."""
    return out / "data" / f"train-{shard:05d}-of-{num_shards:05d}.parquet"


def _shard_rows(shard: int, n: int, shard_size: int) -> range:
    return range(shard * shard_size, min(n, (shard + 1) * shard_size))


def _schema(task: str) -> pa.Schema:
    return pa.schema([
        ("index", pa.int64()),  # the example's row in the input
        ("text", pa.string()),
        ("text_pair", pa.string()),
        ("tokens", pa.list_(pa.string())),
        ("input_ids", pa.list_(pa.int32())),
        ("special_tokens_mask", pa.list_(pa.int8())),
        # Methods compute in float32, so float32 stores them without loss.
        ("scores", pa.list_(pa.float32())),
        ("target", pa.int64()),
        ("prediction", pa.float64() if task == "regression" else pa.int64()),
        ("method", pa.string()),
        ("layer", pa.int32()),
        ("position", pa.int32()),
        ("meta", pa.string()),  # JSON: task, labels, target logit, norm source
    ])


def _table(start: int, attributions: Sequence[Attribution]) -> pa.Table:
    task = attributions[0].meta.get("task", "classification")
    pairs = [a.text if isinstance(a.text, tuple) else (a.text, None) for a in attributions]
    columns = {
        "index": range(start, start + len(attributions)),
        "text": [p[0] for p in pairs],
        "text_pair": [p[1] for p in pairs],
        "tokens": [a.tokens for a in attributions],
        "input_ids": [a.input_ids for a in attributions],
        "special_tokens_mask": [[int(m) for m in a.special_tokens_mask] for a in attributions],
        "scores": [np.asarray(a.scores, dtype=np.float32) for a in attributions],
        "target": [a.target for a in attributions],
        "prediction": [a.prediction for a in attributions],
        "method": [a.method for a in attributions],
        "layer": [a.layer for a in attributions],
        "position": [a.position for a in attributions],
        "meta": [json.dumps(a.meta, ensure_ascii=False) for a in attributions],
    }
    schema = _schema(task)
    return pa.table({name: pa.array(list(values), type=schema.field(name).type) for name, values in columns.items()},
                    schema=schema)


def _write_atomic(path: Path, write) -> None:
    """Write through a temporary file in the same directory, flushed to disk, then renamed over ``path``.

    A rename within one file system is atomic, so a reader (or a resumed run) sees either no file or a whole one.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_shard(path: Path, table: pa.Table) -> None:
    _write_atomic(path, lambda tmp: pq.write_table(table, tmp))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    _write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n"))


def _shard_ok(path: Path, rows: range) -> str | None:
    """Why the shard file at ``path`` cannot be kept (None when it holds exactly ``rows``)."""
    try:
        indices = pq.read_table(path, columns=["index"]).column("index").to_numpy()
    except Exception as err:  # a truncated or foreign file: pyarrow says the footer or magic bytes are wrong
        return f"unreadable ({err})"
    if len(indices) != len(rows) or not np.array_equal(indices, np.arange(rows.start, rows.stop)):
        return f"holds {len(indices)} rows, expected examples {rows.start}..{rows.stop - 1}"
    return None


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
    from .evaluation.faithfulness import model_fingerprint

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


def _names(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> dict[str, str]:
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


# --- explain a dataset ---------------------------------------------------------------------------------------------
def explain_dataset(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: DataInput,
    *,
    output_dir: str | os.PathLike,
    text_column: str = "text",
    pair_column: str | None = None,
    target_column: str | None = None,
    method: str = "normxlogit",
    batch_size: int = 32,
    shard_size: int = SHARD_SIZE,
    seed: int = 0,
    progress: bool = True,
    **explain_options: Any,
) -> dict[str, Any]:
    """Attribute every example of ``data`` and write the results as Parquet shards plus ``manifest.json``.

    ``data``: a ``datasets.Dataset``, a DataFrame, a CSV/TSV/JSONL/JSON/Parquet file or a ``save_to_disk``
    directory. ``text_column`` (and ``pair_column`` for sentence pairs) hold the texts; ``target_column`` optionally
    names the class (or token id) to explain per row (default: the prediction). ``explain_options`` go to
    :func:`normxlogit.explain` (``layer``, ``norm_source``, ``target``, ``max_length``, ``task``, method options).

    Resumable: rerun the same call after an interruption and only the missing shards are computed; a rerun with
    other options, model or data into the same directory raises :class:`CorpusError`. Data parallel: under
    ``torchrun`` or ``accelerate launch`` every process takes its share of the shards; the model is moved to the
    process's device unless it was loaded with a ``device_map``. Returns the manifest (on every process).
    """
    state = process_state()
    _place(model, state)
    if batch_size < 1 or shard_size < 1:
        raise CorpusError(f"batch_size and shard_size must be at least 1, got {batch_size} and {shard_size}.")
    if "target" in explain_options and target_column is not None:
        raise CorpusError("Pass either target= (one class for every row) or target_column=, not both.")
    ds = load_data(data, state)
    _check_columns(ds, {"text_column": text_column, "pair_column": pair_column, "target_column": target_column})
    out = Path(output_dir).expanduser()
    n = len(ds)
    num_shards = -(-n // shard_size)
    if num_shards > MAX_SHARDS:
        raise CorpusError(f"{n} examples in shards of {shard_size} make {num_shards} shards, more than {MAX_SHARDS}; "
                          f"pass shard_size={-(-n // MAX_SHARDS)} or more.")
    text_columns = [c for c in (text_column, pair_column) if c]

    if target_column and not pa.types.is_integer(ds.data.schema.field(target_column).type):
        raise CorpusError(f"target_column={target_column!r} holds {ds.data.schema.field(target_column).type} values; "
                          "it must hold class indices (or token ids) as integers.")

    def prepare() -> tuple[dict[str, Any], list[int]]:
        fingerprint = _scan(ds, text_columns, [target_column] if target_column else [])
        # One example through the whole path first: a bad method, layer or target fails here, before anything is
        # written, with explain's own message.
        first = _rows(ds, 0, 1, text_column, pair_column)
        first_target = {"target": [int(ds[0][target_column])]} if target_column else {}
        explain(model, tokenizer, first, method, batch_size=1, seed=seed, **first_target, **explain_options)
        config = {
            "model": _model_identity(model, tokenizer),
            "method": method,
            "options": _jsonable(explain_options),
            "seed": seed,
            "data": {"examples": n, "fingerprint": fingerprint, "text_column": text_column,
                     "pair_column": pair_column, "target_column": target_column},
            "shard_size": shard_size,
        }
        names = _names(model, tokenizer)
        return _open_output(out, config, names, n, num_shards), _pending(out, n, shard_size, num_shards)

    manifest, pending = _on_main(prepare, state)
    mine = pending[state.process_index :: state.num_processes]
    from accelerate.utils import tqdm as main_tqdm  # a bar on the main process only, not one per process

    total = sum(len(_shard_rows(k, n, shard_size)) for k in mine)
    share = f", process 0 of {state.num_processes}" if state.num_processes > 1 else ""  # the bar counts its share
    bar = main_tqdm(total=total, unit="ex", disable=not progress, desc=f"explain_dataset ({method}{share})")
    started = time.perf_counter()
    for shard in mine:
        rows = _shard_rows(shard, n, shard_size)
        texts = _rows(ds, rows.start, rows.stop, text_column, pair_column)
        targets = {"target": [int(t) for t in ds[rows.start : rows.stop][target_column]]} if target_column else {}
        attributions = explain(model, tokenizer, texts, method, batch_size=batch_size, seed=_shard_seed(seed, shard),
                               **targets, **explain_options)
        _write_shard(shard_path(out, shard, num_shards), _table(rows.start, attributions))
        bar.update(len(rows))
    bar.close()
    elapsed = time.perf_counter() - started

    state.wait_for_everyone()
    from accelerate.utils import gather_object

    written = gather_object([(state.process_index, len(mine), total, elapsed)])
    manifest = _on_main(lambda: _finish(out, manifest, n, shard_size, num_shards, written, batch_size), state)
    state.wait_for_everyone()
    return manifest


def _open_output(out: Path, config: dict[str, Any], names: dict[str, str], n: int, num_shards: int) -> dict[str, Any]:
    """Check ``out`` against ``config`` (refusing other settings), or start it; return the manifest."""
    from . import __version__

    if (out / MANIFEST).is_file():
        manifest = read_manifest(out)
        changed = _differences(manifest["config"], config)
        if changed:
            raise CorpusError(
                f"{out} holds a run with other settings ({'; '.join(changed)}). Rerun with the same settings to "
                "resume it, or write to a new output directory (or delete this one to start over).")
        if manifest.get("package_version") != __version__:
            warnings.warn(f"{out} was started with normxlogit {manifest.get('package_version')}; continuing with "
                          f"{__version__}.", stacklevel=2)
        return manifest
    for tmp in out.glob(f".{MANIFEST}.*.tmp") if out.is_dir() else []:
        tmp.unlink()  # a run killed while writing its first manifest
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CorpusError(f"{out} exists and is not an empty directory, and holds no {MANIFEST}. Choose a new "
                          "output directory.")
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"format": FORMAT, "status": "running", "package_version": __version__, **names, "config": config,
                "examples": n, "shards": num_shards, "rows": 0, "created": _now(), "runs": []}
    _write_json(out / MANIFEST, manifest)
    return manifest


def _pending(out: Path, n: int, shard_size: int, num_shards: int) -> list[int]:
    """Shards still to compute; removes temporary files of killed runs and shards that are not whole."""
    (out / "data").mkdir(exist_ok=True)
    for tmp in [*(out / "data").glob(".*.tmp"), *out.glob(f".{MANIFEST}.*.tmp")]:
        tmp.unlink()  # left by a killed run
    pending = []
    for shard in range(num_shards):
        path = shard_path(out, shard, num_shards)
        if path.is_file():
            problem = _shard_ok(path, _shard_rows(shard, n, shard_size))
            if problem is None:
                continue
            warnings.warn(f"{path.name} is {problem}; computing it again.", stacklevel=2)
            path.unlink()
        pending.append(shard)
    return pending


def _finish(out: Path, manifest: dict[str, Any], n: int, shard_size: int, num_shards: int,
            written: list, batch_size: int) -> dict[str, Any]:
    """Check that the shards hold every example exactly once, then write the final manifest."""
    from . import __version__

    rows = []
    for shard in range(num_shards):
        path = shard_path(out, shard, num_shards)
        problem = _shard_ok(path, _shard_rows(shard, n, shard_size)) if path.is_file() else "missing"
        if problem is not None:
            raise RuntimeError(f"{path.name} is {problem} after every process finished; rerun to compute it.")
        rows.append(len(_shard_rows(shard, n, shard_size)))
    manifest = dict(manifest)
    manifest.update(status="complete", rows=int(sum(rows)), finished=_now(), package_version=__version__)
    manifest["runs"] = list(manifest.get("runs", [])) + [{
        "finished": _now(),
        "processes": len(written),
        "batch_size": batch_size,
        "shards_written": int(sum(w[1] for w in written)),
        "examples_written": int(sum(w[2] for w in written)),
        "seconds": round(max(w[3] for w in written), 3),
        "package_version": __version__,
    }]
    _write_json(out / MANIFEST, manifest)
    return manifest


# --- reading the output back ---------------------------------------------------------------------------------------
def load_corpus(output_dir: str | os.PathLike, *, allow_incomplete: bool = False) -> "datasets.Dataset":
    """The rows of an :func:`explain_dataset` output as a ``datasets.Dataset``, in example order.

    Refuses a run that has not finished unless ``allow_incomplete`` (then it holds the shards written so far).
    """
    import datasets

    manifest = read_manifest(output_dir)
    if manifest["status"] != "complete" and not allow_incomplete:
        raise CorpusError(f"{output_dir} holds an unfinished run; rerun the same command to complete it (or pass "
                          "allow_incomplete=True).")
    files = sorted(str(p) for p in (Path(output_dir) / "data").glob("train-*.parquet"))
    if not files:
        raise CorpusError(f"{output_dir} holds no shards yet.")
    return datasets.load_dataset("parquet", data_files=files, split="train")


def to_attributions(rows: Any) -> list[Attribution]:
    """:class:`~normxlogit.Attribution` objects from output rows: a ``datasets.Dataset`` (or a slice of one), a
    pyarrow Table, a pandas DataFrame, or an iterable of row dicts."""
    if isinstance(rows, pa.Table):
        records: Iterable[dict] = rows.to_pylist()
    elif isinstance(rows, pd.DataFrame):
        records = rows.to_dict("records")
    elif isinstance(rows, dict):  # a datasets slice: columns of lists
        keys = list(rows)
        records = [dict(zip(keys, values)) for values in zip(*rows.values())]
    else:
        records = rows
    out = []
    for row in records:
        meta = json.loads(row["meta"]) if row.get("meta") else {}
        pair = row.get("text_pair")
        prediction = row["prediction"]
        prediction = float(prediction) if meta.get("task") == "regression" else int(prediction)
        out.append(Attribution(
            tokens=list(row["tokens"]),
            input_ids=[int(i) for i in row["input_ids"]],
            scores=np.asarray(row["scores"], dtype=np.float64),
            special_tokens_mask=[int(m) for m in row["special_tokens_mask"]],
            target=None if row["target"] is None else int(row["target"]),
            prediction=prediction,
            method=row["method"],
            layer=None if row["layer"] is None else int(row["layer"]),
            text=row["text"] if pair is None else (row["text"], pair),
            position=None if row.get("position") is None else int(row["position"]),
            meta=meta,
        ))
    return out


def load_dataset_attributions(output_dir: str | os.PathLike, indices: Sequence[int] | None = None,
                              *, allow_incomplete: bool = False) -> list[Attribution]:
    """The attributions of an :func:`explain_dataset` output (all, or the examples at ``indices``), in order."""
    ds = load_corpus(output_dir, allow_incomplete=allow_incomplete)
    if indices is not None:
        position = {int(i): p for p, i in enumerate(ds["index"])}
        missing = [i for i in indices if int(i) not in position]
        if missing:
            raise KeyError(f"Example {missing[0]} is not in {output_dir}.")
        ds = ds.select([position[int(i)] for i in indices])
    return to_attributions(ds)


# --- faithfulness of a dataset -------------------------------------------------------------------------------------
def evaluate_dataset(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: DataInput,
    *,
    text_column: str = "text",
    pair_column: str | None = None,
    label_column: str | None = None,
    method: str = "normxlogit",
    shard_size: int = SHARD_SIZE,
    seed: int = 0,
    progress: bool = True,
    **evaluate_options: Any,
) -> FaithfulnessResult:
    """:func:`normxlogit.evaluate` over a dataset, data parallel like :func:`explain_dataset`.

    Every process evaluates its share of the shards; the per-example outcomes are gathered in example order, so the
    curves and AOPC are those of a one-process run, exactly (whatever the number of processes). ``label_column``
    holds gold labels (optional); ``evaluate_options`` go to :func:`normxlogit.evaluate` (``ratios``,
    ``replacement``, ``protocol``, ``batch_tokens``, ``max_length``, ``explain_batch_size``, explain options).
    Returns the result on every process.
    """
    from accelerate.utils import gather_object
    from accelerate.utils import tqdm as main_tqdm

    state = process_state()
    _place(model, state)
    if shard_size < 1:
        raise CorpusError(f"shard_size must be at least 1, got {shard_size}.")
    ds = load_data(data, state)
    _check_columns(ds, {"text_column": text_column, "pair_column": pair_column, "label_column": label_column})
    # Every process checks the (same) data itself: cheap, and an error then stops them all without a handshake.
    _scan(ds, [c for c in (text_column, pair_column) if c], [label_column] if label_column else [])
    n = len(ds)
    shards = list(range(-(-n // shard_size)))[state.process_index :: state.num_processes]
    total = sum(len(_shard_rows(k, n, shard_size)) for k in shards)
    share = f", process 0 of {state.num_processes}" if state.num_processes > 1 else ""
    bar = main_tqdm(total=total, unit="ex", disable=not progress, desc=f"evaluate_dataset ({method}{share})")
    results = []
    for shard in shards:
        rows = _shard_rows(shard, n, shard_size)
        texts = _rows(ds, rows.start, rows.stop, text_column, pair_column)
        labels = ds[rows.start : rows.stop][label_column] if label_column else None
        results.append((shard, evaluate(model, tokenizer, texts, method, labels=labels,
                                        seed=_shard_seed(seed, shard), progress=False, **evaluate_options)))
        bar.update(len(rows))
    bar.close()
    gathered = gather_object(results) if state.num_processes > 1 else results
    merged = merge_results([r for _, r in sorted(gathered, key=lambda item: item[0])])
    merged.meta.update(seed=seed, shard_size=shard_size, processes=state.num_processes)
    return merged


def merge_results(results: Sequence[FaithfulnessResult]) -> FaithfulnessResult:
    """One result from results on consecutive parts of a dataset (same method, protocol, ratios), in that order."""
    if not results:
        raise CorpusError("No results to merge.")
    first = results[0]
    for r in results[1:]:
        if (r.method, r.task, r.protocol, r.replacement, r.ratios) != (first.method, first.task, first.protocol,
                                                                        first.replacement, first.ratios):
            raise CorpusError("Cannot merge results of different methods, tasks, protocols, replacements or ratios.")

    def cat(arrays: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(arrays, axis=0)

    counts = np.array([r.n_examples for r in results], dtype=np.float64)
    meta = dict(first.meta)
    for key in ("perturbed_inputs", "forward_inputs"):
        meta[key] = int(sum(r.meta.get(key, 0) for r in results))
    for key in ("evaluation_seconds", "attribution_seconds"):  # summed over shards: the work, not the wall clock
        values = [r.meta.get(key) for r in results]
        meta[key] = None if any(v is None for v in values) else round(float(sum(values)), 3)
    shares = [r.meta.get("special_ranked_first", 0.0) for r in results]
    meta["special_ranked_first"] = round(float(np.dot(shares, counts) / counts.sum()), 4)
    return FaithfulnessResult(
        first.method, first.task, first.protocol, first.replacement, first.ratios,
        {k: cat([r.outputs[k] for r in results]) for k in first.outputs},
        {k: cat([r.predictions[k] for r in results]) for k in first.predictions},
        cat([r.original for r in results]),
        cat([r.original_prediction for r in results]),
        None if first.labels is None else cat([r.labels for r in results]),
        cat([r.n_ranked for r in results]),
        meta,
    )


# --- the command ---------------------------------------------------------------------------------------------------
_CLI_EXAMPLES = """examples:
  normxlogit explain-dataset /work/shared/data/sst2/validation.tsv --text-column sentence --model sst2 --output out/
  torchrun --nproc_per_node 2 -m normxlogit.cli explain-dataset data.jsonl --model PATH --output out/
  accelerate launch --num_processes 4 -m normxlogit.cli explain-dataset data.parquet --model PATH --output out/

Rerun the same command to resume an interrupted run. Load the output with
datasets.load_dataset("parquet", data_dir=OUTPUT) or normxlogit.load_dataset_attributions(OUTPUT).
"""


def add_cli_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``explain-dataset`` subcommand."""
    p = subparsers.add_parser(
        "explain-dataset", help="attribute every example of a dataset file, resumable and data parallel",
        description="Attribute every example of DATA and write Parquet shards plus manifest.json to --output. "
                    "Runs as is on one process, or under torchrun / accelerate launch on several.",
        epilog=_CLI_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", metavar="DATA",
                   help="a CSV, TSV, JSONL, JSON or Parquet file, or a directory written by Dataset.save_to_disk")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="output directory (resumed if it exists)")
    p.add_argument("--model", default="sst2", help="a fine-tuned default (sst2, stsb, blimp), a hub id or a path")
    p.add_argument("--task", choices=["classification", "regression", "masked-lm", "causal-lm"],
                   help="task, for --model given as a hub id or path (default: classification)")
    p.add_argument("--num-labels", type=int, help="number of classes, for a hub id or path")
    p.add_argument("--method", default="normxlogit", help="attribution method (see: normxlogit methods)")
    p.add_argument("--text-column", default="text", help="column holding the texts")
    p.add_argument("--pair-column", help="column holding the second texts of sentence pairs")
    p.add_argument("--target-column", help="column holding the class (or token id) to explain per row")
    p.add_argument("--target", type=int, help="class (or token id) to explain for every row; default: prediction")
    p.add_argument("--layer", type=int, default=-1, help="read the head on this layer (0..L, -1 = last)")
    p.add_argument("--norm-source", default="embedding_output",
                   choices=["embedding_output", "word_embedding", "layer"], help="which vector's norm to use")
    p.add_argument("--max-length", type=int, help="truncate inputs to this many tokens")
    p.add_argument("--method-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option for the method, e.g. n_steps=20 (repeatable; VALUE is read as JSON if it can be)")
    p.add_argument("--batch-size", type=int, default=32, help="examples per forward pass")
    p.add_argument("--shard-size", type=int, default=SHARD_SIZE, help="examples per output shard")
    p.add_argument("--limit", type=int, help="only the first N rows")
    p.add_argument("--seed", type=int, default=0, help="seed for seeded methods (random)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="load the model in this dtype")
    p.add_argument("--device-map", choices=["auto"],
                   help="spread a model too large for one device over this process's GPUs (and CPU memory)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _method_options(pairs: Sequence[str]) -> dict[str, Any]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CorpusError(f"--method-option takes KEY=VALUE, got {pair!r}.")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def process_max_memory(state: "PartialState") -> dict[Any, int] | None:
    """For ``device_map="auto"`` under several processes on one machine: this process's share of the GPUs.

    Without it every process would spread its copy of the model over all GPUs of the machine. With G GPUs and P
    processes per machine, local process i gets GPUs i*G/P .. (i+1)*G/P - 1 (so launch P = G / GPUs-per-copy).
    """
    if not torch.cuda.is_available():
        return None
    local = int(os.environ.get("LOCAL_WORLD_SIZE", state.num_processes))
    gpus = torch.cuda.device_count()
    if local <= 1:
        return None
    if gpus < local:
        raise CorpusError(f"--device-map auto with {local} processes on a machine with {gpus} GPUs: launch at most "
                          "one process per GPU (or group of GPUs).")
    per = gpus // local
    own = range(state.local_process_index * per, (state.local_process_index + 1) * per)
    memory: dict[Any, int] = {i: torch.cuda.get_device_properties(i).total_memory for i in own}
    import psutil

    memory["cpu"] = psutil.virtual_memory().available // local
    return memory


def _load_model(args: argparse.Namespace, state: "PartialState"):
    # The package's loaders, imported late as the CLI does: this module sits beside it.
    from .training import list_recipes, pretrained
    from .models import load_model

    kwargs: dict[str, Any] = {}
    if args.dtype:
        kwargs["dtype"] = getattr(torch, args.dtype)
    if args.device_map:
        kwargs["device_map"] = args.device_map
        memory = process_max_memory(state)
        if memory is not None:
            kwargs["max_memory"] = memory
    # A named recipe may fine-tune on first use: let one process do it and the others read its cache.
    with state.main_process_first():
        if args.model in list_recipes():
            if kwargs:
                raise CorpusError("--dtype and --device-map apply to hub ids and paths, not the fine-tuned defaults.")
            return pretrained(args.model)
        return load_model(args.model, task=args.task or "classification", num_labels=args.num_labels, **kwargs)


def run_cli(args: argparse.Namespace) -> int:
    """Run ``normxlogit explain-dataset`` (on this process's share, when launched on several)."""
    import datasets

    # Leave the process group at the end only if this command joined it (a caller's own group is the caller's).
    joined = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    state = process_state()
    try:
        if args.limit is not None and args.limit < 1:
            raise CorpusError(f"--limit must be at least 1, got {args.limit}.")
        data: Any = args.data
        if args.limit is not None:
            ds = load_data(args.data, state)
            data = ds.select(range(min(args.limit, len(ds))))
        model, tokenizer = _load_model(args, state)
        options: dict[str, Any] = dict(layer=args.layer, norm_source=args.norm_source)
        for name in ("target", "max_length", "task"):
            if getattr(args, name) is not None:
                options[name] = getattr(args, name)
        options.update(_method_options(args.method_option))
        datasets.disable_progress_bars()  # datasets' own bars would interleave with ours
        manifest = explain_dataset(
            model, tokenizer, data, output_dir=args.output, text_column=args.text_column,
            pair_column=args.pair_column, target_column=args.target_column, method=args.method,
            batch_size=args.batch_size, shard_size=args.shard_size, seed=args.seed,
            progress=not args.no_progress, **options)
        if state.is_main_process:
            run = manifest["runs"][-1]
            print(f"{args.output}: {manifest['rows']} examples in {manifest['shards']} shards "
                  f"({run['examples_written']} computed now on {run['processes']} process(es) in {run['seconds']} s)",
                  file=sys.stderr)
        return 0
    finally:
        # gloo aborts at exit when a process group is still open.
        if joined and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
