"""The shards of a corpus run: their layout, their Parquet schema, and atomic writes.

The unit of work is the *shard*: ``shard_size`` consecutive examples of the input, numbered from 0. The layout
depends only on the number of examples and ``shard_size``, never on the number of processes. A file is written to a
temporary file and renamed into place, so a shard file either holds all of its rows or does not exist. The shard
names follow the Hugging Face Hub's layout (``data/train-00000-of-00042.parquet``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..core.attribution import Attribution

SHARD_SIZE = 256  # rows per shard: small enough to balance many processes and lose little on a kill
MAX_SHARDS = 99_999  # the Hub's shard names have five digits


def shard_path(out: Path, shard: int, num_shards: int) -> Path:
    """Where shard ``shard`` of ``num_shards`` lives under the output directory ``out``."""
    return out / "data" / f"train-{shard:05d}-of-{num_shards:05d}.parquet"


def count_shards(n: int, shard_size: int) -> int:
    """How many shards ``n`` examples make in shards of ``shard_size``."""
    return -(-n // shard_size)


def shard_rows(shard: int, n: int, shard_size: int) -> range:
    """The examples (rows of the input) that shard ``shard`` holds."""
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


def shard_table(start: int, attributions: Sequence[Attribution]) -> pa.Table:
    """The Arrow table of a shard: one row per attribution, the first being example ``start``."""
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


def write_atomic(path: Path, write: Callable[[Path], Any]) -> None:
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


def write_shard(path: Path, table: pa.Table) -> None:
    """Write a shard's table to ``path`` as Parquet, atomically."""
    write_atomic(path, lambda tmp: pq.write_table(table, tmp))


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` as indented JSON, atomically."""
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n"))


def shard_problem(path: Path, rows: range) -> str | None:
    """Why the shard file at ``path`` cannot be kept (None when it holds exactly ``rows``)."""
    try:
        indices = pq.read_table(path, columns=["index"]).column("index").to_numpy()
    except Exception as err:  # a truncated or foreign file: pyarrow says the footer or magic bytes are wrong
        return f"unreadable ({err})"
    if len(indices) != len(rows) or not np.array_equal(indices, np.arange(rows.start, rows.stop)):
        return f"holds {len(indices)} rows, expected examples {rows.start}..{rows.stop - 1}"
    return None
