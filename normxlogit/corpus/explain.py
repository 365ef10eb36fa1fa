"""``explain_dataset``: a dataset in, Parquet shards plus ``manifest.json`` out; resumable and data parallel. Also
reading the output back (:func:`load_corpus`, :func:`to_attributions`, :func:`load_dataset_attributions`).

Each process takes every N-th pending shard (by its rank) and writes each one atomically; the main process checks the
output directory before the work starts and writes the final manifest when every process is done. A shard's texts
are attributed with :func:`~normxlogit.core.explain.attribute` given the index of the shard's first example, so every
method (seeded ones like ``random`` included) gives the scores :func:`normxlogit.explain` gives on the whole dataset,
whatever the shard size and the number of processes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..core.attribution import Attribution
from ..core.explain import attribute, explain
from ..core.inputs import encode
from ..models import check_trained_head
from .errors import CorpusError
from .manifest import finish_output, model_names, open_output, pending_shards, read_manifest, run_config
from .processes import on_main, place_model, process_state, progress_bar
from .shards import MAX_SHARDS, SHARD_SIZE, count_shards, shard_path, shard_rows, shard_table, write_shard
from .sources import DataInput, check_columns, load_data, scan, texts_of

if TYPE_CHECKING:  # pragma: no cover
    import datasets


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
    :func:`normxlogit.explain` (``layer``, ``norm_source``, ``target``, ``max_length``, ``task``, ``template``,
    ``label_words``, method options such as ``contrast``).
    The scores are those :func:`normxlogit.explain` gives on the whole dataset with the same ``seed``.

    Resumable: rerun the same call after an interruption and only the missing shards are computed; a rerun with
    other options, model or data into the same directory raises :class:`CorpusError`. Data parallel: under
    ``torchrun`` or ``accelerate launch`` every process takes its share of the shards; the model is moved to the
    process's device unless it was loaded with a ``device_map``. Returns the manifest (on every process).
    """
    check_trained_head(model, "explain_dataset")
    state = process_state()
    place_model(model, state)
    if batch_size < 1 or shard_size < 1:
        raise CorpusError(f"batch_size and shard_size must be at least 1, got {batch_size} and {shard_size}.")
    if "target" in explain_options and target_column is not None:
        raise CorpusError("Pass either target= (one class for every row) or target_column=, not both.")
    ds = load_data(data, state)
    check_columns(ds, {"text_column": text_column, "pair_column": pair_column, "target_column": target_column})
    out = Path(output_dir).expanduser()
    n = len(ds)
    num_shards = count_shards(n, shard_size)
    if num_shards > MAX_SHARDS:
        raise CorpusError(f"{n} examples in shards of {shard_size} make {num_shards} shards, more than {MAX_SHARDS}; "
                          f"pass shard_size={-(-n // MAX_SHARDS)} or more.")
    text_columns = [c for c in (text_column, pair_column) if c]

    if target_column and not pa.types.is_integer(ds.data.schema.field(target_column).type):
        raise CorpusError(f"target_column={target_column!r} holds {ds.data.schema.field(target_column).type} values; "
                          "it must hold class indices (or token ids) as integers.")

    def prepare() -> tuple[dict[str, Any], list[int]]:
        fingerprint = scan(ds, text_columns, [target_column] if target_column else [])
        # One example through the whole path first: a bad method, layer or target fails here, before anything is
        # written, with explain's own message.
        first = texts_of(ds, range(1), text_column, pair_column)
        first_target = {"target": [int(ds[0][target_column])]} if target_column else {}
        explain(model, tokenizer, first, method, batch_size=1, seed=seed, **first_target, **explain_options)
        config = run_config(model, tokenizer, method=method, options=explain_options, seed=seed, shard_size=shard_size,
                            data={"examples": n, "fingerprint": fingerprint, "text_column": text_column,
                                  "pair_column": pair_column, "target_column": target_column})
        manifest = open_output(out, config, model_names(model, tokenizer), n, num_shards)
        return manifest, pending_shards(out, n, shard_size, num_shards)

    manifest, pending = on_main(prepare, state)
    mine = pending[state.process_index :: state.num_processes]
    total = sum(len(shard_rows(k, n, shard_size)) for k in mine)
    bar = progress_bar(total, "explain_dataset", method, state, progress)
    # What explain() does around attribute(): tokenise with max_length and template (the rest goes to attribute).
    max_length, template = explain_options.get("max_length"), explain_options.get("template")
    options = {k: v for k, v in explain_options.items() if k not in ("max_length", "template")}
    started = time.perf_counter()
    for shard in mine:
        rows = shard_rows(shard, n, shard_size)
        encoded = encode(model, tokenizer, texts_of(ds, rows, text_column, pair_column), max_length, template=template)
        targets = {"target": [int(t) for t in ds[rows.start : rows.stop][target_column]]} if target_column else {}
        # first_index: the shard's place in the whole dataset, so seeded methods draw per global example index.
        attributions = attribute(model, tokenizer, encoded, method, batch_size=batch_size, seed=seed,
                                 first_index=rows.start, **targets, **options)
        write_shard(shard_path(out, shard, num_shards), shard_table(rows.start, attributions))
        bar.update(len(rows))
    bar.close()
    elapsed = time.perf_counter() - started

    state.wait_for_everyone()
    from accelerate.utils import gather_object

    written = gather_object([(state.process_index, len(mine), total, elapsed)])
    manifest = on_main(lambda: finish_output(out, manifest, n, shard_size, num_shards, written, batch_size), state)
    state.wait_for_everyone()
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
