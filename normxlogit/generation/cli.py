"""The ``normxlogit explain-generation`` command: generate (or teacher-force a continuation) with a causal LM and
attribute every generated token, as text, strict JSON or an HTML page."""

from __future__ import annotations

import argparse
import html
import sys
from pathlib import Path

from .explain import explain_generation
from .registry import NORM_SOURCES, list_generation_methods
from .result import GenerationAttribution

__all__ = ["DEFAULT_LLM", "add_cli_parser", "run_cli"]

DEFAULT_LLM = "SmolLM2-135M-Instruct"


def add_cli_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``explain-generation`` command to the ``normxlogit`` command's subparsers."""
    p = subparsers.add_parser(
        "explain-generation", help="generate with a causal LM and attribute every generated token",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Generate greedily (or teacher-force --continuation) and attribute every generated token to "
                    "every earlier token, from one forward pass.")
    p.add_argument("prompt", metavar="PROMPT", help="the prompt")
    p.add_argument("--model", default=DEFAULT_LLM, help="a local name (../shared/models, $NORMXLOGIT_MODELS), a "
                   "hub id, a path or a .gguf file")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    p.add_argument("--system", help="system prompt (with --chat)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate")
    p.add_argument("--continuation", help="attribute this continuation instead of generating")
    p.add_argument("--method", default="normxlogit", choices=list_generation_methods(), help="attribution method")
    p.add_argument("--layer", type=int, default=-1, help="read the head on this layer (0..L, -1 = last)")
    p.add_argument("--norm-source", default="embedding_output", choices=list(NORM_SOURCES),
                   help="which vector's norm NormXLogit uses")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="load the model in this dtype")
    p.add_argument("--device", help="run on this device (cpu, cuda, cuda:1...)")
    p.add_argument("--format", default="text", choices=["text", "json", "html"], help="output format")
    p.add_argument("--step", type=int, default=0, help="html: the generated token whose view is open")
    p.add_argument("-o", "--output", help="write to this file instead of standard output")
    return p


def _check_output_path(path: str) -> None:
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"-o {path}: is a directory; give a file name.")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"-o {path}: the folder {parent} does not exist.")


def _page(result: GenerationAttribution, step: int) -> str:
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><meta name='viewport' content='width=device-width, "
            "initial-scale=1'><title>normxlogit generation attribution</title></head><body style='font-family:"
            "sans-serif;max-width:70em;margin:1em auto;padding:0 1em'><h2>normxlogit: generation attribution</h2>"
            f"<p>Prompt: {html.escape(result.prompt)}</p>{result.to_html(step)}</body></html>\n")


def run_cli(args: argparse.Namespace) -> int:
    """Run ``normxlogit explain-generation``; input errors raise ValueError (the caller prints one line)."""
    from ..models import load_model

    if args.output:
        _check_output_path(args.output)  # fail before the (slow) model load
    model, tokenizer = load_model(args.model, task="causal-lm", dtype=args.dtype, device=args.device)
    result = explain_generation(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens,
                                continuation=args.continuation, method=args.method, chat=args.chat,
                                system_prompt=args.system, layer=args.layer, norm_source=args.norm_source)
    if args.format == "json":
        out = result.to_json(indent=1) + "\n"
    elif args.format == "html":
        if not -len(result) <= args.step < len(result):
            raise ValueError(f"--step {args.step} is out of range for {len(result)} generated tokens.")
        out = _page(result, args.step)
    else:
        out = str(result) + "\n"
    if not args.output:
        sys.stdout.write(out)
        return 0
    try:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(out)
    except OSError as err:
        raise ValueError(f"cannot write -o {args.output}: {err.strerror or err}") from None
    print(f"wrote {args.output}", file=sys.stderr)
    return 0
