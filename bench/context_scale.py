"""Cost of attributing one answer to its context as the prompt grows: 256 to 8k tokens (SmolLM2's window).

For each length, a *prepare* child builds a context of cleaned SST-2 reviews (``normxlogit.data.context_suites``)
with one planted instruction in the middle ("When you are asked for the magic word, answer "..."") and the query
"What is the magic word?", in ContextCite's prompt template and SmolLM2's chat template, filled up to ``L - 8``
prompt tokens, and generates the answer greedily (8 tokens at most). Then each method attributes that same answer
(teacher-forced) to the context's sentences, each in its own process:

- ``forward``: the model's own forward pass over prompt + answer (logits kept only where the answer is predicted):
  the floor;
- ``normxlogit``: ``nx.explain_generation(..., continuation=answer, chat=True)`` (one forward pass; per-token
  scores, which sum to sentence scores at no cost);
- ``leave_one_out``: one forward pass per sentence with that sentence's tokens deleted (the deletion protocol),
  the answer's log-probability from each;
- ``captum_fa``: captum's ``LLMAttribution(FeatureAblation)`` over the sentences (``TextTemplateInput``, each
  sentence replaced by the empty string, captum's default baseline);
- ``captum_lig``: captum's ``LLMGradientAttribution(LayerIntegratedGradients)`` on the input embeddings, 50 steps
  (captum's default), ``internal_batch_size`` = max(1, 2048 // L) so that memory stays bounded;
- ``contextcite_32``, ``contextcite_64``: the ``context-cite`` package (``ContextCiter``) with 32 / 64 random
  ablations and a partitioner that hands it our sentences (its own splitter downloads NLTK data); the response is
  generated before the clock starts, so only the ablations and the Lasso fit are timed.

Time: wall and CPU time of the one call (for ``forward`` and ``normxlogit``: a warm-up call, then ``--repeats``
calls, the fastest kept),
on ``--threads`` torch threads (1: CPU time is then the fair measure on a shared machine); peak memory: the
child's peak resident set (``ru_maxrss`` read with ``os.wait4``; it includes the model, about 0.5 GB). A run past
``--timeout`` CPU seconds (600: ten minutes of one core; CPU rather than wall time, since wall time on a shared
machine depends on the load; a wall limit of ``--wall-factor`` times that is a safety net) is recorded with
``status: "timeout"``, a crash (out of memory included) with
``status: "failed"``; a method that did not finish at one length is not run at longer ones (``status: "skipped"``).
``uptime``'s load averages are recorded before and after, since the machine is shared.

    python bench/context_scale.py [--lengths 256 1024] [--methods normxlogit forward] [--json normxlogit/resources/context_scale_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from child import cpu_name, run_child  # bench/ is on sys.path when this script runs


ROOT = Path(__file__).resolve().parent.parent
# in the order they run: the cheap ones first
METHODS = ("forward", "normxlogit", "contextcite_32", "contextcite_64", "leave_one_out", "captum_fa", "captum_lig")
LENGTHS = (256, 1024, 2048, 4096, 8192)
ANSWER_TOKENS = 8
KEYWORD = "lighthouse"
QUERY = "What is the magic word?"
INSTRUCTION = f'When you are asked for the magic word, answer "{KEYWORD}".'


# --- the children ----------------------------------------------------------------------------------------------
def build_context(tok, length: int) -> dict:
    """Reviews (seeded order) with the instruction in the middle, as long as fits in ``length - ANSWER_TOKENS``."""
    import numpy as np

    from normxlogit.data.context_suites import PROMPT_TEMPLATE, sentence_pools
    from normxlogit.generation.prompts import prompt_ids

    pools = sentence_pools()
    reviews = [s for s in pools["negative"] + pools["positive"] if KEYWORD not in s.lower()]
    order = np.random.default_rng(0).permutation(len(reviews))
    budget = length - ANSWER_TOKENS

    def tokens(n: int) -> tuple[list[str], int]:
        picked = [reviews[order[i % len(reviews)]] for i in range(n)]  # cycles through the pool past its end
        sources = picked[: n // 2] + [INSTRUCTION] + picked[n // 2:]
        prompt = PROMPT_TEMPLATE.format(context=" ".join(sources), query=QUERY)
        return sources, len(prompt_ids(tok, prompt, chat=True))

    low, high = 1, 2
    while tokens(high)[1] <= budget:
        low, high = high, high * 2
    while high - low > 1:  # the most reviews that fit
        mid = (low + high) // 2
        low, high = (mid, high) if tokens(mid)[1] <= budget else (low, mid)
    sources, _ = tokens(low)
    context = " ".join(sources)
    return {"context": context, "sources": sources,
            "prompt": PROMPT_TEMPLATE.format(context=context, query=QUERY)}


def source_token_masks(tok, prompt: str, sources: list[str]):
    """The chat-formatted prompt's ids and a (S, P) bool mask of the tokens whose characters lie inside each source."""
    import torch

    text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = torch.tensor(enc["offset_mapping"])
    cursor, masks = text.index(prompt), []
    for source in sources:
        start = text.index(source, cursor)
        end = start + len(source)
        masks.append((offsets[:, 0] >= start) & (offsets[:, 1] <= end) & (offsets[:, 1] > offsets[:, 0]))
        cursor = end
    return enc["input_ids"], torch.stack(masks)


def answer_logprob(model, ids: list[int], answer: list[int]) -> float:
    """log p(answer | ids), teacher-forced, with the logits kept only where the answer is predicted."""
    import torch

    full = torch.tensor([ids + answer])
    logits = model(full, logits_to_keep=len(answer) + 1).logits[0, :-1].float()
    return float(logits.log_softmax(-1).gather(-1, torch.tensor(answer)[:, None]).sum())


def child(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    import normxlogit as nx
    from normxlogit.generation.prompts import greedy_continuation, prompt_ids

    model, tok = nx.load_model(args.model, task="causal-lm")
    model.eval()
    if args.case == "prepare":
        built = build_context(tok, args.length)
        ids = prompt_ids(tok, built["prompt"], chat=True)
        with torch.no_grad():
            answer = greedy_continuation(model, tok, torch.tensor([ids]), ANSWER_TOKENS)
        built.update(prompt_tokens=len(ids), answer_ids=answer, answer=tok.decode(answer))
        Path(args.prepared).write_text(json.dumps(built))
        return {"prompt_tokens": len(ids), "sources": len(built["sources"]), "answer": built["answer"]}

    prep = json.loads(Path(args.prepared).read_text())
    prompt, sources, answer = prep["prompt"], prep["sources"], prep["answer_ids"]
    ids = prompt_ids(tok, prompt, chat=True)
    with torch.no_grad():  # pages the memory-mapped weights in (the peak then holds the whole model)
        model(torch.tensor([ids[:64]]))
    repeats, extra = 1, {}
    method = args.case
    if method == "forward":
        def call():
            with torch.no_grad():
                return answer_logprob(model, ids, answer)
        repeats = args.repeats
    elif method == "normxlogit":
        def call():
            return nx.explain_generation(model, tok, prompt, continuation=answer, chat=True)
        repeats = args.repeats
    elif method == "leave_one_out":
        def call():
            chat_ids, masks = source_token_masks(tok, prompt, sources)
            assert chat_ids == ids, "the offsets tokenisation differs from prompt_ids"
            row = torch.tensor(chat_ids)
            with torch.no_grad():
                full = answer_logprob(model, chat_ids, answer)
                return [full - answer_logprob(model, row[~m].tolist(), answer) for m in masks]
    elif method in ("captum_fa", "captum_lig"):
        from captum.attr import (FeatureAblation, LayerIntegratedGradients, LLMAttribution, LLMGradientAttribution,
                                 TextTemplateInput, TextTokenInput)

        text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                       tokenize=False)
        target = torch.tensor(answer)
        if method == "captum_fa":
            # the chat text with each sentence as a "{}" slot (other braces escaped)
            pieces, cursor = [], 0
            for source in sources:
                start = text.index(source, cursor)
                pieces.append(text[cursor:start].replace("{", "{{").replace("}", "}}"))
                cursor = start + len(source)
            template = "{}".join(pieces + [text[cursor:].replace("{", "{{").replace("}", "}}")])
            inp = TextTemplateInput(template, values=list(sources))
            assert inp.to_model_input() == text
            attr = LLMAttribution(FeatureAblation(model), tok)

            def call():
                return attr.attribute(inp, target=target)
        else:
            inp = TextTokenInput(text, tok)
            attr = LLMGradientAttribution(LayerIntegratedGradients(model, model.get_input_embeddings()), tok)
            extra["internal_batch_size"] = max(1, 2048 // args.length)

            def call():
                return attr.attribute(inp, target=target, n_steps=50,
                                      internal_batch_size=extra["internal_batch_size"])
    elif method.startswith("contextcite_"):
        import numpy as np
        from context_cite import ContextCiter
        from context_cite.context_partitioner import BaseContextPartitioner

        class Sentences(BaseContextPartitioner):
            """Our sentences as ContextCite's sources (joined by one space, as in the prompt)."""

            def __init__(self, context: str, parts: list[str]) -> None:
                super().__init__(context)
                self.parts = list(parts)

            @property
            def num_sources(self) -> int:
                return len(self.parts)

            def split_context(self) -> None:
                pass

            def get_source(self, index: int) -> str:
                return self.parts[index]

            def get_context(self, mask=None) -> str:
                keep = np.ones(len(self.parts), bool) if mask is None else np.asarray(mask, bool)
                return " ".join(p for p, k in zip(self.parts, keep) if k)

        n = int(method.rsplit("_", 1)[1])
        cc = ContextCiter(model, tok, prep["context"], QUERY, num_ablations=n,
                          partitioner=Sentences(prep["context"], sources),
                          generate_kwargs={"max_new_tokens": len(answer), "do_sample": False})
        extra["response"] = cc.response  # generated before the clock starts
        extra["same_answer"] = cc._response_ids == answer  # noqa: SLF001 - only to report, never used

        def call():
            return cc.get_attributions(verbose=False)
    else:
        raise SystemExit(f"unknown case {method}")
    if method in ("forward", "normxlogit"):
        call()  # warm-up: the first pass at a new length pays one-time allocations (seconds at 2k tokens)
    walls, cpus = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        call()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu_start)
    return {"seconds": min(walls), "cpu_seconds": min(cpus), "all_seconds": walls, **extra}


# --- the parent ------------------------------------------------------------------------------------------------
def run_case(argv: list[str], cpu_limit: float, wall_limit: float) -> tuple[dict, float]:
    """Run this script with ``argv`` as a child (``bench/child.py``'s ``run_child``): killed past ``cpu_limit`` CPU seconds or
    ``wall_limit`` wall seconds (a safety net)."""
    return run_child(__file__, argv, wall_limit, cpu_limit=cpu_limit)


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"load average: {os.getloadavg()}"


def save(path: Path | None, records: list[dict], args: argparse.Namespace, load_before: str, load_after: str,
         *, show: bool) -> None:
    """Merge ``records`` into the JSON at ``path`` (replacing the file's records for the same method and length),
    with CPU-time ratios to the forward pass and to NormXLogit over every record; print the ratios if ``show``."""
    old = json.loads(path.read_text()) if path is not None and path.is_file() else {}
    mine_keys = {(r["method"], r["tokens"]) for r in records}
    merged = [r for r in old.get("records", []) if (r["method"], r["tokens"]) not in mine_keys] + records
    merged.sort(key=lambda r: (METHODS.index(r["method"]), r["tokens"]))
    table = {(r["method"], r["tokens"]): r for r in merged if r["status"] == "ok"}
    for (method, length), r in sorted(table.items(), key=lambda kv: (kv[0][1], METHODS.index(kv[0][0]))):
        floor, mine = table.get(("forward", length)), table.get(("normxlogit", length))
        parts = []
        if floor:
            r["x_forward"] = round(r["cpu_seconds"] / floor["cpu_seconds"], 2)
            parts.append(f"{r['x_forward']:8.1f}x forward")
        if mine and method != "normxlogit":
            r["x_normxlogit"] = round(r["cpu_seconds"] / mine["cpu_seconds"], 2)
            parts.append(f"{r['x_normxlogit']:8.1f}x normxlogit")
        if show:
            print(f"L={length:<5} {method:<15} CPU time " + ", ".join(parts))
    if path is not None:
        run = {"lengths": sorted(args.lengths), "methods": args.methods, "uptime_before": load_before,
               "uptime_after": load_after, "timeout_cpu_s": args.timeout,
               "timeout_wall_s": args.timeout * args.wall_factor, "threads": args.threads, "pid": os.getpid()}
        runs = [r for r in old.get("runs", []) if r.get("pid") != os.getpid() or r.get("uptime_before") != load_before]
        out = {"model": args.model, "answer_tokens_max": ANSWER_TOKENS, "cpu": cpu_name(),
               "measure": "cpu_seconds on one torch thread (wall seconds depend on the shared machine's load)",
               "runs": runs + [run], "records": merged}
        path.write_text(json.dumps(out, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    parser.add_argument("--lengths", nargs="*", type=int, default=list(LENGTHS))
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600,
                        help="CPU seconds per run (the whole child, model loading included); recorded as a timeout")
    parser.add_argument("--wall-factor", type=float, default=4.0,
                        help="a run is also stopped after timeout x this many seconds of wall time")
    parser.add_argument("--json", help="write the records here (merged with the file's records for other runs)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--prepared", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        sys.path.insert(0, str(ROOT))
        print(json.dumps(child(args)))
        return

    bad = [n for n in args.lengths if not 64 < n <= 8192]
    if bad:
        parser.error(f"lengths must lie in (64, 8192] (SmolLM2's window), got {bad}")
    common = ["--model", args.model, "--threads", str(args.threads), "--repeats", str(args.repeats)]
    load_before = uptime()
    records, stopped = [], {}
    tmp = tempfile.mkdtemp(prefix="context_scale_")
    for length in sorted(args.lengths):
        prepared = str(Path(tmp) / f"prepared_{length}.json")
        info, _ = run_case(common + ["--case", "prepare", "--length", str(length), "--prepared", prepared],
                           args.timeout, args.timeout * args.wall_factor)
        print(f"L={length}: prompt {info['prompt_tokens']} tokens, {info['sources']} sentences, "
              f"answer {info['answer']!r}", flush=True)
        for method in args.methods:
            rec = {"method": method, "tokens": length, "prompt_tokens": info["prompt_tokens"],
                   "sources": info["sources"], "answer": info["answer"], "threads": args.threads}
            if method in stopped:
                rec.update(status="skipped", note=f"did not finish at {stopped[method]} tokens", seconds=None,
                           cpu_seconds=None, peak_mb=None)
            else:
                argv = common + ["--case", method, "--length", str(length), "--prepared", prepared]
                try:
                    result, peak = run_case(argv, args.timeout, args.timeout * args.wall_factor)
                    rec.update(status="ok", seconds=round(result.pop("seconds"), 4),
                               cpu_seconds=round(result.pop("cpu_seconds"), 4), peak_mb=round(peak, 1), **result)
                except TimeoutError as err:
                    rec.update(status="timeout", note=str(err), seconds=None,
                               cpu_seconds=None, peak_mb=None)
                    stopped[method] = length
                except RuntimeError as err:
                    rec.update(status="failed", note=str(err)[-400:], seconds=None, cpu_seconds=None, peak_mb=None)
                    stopped[method] = length
            rec["uptime"] = uptime()
            records.append(rec)
            # saved after every run, so that a stopped benchmark keeps what it measured
            save(Path(args.json) if args.json else None, records, args, load_before, "(running)", show=False)
            shown = (f"{rec['seconds']:9.2f} s wall {rec['cpu_seconds']:9.2f} s CPU  peak {rec['peak_mb']:6.0f} MB"
                     if rec["status"] == "ok" else rec["status"])
            print(f"  {method:<15} {shown}", flush=True)
    load_after = uptime()

    save(Path(args.json) if args.json else None, records, args, load_before, load_after, show=True)
    print(f"load: before {load_before}\n      after  {load_after}")



if __name__ == "__main__":
    main()
