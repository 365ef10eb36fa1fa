"""One generation attribution through inseq and captum against the same call in nx (SmolLM2-135M-Instruct).

    python bench/integrations_speed.py [--repeats 5] [--new-tokens 16]

Each call generates greedily (``--new-tokens``) and attributes the generation: ``nx.explain_generation``, inseq
(``inseq.load_model(model, "normxlogit")``, ``generation_args=``) and captum (``NormXLogitLLMAttribution``,
``gen_args=``); they generate the same tokens. Then the same three teacher-forced on those tokens (attribution alone:
``continuation=``, ``generated_texts=``, ``target=``), and, for scale, inseq's own ``saliency`` (a gradient per
generated token) on the same generation. Prints the median CPU time (``time.process_time``, torch on 1 thread) and wall time of
each over ``--repeats`` runs after one warm-up, and the largest absolute difference of their generated x source
scores from nx's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import normxlogit as nx  # noqa: E402

PROMPT = "The sky looks blue during the day because"


def timed(fn, repeats: int) -> tuple[float, float, object]:
    fn()  # warm-up
    cpu, wall, out = [], [], None
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        out = fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return statistics.median(cpu), statistics.median(wall), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import inseq
    from captum.attr import TextTokenInput

    import normxlogit.integrations.inseq as nxi
    from normxlogit.integrations.captum import NormXLogitLLMAttribution

    model, tok = nx.load_model("HuggingFaceTB/SmolLM2-135M-Instruct", task="causal-lm")
    ref = nx.explain_generation(model, tok, PROMPT, max_new_tokens=args.new_tokens)
    new = {"max_new_tokens": args.new_tokens}
    wrapped = inseq.load_model(model, "normxlogit", tokenizer=tok)
    captum_attr = NormXLogitLLMAttribution(model, tok)
    inp = TextTokenInput(PROMPT, tok)
    runs = {
        "nx.explain_generation": lambda: nx.explain_generation(model, tok, PROMPT, **new),
        "inseq (normxlogit)": lambda: wrapped.attribute(PROMPT, generation_args={**new, "do_sample": False},
                                                        show_progress=False),
        "captum NormXLogitLLMAttribution": lambda: captum_attr.attribute(inp, gen_args=new),
    }
    text = tok.decode(ref.source_ids)
    saliency = inseq.load_model(model, "saliency", tokenizer=tok)
    runs.update({
        "nx.explain_generation (forced)": lambda: nx.explain_generation(model, tok, PROMPT,
                                                                        continuation=ref.generated_ids),
        "inseq (normxlogit, forced)": lambda: wrapped.attribute(PROMPT, generated_texts=text, show_progress=False),
        "captum NormXLogit... (forced)": lambda: captum_attr.attribute(inp, target=torch.tensor(ref.generated_ids)),
        "inseq saliency (forced)": lambda: saliency.attribute(PROMPT, generated_texts=text, show_progress=False),
    })
    rows = {}
    for name, fn in runs.items():
        cpu, wall, out = timed(fn, args.repeats)
        if name.startswith("inseq saliency"):
            diff = float("nan")  # another method: timed for scale only
        elif name.startswith("inseq"):
            ids, _, scores = nxi.inseq_scores(out)
            assert ids == ref.source_ids, "inseq generated other tokens"
            diff = float(np.nanmax(np.abs(scores.numpy() - ref.scores)))
        elif name.startswith("captum"):
            diff = float(np.abs(out.token_attr.numpy() - ref.scores[:, : ref.prompt_length]).max())
        else:
            diff = float(np.nanmax(np.abs(out.scores - ref.scores)))
        rows[name] = {"cpu_s": round(cpu, 4), "wall_s": round(wall, 4), "max_abs_diff": diff}
    base = rows["nx.explain_generation"]["cpu_s"]
    print(f"SmolLM2-135M-Instruct, {ref.prompt_length} prompt + {len(ref)} generated tokens (greedy, generation included), "
          f"1 thread, median of {args.repeats}; load {os.getloadavg()[0]:.1f}")
    for name, r in rows.items():
        print(f"  {name:34s} cpu {r['cpu_s']:.3f} s ({r['cpu_s'] / base:.2f}x)  wall {r['wall_s']:.3f} s  "
              f"max |diff| {r['max_abs_diff']:.2e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"prompt": PROMPT, "new_tokens": len(ref), "repeats": args.repeats,
                       "load": os.getloadavg()[0], "runs": rows}, f, indent=2)


if __name__ == "__main__":
    main()
