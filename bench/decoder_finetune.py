"""How to fine-tune SmolLM2-135M-Instruct as an SST-2 classifier on a CPU: full fine-tuning, LoRA, or the top layers.

Trains each variant on the same seeded subset of SST-2's training phrases (same length-grouped batches, same seed)
and scores it on a seeded subset of the validation split; prints the accuracy, the CPU seconds per training example
(summed over threads) and the wall time. The figures chose the ``sst2-smollm2`` recipe (see training/zoo.py).

    python bench/decoder_finetune.py --train 1200 --eval 300 --threads 2 [--variants full,lora,top8,head]
    python bench/decoder_finetune.py --budget 240 --eval 872   # equal CPU budget: each variant gets
                                                                # budget / (its CPU s per example) phrases
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from transformers import set_seed

from normxlogit.data.benchmarks import load_sst2
from normxlogit.training.decoder import (
    DECODER_BASE,
    apply_trainable,
    merge_lora,
    prepare_decoder_tokenizer,
)
from normxlogit.models import load_model
from normxlogit.training.loop import epoch_batches, train_loop


#: CPU seconds per training example measured by this script with --eval 0 (1 thread, SST-2 phrases, batches of 16).
COST_PER_EXAMPLE = {"head": 0.040, "top8": 0.083, "lora": 0.134, "full": 0.258}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=1200)
    parser.add_argument("--eval", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--variants", default="full,lora,top8,head")
    parser.add_argument("--out", type=Path, default=None, help="write the records as JSON here")
    parser.add_argument("--budget", type=float, default=None,
                        help="CPU seconds of training per variant: the phrase count follows from COST_PER_EXAMPLE")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    records = []
    pool = load_sst2("train").shuffle(seed=0)
    val = load_sst2("validation").shuffle(seed=0).select(range(min(args.eval, 872)))  # --eval 0: cost only
    lrs = {"full": 3e-5, "lora": 5e-4, "head": 1e-3}
    for variant in args.variants.split(","):
        n = args.train if args.budget is None else round(args.budget / COST_PER_EXAMPLE[variant])
        train = pool.select(range(n))  # the same phrases first for every variant
        set_seed(0)
        model, tok = load_model(DECODER_BASE, "classification", 2)
        prepare_decoder_tokenizer(model, tok)
        model = apply_trainable(model, variant)
        lr = lrs.get(variant, 1e-4)  # topK
        texts, labels = list(train["sentence"]), torch.tensor(list(train["label"]))
        lengths = np.array([len(i) for i in tok(texts)["input_ids"]])
        steps = len(texts) // args.batch
        batches = epoch_batches(lengths, args.batch, steps, 0)

        def loss_of(index):
            batch = tok([texts[i] for i in index], padding=True, return_tensors="pt")
            return model(**batch, labels=labels[index]).loss

        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        wall, cpu = time.perf_counter(), time.process_time()
        train_loop(model, batches, loss_of, steps=steps, lr=lr, weight_decay=0.01, warmup_steps=round(0.1 * steps),
                   desc=variant)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        model = merge_lora(model).eval()
        record = {"variant": variant, "lr": lr, "trainable_parameters": trainable, "train_examples": n,
                  "cpu_seconds": round(cpu, 1), "wall_seconds": round(wall, 1)}
        accuracy = ""
        if len(val):  # --eval 0: cost only
            with torch.inference_mode():
                correct = 0
                for i in range(0, len(val), 64):
                    rows = val[i : i + 64]
                    logits = model(**tok(list(rows["sentence"]), padding=True, return_tensors="pt")).logits
                    correct += int((logits.argmax(-1) == torch.tensor(list(rows["label"]))).sum())
            record.update(accuracy=correct / len(val), eval_examples=len(val))
            accuracy = f"accuracy={correct / len(val):.3f} (n={len(val)})  "
        print(f"{variant:6s} lr={lr:.0e} trainable={trainable / 1e6:6.2f}M  train={n} {accuracy}"
              f"cpu/example={cpu / n:.3f}s  wall={wall:.0f}s", flush=True)
        records.append(record)
    if args.out is not None:
        args.out.write_text(json.dumps({"budget_cpu_seconds": args.budget, "threads": args.threads,
                                        "cost_per_example_assumed": COST_PER_EXAMPLE, "records": records},
                                       indent=1) + "\n")


if __name__ == "__main__":
    main()
