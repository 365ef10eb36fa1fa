"""The cost of NormXLogit on an LLM-shaped model against plain inference: time and peak memory.

A Llama-shaped decoder built from a config (8 layers, hidden 512, 8 heads, intermediate 1,376, a 128,000-token
vocabulary like Llama-3's, untied input and output embeddings, random weights, float32, about 156 M parameters of
which 131 M are the two embedding tables) reads one 2,048-token input (random ids). Two cases, each in its own
process on ``--threads`` threads (default 1):

- ``inference``: ``model(input_ids, logits_to_keep=1)`` under ``torch.no_grad()``: what a plain next-token call costs;
- ``normxlogit``: ``normxlogit.core.explain.attribute(model, tok, encoded, "normxlogit")`` on the same ids (the
  ``nx.explain`` path after tokenisation; ``encoded`` is an ``Encoded`` built from the ids, ``tok`` a minimal
  ``PreTrainedTokenizerFast`` with a 128,000-entry word-level vocabulary that both cases build, so it is in both
  baselines). It explains the predicted next token at the last position.

Time: the fastest of ``--repeats`` calls after one warm-up call (wall clock). Memory: the child's peak resident set
(``ru_maxrss`` of the child, from ``os.wait4``); both children import normxlogit and build the model and tokenizer
before the first call, and the growth of the peak over that point is printed too. The children run with a fixed
glibc mmap threshold (``MALLOC_MMAP_THRESHOLD_=131072``), so that large tensors are returned to the system when
freed and the peak follows the memory actually in use. Targets: both ratios (normxlogit / inference) at most 1.1.

    python bench/llm_cost.py [--tokens 2048] [--threads 1] [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from child import run_child
CASES = ("inference", "normxlogit")
VOCAB = 128_000


def _maxrss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _model_and_tokenizer(tokens: int):
    import torch
    import transformers as tf
    from tokenizers import Tokenizer, models

    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=VOCAB, hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                            num_key_value_heads=8, intermediate_size=1376, max_position_embeddings=max(4096, tokens),
                            tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = tf.LlamaForCausalLM(config).float().eval()
    vocab = {f"t{i}": i for i in range(VOCAB)}
    tok = tf.PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t3")),
                                     pad_token="t0", bos_token="t1", eos_token="t2", unk_token="t3")
    return model, tok


def child(args: argparse.Namespace) -> dict:
    """Run one case in this process and return its measurements."""
    import torch

    torch.set_num_threads(args.threads)
    from normxlogit.core.explain import attribute  # imported in both cases, so that both baselines hold the library
    from normxlogit.core.inputs import Encoded

    model, tok = _model_and_tokenizer(args.tokens)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(4, VOCAB, (1, args.tokens), generator=generator)
    rss_built = _maxrss_mb()
    if args.case == "inference":
        def call():
            with torch.no_grad():
                return model(ids, logits_to_keep=1).logits
    else:
        row = {"input_ids": ids[0].tolist(), "attention_mask": [1] * args.tokens,
               "special_tokens_mask": [0] * args.tokens}
        encoded = Encoded(items=["<ids>"], rows=[row], single=True, max_length=args.tokens)

        def call():
            return attribute(model, tok, encoded, "normxlogit")

    out = call()  # warm-up
    walls, cpus = [], []
    for _ in range(args.repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        out = call()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu_start)
    if args.case == "inference":
        prediction = int(out[0, -1].argmax())
    else:
        prediction = int(out[0].prediction)
    return {"case": args.case, "seconds": min(walls), "cpu_seconds": min(cpus), "all_seconds": walls,
            "prediction": prediction, "rss_after_build_mb": round(rss_built, 1), "threads": args.threads,
            "parameters": sum(p.numel() for p in model.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(child(args)))
        return

    common = ["--tokens", str(args.tokens), "--threads", str(args.threads), "--repeats", str(args.repeats)]
    results = {}
    for case in CASES:
        result, peak = run_child(__file__, common + ["--case", case], args.timeout, fixed_mmap=True)
        result["peak_rss_mb"] = round(peak, 1)
        result["peak_growth_mb"] = round(peak - result["rss_after_build_mb"], 1)
        results[case] = result
        print(f"{case:<10} {result['seconds']:8.3f} s wall  {result['cpu_seconds']:8.3f} s CPU  peak RSS "
              f"{peak:6.0f} MB ({result['peak_growth_mb']:+.0f} MB over the built model)  "
              f"predicted token {result['prediction']}", flush=True)
    mine, plain = results["normxlogit"], results["inference"]
    if mine["prediction"] != plain["prediction"]:
        raise SystemExit("the two cases predict different tokens: they did not run the same input")
    ratios = {"time": mine["seconds"] / plain["seconds"], "cpu_time": mine["cpu_seconds"] / plain["cpu_seconds"],
              "peak_rss": mine["peak_rss_mb"] / plain["peak_rss_mb"],
              "peak_growth": mine["peak_growth_mb"] / max(plain["peak_growth_mb"], 1.0)}
    print(f"normxlogit / inference at {args.tokens} tokens, {mine['parameters'] / 1e6:.0f} M parameters: "
          f"time {ratios['time']:.3f}x (CPU {ratios['cpu_time']:.3f}x), peak RSS {ratios['peak_rss']:.3f}x "
          f"(growth over the built model {ratios['peak_growth']:.2f}x); target <= 1.1x both")
    print(f"threads={args.threads}  load average {os.getloadavg()[0]:.2f} (the machine may be shared)")
    if args.json:
        summary = {"tokens": args.tokens, "threads": args.threads, "load_average": os.getloadavg(),
                   "ratios": {k: round(v, 4) for k, v in ratios.items()}, "results": results}
        Path(args.json).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
