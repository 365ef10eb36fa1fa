"""Corpus-scale attribution: a dataset in, Parquet shards out; resumable, and data parallel under accelerate/torchrun.

The unit of work is the *shard*: ``shard_size`` consecutive examples of the input, numbered from 0. The shard layout
depends only on the number of examples and ``shard_size``, never on the number of processes, and every example is
attributed as :func:`normxlogit.explain` attributes it in the whole list (seeded methods draw per example index), so
the scores are the same bit for bit whichever process computes them (one process, N processes, or a resumed run on a
different N). Each process takes every N-th pending shard (by its rank in accelerate's
:class:`~accelerate.PartialState`, which wraps ``torch.distributed``), writes each one to a temporary file and
renames it into place, so a shard file either holds all of its rows or does not exist. The main process checks the
output directory before the work starts (manifest, complete shards, truncated ones) and writes the final
``manifest.json`` when every process is done.

Output directory::

    manifest.json                          model, method, options, data fingerprint, package version, row counts
    data/train-00000-of-00042.parquet      one row per example: index, text, tokens, input_ids, scores, target,
    data/train-00001-of-00042.parquet      prediction, method, layer, ...
    ...

The shard names follow the Hugging Face Hub's layout, so ``datasets.load_dataset("parquet", data_dir=...)`` finds
the shards and nothing else (or use :func:`load_corpus`), and
:func:`to_attributions` / :func:`load_dataset_attributions` turn rows into :class:`~normxlogit.Attribution` objects.

Modules: :mod:`.processes` (process state, placement, main-process helpers), :mod:`.sources` (loading and checking
the input), :mod:`.shards` (layout, schema, atomic writes), :mod:`.manifest` (the manifest, resuming, the final
check), :mod:`.explain` (``explain_dataset`` and reading back), :mod:`.evaluate` (``evaluate_dataset``),
:mod:`.cli` (the ``explain-dataset`` command).
"""

from __future__ import annotations

from .cli import add_cli_parser, run_cli
from .errors import CorpusError
from .evaluate import evaluate_dataset, merge_results
from .explain import explain_dataset, load_corpus, load_dataset_attributions, to_attributions
from .manifest import FORMAT, MANIFEST, read_manifest
from .processes import SYNC_TIMEOUT, process_max_memory, process_state
from .shards import MAX_SHARDS, SHARD_SIZE, shard_path
from .sources import DataInput, load_data

__all__ = [
    "FORMAT", "MANIFEST", "MAX_SHARDS", "SHARD_SIZE", "SYNC_TIMEOUT", "CorpusError", "DataInput",
    "add_cli_parser", "evaluate_dataset", "explain_dataset", "load_corpus", "load_data", "load_dataset_attributions",
    "merge_results", "process_max_memory", "process_state", "read_manifest", "run_cli", "shard_path",
    "to_attributions",
]
