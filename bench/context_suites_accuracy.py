"""How well SmolLM2-135M-Instruct does each generated context task (normxlogit.data.context_suites), greedy.

For every task in ``TASKS``: ``--n`` examples (seed ``--seed``), the prompt wrapped in the chat template, a greedy
continuation of up to the task's ``max_new_tokens`` (the package's own ``prompt_ids``; ``--batch`` prompts
left-padded into one ``generate`` call, which gave the same answers as one at a time on the prompts checked), scored by ``ContextExample.is_correct``. Prints each task's accuracy with a
95% Wilson interval and writes ``normxlogit/resources/context_suites_accuracy.json``; a task is *kept* (``USABLE_TASKS``) when its
accuracy is at least ``--keep`` (0.8). A ``pilots`` entry already in the file (query wordings tried on fewer prompts
before a task was written, each with its accuracy and interval) is kept as it is.

    python bench/context_suites_accuracy.py [--n 60] [--tasks repeat_word ...] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def wilson(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion."""
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def generate(model, tok, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy answers to ``prompts`` (chat template; the package's ``prompt_ids``), left-padded into one batch."""
    import torch
    from transformers import GenerationConfig

    from normxlogit.generation.prompts import prompt_ids

    rows = [prompt_ids(tok, p, chat=True) for p in prompts]
    width = max(map(len, rows))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    own = model.generation_config
    config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, pad_token_id=pad,
                              eos_token_id=own.eos_token_id, bos_token_id=own.bos_token_id)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, generation_config=config)
    return tok.batch_decode(out[:, width:], skip_special_tokens=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=float, default=0.8)
    parser.add_argument("--tasks", nargs="*")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=10, help="prompts generated together (left padding)")
    parser.add_argument("--json", default=str(ROOT / "normxlogit" / "resources" / "context_suites_accuracy.json"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import normxlogit as nx
    from normxlogit.data.context_suites import TASKS, make_suite

    model, tok = nx.load_model(args.model, task="causal-lm")
    model.eval()
    path = Path(args.json)
    old = json.loads(path.read_text()) if path.is_file() else {}
    rows = dict(old.get("tasks", {})) if old.get("model") == args.model else {}
    started = time.time()
    for task in args.tasks or list(TASKS):
        spec = TASKS[task]
        suite = make_suite(task, args.n, args.seed)
        answers = []
        for start in range(0, len(suite), args.batch):
            answers += generate(model, tok, [ex.prompt for ex in suite[start:start + args.batch]],
                                spec.max_new_tokens)
        right = [ex.is_correct(a) for ex, a in zip(suite, answers)]
        correct = int(sum(right))
        low, high = wilson(correct, len(suite))
        acc = correct / len(suite)
        rows[task] = {
            "description": spec.description, "planted": spec.planted, "sources": spec.sources,
            "max_new_tokens": spec.max_new_tokens, "n": len(suite), "seed": args.seed, "correct": correct,
            "accuracy": round(acc, 4), "ci95": [round(low, 4), round(high, 4)], "kept": acc >= args.keep,
            "examples": [{"prompt": ex.prompt, "expected": ex.answer, "generated": a, "correct": r}
                         for ex, a, r in list(zip(suite, answers, right))[:3]],
        }
        print(f"{task:<22} {acc:6.1%}  [{low:.0%}, {high:.0%}]  n={len(suite)}  "
              f"{'kept' if acc >= args.keep else 'dropped'}   ({time.time() - started:.0f} s)", flush=True)
        out = {"model": args.model, "decoding": f"greedy, {args.batch} prompts per left-padded batch", "chat_template": True, "keep_threshold": args.keep,
               "prompt_template": "Context: {context}\\n\\nQuery: {query}", "load_average": os.getloadavg(),
               "tasks": rows, **({"pilots": old["pilots"]} if "pilots" in old else {})}
        path.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
