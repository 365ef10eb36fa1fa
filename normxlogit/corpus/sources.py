"""The input of a corpus run: a dataset, DataFrame or file loaded as a ``datasets.Dataset``, and checked.

Files are read through ``datasets``, memory-mapped, so a corpus larger than memory streams from disk. The main
process checks every value used (texts non-empty, nothing missing) and fingerprints them, so that a rerun can tell
whether it sees the same data as the run it resumes.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .errors import CorpusError

if TYPE_CHECKING:  # pragma: no cover
    import datasets
    from accelerate import PartialState

DataInput = Union["datasets.Dataset", "pd.DataFrame", str, os.PathLike]

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


def check_columns(ds: "datasets.Dataset", columns: dict[str, str | None]) -> None:
    """Every named column exists (``columns`` maps a role, e.g. 'text_column', to a column name or None)."""
    if len(ds) == 0:
        raise CorpusError("The dataset has no rows: there is nothing to explain.")
    for role, name in columns.items():
        if name is not None and name not in ds.column_names:
            raise CorpusError(f"{role}={name!r} is not a column of the dataset; its columns are "
                              f"{', '.join(map(repr, ds.column_names))}.")


def scan(ds: "datasets.Dataset", text_columns: Sequence[str], other_columns: Sequence[str]) -> str:
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


def texts_of(ds: "datasets.Dataset", rows: range, text_column: str, pair_column: str | None) -> list:
    """Texts (or text pairs) of the dataset rows ``rows`` (consecutive), as :func:`normxlogit.explain` takes them."""
    batch = ds[rows.start : rows.stop]
    texts = batch[text_column]
    return list(zip(texts, batch[pair_column])) if pair_column else list(texts)
