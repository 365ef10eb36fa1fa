"""NormXLogit's cost against a plain forward pass and against a per-token loop of the authors' kind.

Prints, on SST-2 validation sentences with the fine-tuned SST-2 MiniLM:
- NormXLogit time / plain forward time over the same length-sorted batches (target: at most 1.2);
- speed-up over a per-token loop like the authors' code: one example at a time, the head called on each token's
  vector in turn (target: at least 10x).

    python bench/speed.py [--n 512] [--batch-size 32] [--repeats 5] [--model sst2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import normxlogit as nx
from normxlogit.data import load_sst2
from normxlogit.core.inputs import collate, length_batches, model_inputs, tokenize
from normxlogit.training import pretrained


def timed(fn, repeats: int) -> float:
    """Median wall time of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--loop-examples", type=int, default=128, help="examples timed for the slow loop")
    parser.add_argument("--model", default="sst2")
    args = parser.parse_args()

    model, tok = pretrained(args.model)
    texts = load_sst2("validation")["sentence"][: args.n]
    rows = tokenize(tok, texts, 512)
    batches = [collate(tok, [rows[i] for i in idx], torch.device("cpu"))[0]
               for idx in length_batches([len(r["input_ids"]) for r in rows], batch_size=args.batch_size)]

    @torch.no_grad()
    def plain_forward() -> None:
        for inputs in batches:
            model(**model_inputs(model, inputs))

    def normxlogit() -> None:
        nx.explain(model, tok, texts, method="normxlogit", batch_size=args.batch_size)

    head = nx.resolve_head(model)

    @torch.no_grad()
    def authors_loop() -> None:
        # The authors' kind: one example per forward pass, then the head on one token's vector at a time.
        for text in texts[: args.loop_examples]:
            enc = model_inputs(model, tok(text, return_tensors="pt"))
            out = model(**enc, output_hidden_states=True)
            pred = int(out.logits.argmax(-1))
            emb, last = out.hidden_states[0][0], out.hidden_states[-1][0]
            [float(emb[i].norm() * head(last[i : i + 1])[0, pred]) for i in range(last.shape[0])]

    t_plain = timed(plain_forward, args.repeats)
    t_nx = timed(normxlogit, args.repeats)
    t_loop = timed(authors_loop, max(1, args.repeats // 2)) * len(texts) / min(args.loop_examples, len(texts))
    print(f"threads={torch.get_num_threads()}  sentences={len(texts)}  batch_size={args.batch_size}")
    print(f"plain forward (same batches)      {t_plain:8.3f} s   {1000 * t_plain / len(texts):6.2f} ms/sentence")
    print(f"normxlogit (nx.explain, all steps) {t_nx:8.3f} s   {1000 * t_nx / len(texts):6.2f} ms/sentence")
    print(f"per-token loop (authors' kind)     {t_loop:8.3f} s   {1000 * t_loop / len(texts):6.2f} ms/sentence"
          f"  (extrapolated from {min(args.loop_examples, len(texts))})")
    print(f"ratio normxlogit / plain forward:   {t_nx / t_plain:.2f}   (target <= 1.2)")
    print(f"speed-up over the per-token loop:   {t_loop / t_nx:.1f}x  (target >= 10x)")


if __name__ == "__main__":
    main()
