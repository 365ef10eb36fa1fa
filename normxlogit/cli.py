"""The ``normxlogit`` command: explain texts, fine-tune the default models, list methods."""

from __future__ import annotations

import argparse
import html
import json
import sys
from typing import Sequence

from . import __version__
from .corpus.cli import add_prompt_arguments

_EXAMPLES = """examples:
  normxlogit explain "a gripping , funny film ." --model sst2
  normxlogit explain "a man is playing a flute ." --pair "a man plays the flute ." --model stsb
  normxlogit explain "a gripping film ." --model sst2 --method logat --layer 3 --format json
  normxlogit explain "the keys to the cabinet [MASK] here ." --model blimp --format html -o out.html
  normxlogit explain "a gripping film ." --model SmolLM2-135M-Instruct --template $'Review: {}\nSentiment:' --label-words " negative" " positive" --contrast
  normxlogit explain-generation "What is the capital of France?" --model SmolLM2-135M-Instruct --chat --format html -o out.html
  normxlogit cite --context notes.txt --question "Who wrote the letter?" --model SmolLM2-135M-Instruct --format html -o cite.html
  normxlogit finetune sst2 stsb
  normxlogit methods
  normxlogit student-notebooks book/ students/
  normxlogit explain-dataset data.tsv --text-column sentence --model sst2 --output out/
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="normxlogit",
        description="NormXLogit token attribution for Hugging Face transformers, from one forward pass.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"normxlogit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    ex = sub.add_parser("explain", help="attribute a model's prediction to the input tokens",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ex.add_argument("texts", nargs="+", metavar="TEXT", help="text(s) to explain")
    ex.add_argument("--pair", nargs="+", metavar="TEXT",
                    help="second text of a pair for each TEXT (sentence-pair models such as stsb)")
    ex.add_argument("--model", default="sst2",
                    help="a fine-tuned default (sst2, stsb, blimp), a hub id or a local path")
    ex.add_argument("--task", choices=["classification", "regression", "masked-lm", "causal-lm"],
                    help="task, for --model given as a hub id or path (default: classification)")
    ex.add_argument("--num-labels", type=int, help="number of classes, for a hub id or path")
    ex.add_argument("--method", default="normxlogit", help="attribution method (see: normxlogit methods)")
    ex.add_argument("--layer", type=int, default=-1, help="read the head on this layer (0..L, -1 = last)")
    ex.add_argument("--target", type=int, help="class (or token id) to explain; default: the prediction")
    ex.add_argument("--norm-source", default="embedding_output",
                    choices=["embedding_output", "word_embedding", "layer"], help="which vector's norm to use")
    ex.add_argument("--max-length", type=int, help="truncate inputs to this many tokens")
    add_prompt_arguments(ex)
    ex.add_argument("--format", default="text", choices=["text", "json", "html"], help="output format")
    ex.add_argument("-o", "--output", help="write to this file instead of standard output")
    ex.add_argument("--color", default="auto", choices=["auto", "always", "never"],
                    help="colour tokens in text output")

    ft = sub.add_parser("finetune", help="fine-tune and cache the default models (sst2, stsb, blimp)")
    ft.add_argument("names", nargs="+", metavar="NAME", help="recipes to fine-tune")
    ft.add_argument("--force", action="store_true", help="retrain even when a cached model exists")

    sub.add_parser("methods", help="list the attribution methods")
    from .corpus import add_cli_parser

    add_cli_parser(sub)  # explain-dataset
    from . import student

    st = sub.add_parser("student-notebooks", help="student copies of the chapters: solutions and outputs removed")
    student.add_arguments(st)
    from .generation import add_cli_parser as add_generation_parser

    add_generation_parser(sub)  # explain-generation and cite
    return parser


def _load(args: argparse.Namespace):
    from .models import load_model
    from .training import list_recipes, pretrained

    if args.model in list_recipes():
        return pretrained(args.model)
    task = args.task or ("causal-lm" if getattr(args, "label_words", None) else "classification")
    return load_model(args.model, task=task, num_labels=args.num_labels)


def _render_text(attrs, colour: bool) -> str:
    blocks = []
    for a in attrs:
        head = a._heading()
        body = a.to_ansi() if colour else "  ".join(f"{t}:{s:+.3f}" for t, s, m in
                                                      zip(a.tokens, a.scores, a.special_tokens_mask) if not m)
        top = ", ".join(f"{t} ({s:+.3f})" for t, s in a.top(3))
        blocks.append(f"{head}\n{body}\ntop tokens: {top}")
    return "\n\n".join(blocks) + "\n"


def _render_html(attrs) -> str:
    rows = "\n".join(f"<p>{a.to_html()}</p>" for a in attrs)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape('normxlogit explanation')}"
            f"</title></head><body style='font-family:sans-serif;max-width:60em;margin:2em auto'>"
            f"<h2>normxlogit explanation</h2>\n{rows}\n</body></html>\n")


def _explain(args: argparse.Namespace) -> int:
    from .core.explain import explain

    texts: list = list(args.texts)
    if args.pair is not None:
        if len(args.pair) != len(texts):
            raise ValueError(f"--pair needs one second text per TEXT ({len(texts)}), got {len(args.pair)}.")
        texts = list(zip(texts, args.pair))
    model, tokenizer = _load(args)
    prompted = {"template": args.template, "label_words": args.label_words}
    options = {"contrast": True} if args.contrast else {}
    attrs = explain(model, tokenizer, texts, method=args.method, target=args.target, layer=args.layer,
                    norm_source=args.norm_source, max_length=args.max_length, **prompted, **options)
    if args.format == "json":
        out = json.dumps([a.to_dict() for a in attrs], indent=1) + "\n"
    elif args.format == "html":
        out = _render_html(attrs)
    else:
        colour = args.color == "always" or (args.color == "auto" and args.output is None and sys.stdout.isatty())
        out = _render_text(attrs, colour)
    return _write(out, args.output)


def _write(text: str, path: str | None) -> int:
    """Write ``text`` to ``path`` (standard output when None); a clear error for a path that cannot be written."""
    if not path:
        sys.stdout.write(text)
        return 0
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as err:
        raise ValueError(f"cannot write {path!r} ({err.strerror or err}); pass -o a writable file path.") from None
    print(f"wrote {path}", file=sys.stderr)
    return 0


def _finetune(names: Sequence[str], force: bool = False) -> int:
    """Fine-tune (or load from cache) each named model and print its validation metric and cache path."""
    from .training import cached_path, list_recipes, pretrained, pretrained_info

    names = list(names) or list_recipes()
    unknown = [n for n in names if n not in list_recipes()]
    if unknown:
        raise ValueError(f"Unknown model(s) {', '.join(unknown)}; available: {', '.join(list_recipes())}.")
    for name in names:
        pretrained(name, force=force)
        info = pretrained_info(name)
        print(
            f"{name}: {info['metric']} = {info['metric_value']:.4f} on {info['recipe']['eval_split']} "
            f"({info['eval_examples']} examples), trained in {info['train_time_s']:.0f} s -> {cached_path(name)}"
        )
    return 0


def _methods() -> int:
    from .core.registry import get_method, list_methods

    for name in list_methods():
        print(f"{name:<22} {get_method(name).description}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``normxlogit`` command."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "explain":
            return _explain(args)
        if args.command in ("explain-generation", "cite"):
            from .generation import run_cli as run_generation

            return run_generation(args)
        if args.command == "student-notebooks":
            from . import student

            return student.run(args)
        if args.command == "explain-dataset":
            from .corpus import run_cli

            return run_cli(args)
        if args.command == "finetune":
            return _finetune(args.names, force=args.force)
        return _methods()
    except (ValueError, TypeError, FileNotFoundError, KeyError) as err:
        # Input errors are the user's to fix: one clear line, no traceback.
        print(f"normxlogit: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
