"""``evaluate_dataset``: :func:`normxlogit.evaluate` over a dataset, data parallel, merged in example order."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..evaluation.faithfulness import evaluate
from ..evaluation.results import FaithfulnessResult
from .errors import CorpusError
from .processes import place_model, process_state, progress_bar
from .shards import SHARD_SIZE, count_shards, shard_rows
from .sources import DataInput, check_columns, load_data, scan, texts_of


def _shard_seed(seed: int, shard: int) -> int:
    """The seed shard ``shard`` is evaluated with: seeded methods (``random``) then draw per (seed, shard, row in
    shard), which the number of processes does not change."""
    return int.from_bytes(hashlib.sha256(f"{int(seed)}:{int(shard)}".encode()).digest()[:7], "big")


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

    state = process_state()
    place_model(model, state)
    if shard_size < 1:
        raise CorpusError(f"shard_size must be at least 1, got {shard_size}.")
    ds = load_data(data, state)
    check_columns(ds, {"text_column": text_column, "pair_column": pair_column, "label_column": label_column})
    # Every process checks the (same) data itself: cheap, and an error then stops them all without a handshake.
    scan(ds, [c for c in (text_column, pair_column) if c], [label_column] if label_column else [])
    n = len(ds)
    shards = list(range(count_shards(n, shard_size)))[state.process_index :: state.num_processes]
    total = sum(len(shard_rows(k, n, shard_size)) for k in shards)
    bar = progress_bar(total, "evaluate_dataset", method, state, progress)
    results = []
    for shard in shards:
        rows = shard_rows(shard, n, shard_size)
        texts = texts_of(ds, rows, text_column, pair_column)
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
        None if any(r.target is None for r in results) else cat([r.target for r in results]),
    )
