"""The ``normxlogit explain-dataset`` subcommand: :func:`add_cli_parser` registers it, :func:`run_cli` runs it."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from .errors import CorpusError
from .explain import explain_dataset
from .processes import process_max_memory, process_state
from .shards import SHARD_SIZE
from .sources import load_data

if TYPE_CHECKING:  # pragma: no cover
    from accelerate import PartialState

_CLI_EXAMPLES = """examples:
  normxlogit explain-dataset /work/shared/data/sst2/validation.tsv --text-column sentence --model sst2 --output out/
  torchrun --nproc_per_node 2 -m normxlogit.cli explain-dataset data.jsonl --model PATH --output out/
  accelerate launch --num_processes 4 -m normxlogit.cli explain-dataset data.parquet --model PATH --output out/

Rerun the same command to resume an interrupted run. Load the output with
datasets.load_dataset("parquet", data_dir=OUTPUT) or normxlogit.load_dataset_attributions(OUTPUT).
"""


def add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    """``--template``, ``--label-words`` and ``--contrast``: a prompted causal LM as a classifier (both CLIs)."""
    parser.add_argument("--template", help="a prompt with {} where each text goes, e.g. $'Review: {}\\nSentiment:' "
                        "(only the inserted text's tokens are ranked)")
    parser.add_argument("--label-words", nargs="+", metavar="WORD",
                        help="a causal LM's label words, one token each (e.g. ' negative' ' positive'): the prompted "
                             "classifier's classes (--task defaults to causal-lm)")
    parser.add_argument("--contrast", action="store_true",
                        help="logat/normxlogit: the target's log-odds against the other classes (label words)")


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
    add_prompt_arguments(p)
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


def _load_model(args: argparse.Namespace, state: "PartialState"):
    # The package's loaders, imported late (a named recipe pulls in the training code).
    from ..models import load_model
    from ..training import list_recipes, pretrained

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
        task = args.task or ("causal-lm" if args.label_words else "classification")
        return load_model(args.model, task=task, num_labels=args.num_labels, **kwargs)


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
        for name in ("target", "max_length", "task", "template", "label_words"):
            if getattr(args, name) is not None:
                options[name] = getattr(args, name)
        if args.contrast:
            options["contrast"] = True
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
