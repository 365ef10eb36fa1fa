"""The ``normxlogit explain-generation`` command: generate (or teacher-force a continuation) with a causal LM and
attribute every generated token, as text, strict JSON or an HTML page; and ``normxlogit cite``: answer a question
about a context file and rank the context's sentences for the answer."""

from __future__ import annotations

import argparse
import html
import sys
from pathlib import Path

from .explain import explain_generation
from .registry import NORM_SOURCES, list_generation_methods
from .result import GenerationAttribution
from .sources import SOURCE_AGGREGATIONS, sentence_spans

__all__ = ["CITE_TEMPLATE", "DEFAULT_LLM", "add_cli_parser", "cite_prompt", "run_cli"]

#: How ``normxlogit cite`` puts the context and the question together (the question is not a source).
CITE_TEMPLATE = "{context}\n\nQuestion: {question}"

DEFAULT_LLM = "SmolLM2-135M-Instruct"


def _add_model_and_output_arguments(p: argparse.ArgumentParser) -> None:
    """The options both commands share: which model and method, where it runs, and what is written where."""
    p.add_argument("--model", default=DEFAULT_LLM, help="a local name (../shared/models, $NORMXLOGIT_MODELS), a "
                   "hub id, a path or a .gguf file")
    p.add_argument("--method", default="normxlogit", choices=list_generation_methods(), help="attribution method")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="load the model in this dtype")
    p.add_argument("--device", help="run on this device (cpu, cuda, cuda:1...)")
    p.add_argument("--format", default="text", choices=["text", "json", "html"], help="output format")
    p.add_argument("-o", "--output", help="write to this file instead of standard output")


def add_cli_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``explain-generation`` command to the ``normxlogit`` command's subparsers."""
    p = subparsers.add_parser(
        "explain-generation", help="generate with a causal LM and attribute every generated token",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Generate greedily (or teacher-force --continuation) and attribute every generated token to "
                    "every earlier token, from one forward pass.")
    p.add_argument("prompt", metavar="PROMPT", help="the prompt")
    _add_model_and_output_arguments(p)
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    p.add_argument("--system", help="system prompt (with --chat)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate")
    p.add_argument("--continuation", help="attribute this continuation instead of generating")
    p.add_argument("--layer", type=int, default=-1, help="read the head on this layer (0..L, -1 = last)")
    p.add_argument("--norm-source", default="embedding_output", choices=list(NORM_SOURCES),
                   help="which vector's norm NormXLogit uses")
    p.add_argument("--step", type=int, default=0, help="html: the generated token whose view is open")
    add_cite_parser(subparsers)
    return p


def add_cite_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``cite`` command: answer a question about a context file and rank its sentences for the answer."""
    p = subparsers.add_parser(
        "cite", help="answer a question about a context file and cite the context's sentences",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Generate an answer to QUESTION about the text of --context (or teacher-force --continuation) "
                    "and rank the context's sentences for it, from one forward pass.")
    p.add_argument("--context", required=True, help="a UTF-8 text file: the context; its sentences are the sources")
    p.add_argument("--question", required=True, help="the question or instruction about the context")
    _add_model_and_output_arguments(p)
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="wrap the prompt in the tokenizer's chat template (default: when it has one)")
    p.add_argument("--system", help="system prompt (with the chat template)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="tokens to generate")
    p.add_argument("--continuation", help="cite for this answer instead of generating one")
    p.add_argument("--source-aggregation", default="sum", choices=list(SOURCE_AGGREGATIONS),
                   help="a source's score: the sum of its tokens' scores (default) or their mean (no length bias)")
    p.add_argument("--top", type=int, default=5, help="text: how many sources to list")
    return p


def cite_prompt(context: str, question: str) -> tuple[str, list[tuple[int, int]]]:
    """The prompt of ``normxlogit cite`` (:data:`CITE_TEMPLATE`) and the context's sentences as spans of it."""
    if not context.strip():
        raise ValueError("The context is empty; give a file with some text.")
    if not question.strip():
        raise ValueError("The question is empty.")
    prompt = CITE_TEMPLATE.format(context=context.strip(), question=question.strip())
    return prompt, sentence_spans(prompt, 0, len(context.strip()))


def _check_output_path(path: str) -> None:
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"-o {path}: is a directory; give a file name.")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"-o {path}: the folder {parent} does not exist.")


def _page(result: GenerationAttribution, step: int, title: str = "generation attribution") -> str:
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><meta name='viewport' content='width=device-width, "
            f"initial-scale=1'><title>normxlogit {title}</title></head><body style='font-family:"
            f"sans-serif;max-width:70em;margin:1em auto;padding:0 1em'><h2>normxlogit: {title}</h2>"
            f"<p>Prompt: {html.escape(result.prompt)}</p>{result.to_html(step)}</body></html>\n")


def _cite_text(result: GenerationAttribution, top: int) -> str:
    table = result.cite().head(max(1, top))
    over = "summed" if result.source_aggregation == "sum" else "averaged"
    lines = [f"answer: {result.generated_text!r}", f"sources ranked for the whole answer ({result.method}, {over} "
             "over each source's tokens, summed over the answer's tokens):"]
    lines += [f"{rank + 1:>3}. [{j + 1}] {score:+.4g}  {source}"
              for rank, (j, source, score) in enumerate(zip(table.index, table["source"], table["score"]))]
    return "\n".join(lines) + "\n"


def run_cite(args: argparse.Namespace) -> int:
    """Run ``normxlogit cite``; input errors raise ValueError (the caller prints one line)."""
    from ..models import load_model

    if args.output:
        _check_output_path(args.output)
    try:
        context = Path(args.context).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read --context {args.context}: {getattr(err, 'strerror', None) or err}") from None
    prompt, spans = cite_prompt(context, args.question)
    model, tokenizer = load_model(args.model, task="causal-lm", dtype=args.dtype, device=args.device)
    chat = bool(getattr(tokenizer, "chat_template", None)) if args.chat is None else args.chat
    result = explain_generation(model, tokenizer, prompt, max_new_tokens=args.max_new_tokens,
                                continuation=args.continuation, method=args.method, chat=chat,
                                system_prompt=args.system, sources=spans,
                                source_aggregation=args.source_aggregation)
    if args.format == "json":
        out = result.to_json(indent=1) + "\n"
    elif args.format == "html":
        out = _page(result, 0, title="citations")
    else:
        out = _cite_text(result, args.top)
    return _emit(out, args.output)


def run_cli(args: argparse.Namespace) -> int:
    """Run ``normxlogit explain-generation`` (or ``cite``); input errors raise ValueError (the caller prints one
    line)."""
    from ..models import load_model

    if getattr(args, "command", None) == "cite":
        return run_cite(args)
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
    return _emit(out, args.output)


def _emit(out: str, output: str | None) -> int:
    if not output:
        sys.stdout.write(out)
        return 0
    try:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(out)
    except OSError as err:
        raise ValueError(f"cannot write -o {output}: {err.strerror or err}") from None
    print(f"wrote {output}", file=sys.stderr)
    return 0
