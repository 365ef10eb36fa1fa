"""Attributing a generation with SmolLM2: nx.explain_generation against captum's LLM attribution.

On SmolLM2-135M-Instruct (offline: ../shared/models, converted once and cached), the model first generates
``--new-tokens`` tokens greedily after a plain ~18-token prompt; then, for that same prompt and continuation
(teacher-forced), each case attributes every generated token:

- ``normxlogit``: ``nx.explain_generation(..., continuation=ids)``: one forward pass (every generated token against
  the prompt and the earlier generated tokens);
- ``captum_lig``: captum's ``LLMGradientAttribution(LayerIntegratedGradients(model, embed_tokens))``, 50 steps, one
  integrated-gradients run per generated token (attributes to the prompt tokens only);
- ``captum_fa``: captum's ``LLMAttribution(FeatureAblation(model))`` with its defaults (each prompt token replaced
  by the baseline id 0, the continuation re-scored token by token with the KV cache).

Each case runs in its own process; its peak memory is that process's peak resident set (``ru_maxrss`` of the
child, read with ``os.wait4``; it includes the model, about 0.5 GB in float32, so the growth over the process's
peak after loading the model and running one plain forward pass is printed too). Time: the fastest of ``--repeats`` calls after a warm-up for NormXLogit, one call for the
captum cases (each takes minutes); wall and CPU time are both recorded, since the machine may be shared.

    python bench/generation_speed.py [--new-tokens 16] [--threads 1] [--repeats 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from child import cpu_name, run_child
PROMPT = "Every night, the old lighthouse keeper climbed the long stairs to light the great lamp, because"  # 18 tokens
CASES = ("normxlogit", "captum_lig", "captum_fa")


def _maxrss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def child(args: argparse.Namespace) -> dict:
    """Run one case in this process and return its measurements."""
    import torch

    torch.set_num_threads(args.threads)
    import normxlogit as nx

    model, tok = nx.load_model(args.model, task="causal-lm")
    prompt_ids = tok(PROMPT)["input_ids"]
    if args.case == "prepare":
        r = nx.explain_generation(model, tok, PROMPT, max_new_tokens=args.new_tokens)
        if len(r) != args.new_tokens:
            raise SystemExit(f"the model stopped after {len(r)} tokens; choose another prompt")
        return {"prompt_ids": prompt_ids, "continuation_ids": r.generated_ids, "continuation": r.generated_text}
    continuation = json.loads(args.continuation_ids)
    target = torch.tensor(continuation)
    with torch.no_grad():  # pages the memory-mapped weights in, so that the baseline below holds the whole model
        model(torch.tensor([prompt_ids + continuation]))
    rss_loaded = _maxrss_mb()

    if args.case == "normxlogit":
        def call():
            return nx.explain_generation(model, tok, PROMPT, continuation=continuation, method="normxlogit")

        call()  # warm-up
        repeats = args.repeats
    else:
        from captum.attr import (FeatureAblation, LayerIntegratedGradients, LLMAttribution, LLMGradientAttribution,
                                 TextTokenInput)

        inp = TextTokenInput(PROMPT, tok)
        assert inp.inp_tensor[0].tolist() == prompt_ids, "captum tokenises the prompt differently"
        if args.case == "captum_lig":
            attr = LLMGradientAttribution(LayerIntegratedGradients(model, model.get_input_embeddings()), tok)

            def call():
                return attr.attribute(inp, target=target, n_steps=50)
        else:
            attr = LLMAttribution(FeatureAblation(model), tok)

            def call():
                return attr.attribute(inp, target=target)
        repeats = 1
    walls, cpus = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        out = call()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu_start)
    shape = list(out.scores.shape) if args.case == "normxlogit" else list(out.token_attr.shape)
    return {"case": args.case, "seconds": min(walls), "cpu_seconds": min(cpus), "all_seconds": walls,
            "scores_shape": shape, "rss_after_load_mb": round(rss_loaded, 1), "threads": args.threads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=CASES)
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--continuation-ids", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(child(args)))
        return

    common = ["--model", args.model, "--new-tokens", str(args.new_tokens), "--threads", str(args.threads),
              "--repeats", str(args.repeats)]
    prepared, _ = run_child(__file__, common + ["--case", "prepare"], args.timeout)
    print(f"prompt ({len(prepared['prompt_ids'])} tokens): {PROMPT!r}")
    print(f"continuation ({len(prepared['continuation_ids'])} tokens, greedy): {prepared['continuation']!r}")
    results = {}
    for case in args.cases:
        continuation = json.dumps(prepared["continuation_ids"])
        result, peak = run_child(__file__, common + ["--case", case, "--continuation-ids", continuation], args.timeout)
        result["peak_rss_mb"] = round(peak, 1)
        result["peak_growth_after_load_mb"] = round(peak - result["rss_after_load_mb"], 1)
        results[case] = result
        print(f"{case:<11} {result['seconds']:9.3f} s wall  {result['cpu_seconds']:9.3f} s CPU  "
              f"peak RSS {peak:7.0f} MB ({result['peak_growth_after_load_mb']:+.0f} MB over model + one forward)  "
              f"scores {result['scores_shape']}", flush=True)
    summary = {"threads": args.threads, "load_average": os.getloadavg(), "cpu": cpu_name(), "results": results, "prompt": PROMPT, "continuation": prepared["continuation"]}
    if "normxlogit" in results:
        mine = results["normxlogit"]
        for case in ("captum_lig", "captum_fa"):
            if case in results:
                wall = results[case]["seconds"] / mine["seconds"]
                cpu = results[case]["cpu_seconds"] / mine["cpu_seconds"]
                summary[f"speedup_vs_{case}"] = {"wall": round(wall, 1), "cpu": round(cpu, 1)}
                print(f"speed-up of normxlogit over {case}: {wall:.0f}x wall, {cpu:.0f}x CPU time (target >= 100x)")
    print(f"threads={args.threads}  load average {os.getloadavg()[0]:.2f} (the machine may be shared)")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
