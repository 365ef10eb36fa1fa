"""The paper's reported figures (Abbasi et al. 2025), and tables that set ours beside them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

from ..evaluation.results import METRICS, FaithfulnessResult

#: The paper's comprehensiveness AOPC (confidence drop; STS-B: "Comp_Acc", a Pearson-type score, lower is better)
#: per dataset, method and model (Abbasi et al. 2025, Table 2; DecompX was run on BERT only).
PAPER_COMPREHENSIVENESS: dict[str, dict[str, dict[str, float]]] = {
    "sst2": {
        "random": {"llama2": .256, "deberta": .266, "bert": .245},
        "gradient_norm": {"llama2": .216, "deberta": .320, "bert": .331},
        "grad_x_input": {"llama2": .236, "deberta": .345, "bert": .339},
        "integrated_gradients": {"llama2": .220, "deberta": .346, "bert": .367},
        "decompx": {"bert": .574},
        "norm": {"llama2": .299, "deberta": .360, "bert": .311},
        "logat": {"llama2": .341, "deberta": .377, "bert": .364},
        "normxlogit": {"llama2": .341, "deberta": .386, "bert": .423},
    },
    "stsb": {
        "random": {"llama2": .283, "deberta": .430, "bert": .457},
        "gradient_norm": {"llama2": .351, "deberta": .338, "bert": .374},
        "grad_x_input": {"llama2": .255, "deberta": .214, "bert": .358},
        "integrated_gradients": {"llama2": .237, "deberta": .227, "bert": .370},
        "decompx": {"bert": .336},
        "norm": {"llama2": .251, "deberta": .199, "bert": .321},
        "logat": {"llama2": .167, "deberta": .423, "bert": .313},
        "normxlogit": {"llama2": .233, "deberta": .320, "bert": .281},
    },
}


def ranks(values: pd.Series, higher_is_better: bool, decimals: int = 3) -> pd.Series:
    """1 = best; values equal to ``decimals`` places share the best rank of their group (ties as ties).

    The paper prints three decimals, so two methods it shows as equal are tied, and a tie for first place gives two
    1s (pandas' ``method="min"``), not two 1.5s that print as 2 and leave the column without a first. NaN stays NaN.
    """
    return values.round(decimals).rank(ascending=not higher_is_better, method="min")


def paper_comparison(results: Sequence[FaithfulnessResult], dataset: Literal["sst2", "stsb"]) -> pd.DataFrame:
    """Our comprehensiveness AOPC per method and protocol beside the paper's BERT, DeBERTa and LLaMA-2 figures.

    SST-2 compares the confidence drop (higher is better); STS-B the Pearson r of the perturbed predictions with gold
    (the paper's "Comp_Acc", lower is better). Only the methods of the paper's table are kept (leave-one-out, the
    signed gradient variants and any other method are left out), so that our ranks and the paper's rank the same
    methods. Rank columns rank the methods within each column (1 = best; :func:`ranks`: ties as ties).
    """
    if dataset not in PAPER_COMPREHENSIVENESS:
        raise ValueError(f"dataset must be one of {', '.join(PAPER_COMPREHENSIVENESS)}, not {dataset!r}.")
    metric = "comprehensiveness_cd" if dataset == "sst2" else "comprehensiveness_pearson"
    higher = METRICS[metric].higher_is_better
    table: dict[str, dict[str, float]] = {}
    paper = PAPER_COMPREHENSIVENESS[dataset]
    for r in results:
        if r.method not in paper:
            continue
        table.setdefault(r.method, {})[f"ours ({r.protocol})"] = r.aopc[metric]
    if not table:
        raise ValueError(f"none of the methods is in the paper's table ({', '.join(paper)}).")
    frame = pd.DataFrame(table).T
    for model in ("bert", "deberta", "llama2"):
        frame[f"paper {model}"] = [paper[m].get(model, np.nan) for m in frame.index]
    ranked = frame.apply(lambda column: ranks(column, higher)).add_suffix(" rank")
    frame.index.name = "method"
    return frame.join(ranked)


#: Mean AP by layer 1..12 for fine-tuned RoBERTa-base (DESIGN.md section 5; random is about .29 at every layer).
PAPER_ROBERTA_AP: dict[str, list[float]] = {
    "normxlogit": [.36, .31, .35, .36, .35, .38, .35, .36, .36, .35, .36, .33],
    "logat": [.35, .31, .35, .36, .35, .38, .36, .36, .36, .35, .36, .35],
    "value_zeroing": [.33, .35, .37, .26, .31, .34, .30, .31, .38, .29, .36, .22],
    "norm": [.17, .17, .17, .17, .17, .19, .19, .21, .21, .20, .17, .32],
    "random": [.29] * 12,
}


def paper_reference(num_layers: int) -> pd.DataFrame:
    """The paper's 12-layer AP aligned to a model of ``num_layers`` layers by relative depth.

    Our layer ``l`` covers the paper's layers ``(l-1)*12/L + 1 .. l*12/L`` (for L = 6: layers 2l-1 and 2l), and the
    table gives their mean. Columns: method, layer, paper_AP, paper_layers.
    """
    if not 1 <= num_layers <= 12 or 12 % num_layers:
        raise ValueError(f"num_layers must divide 12 (1, 2, 3, 4, 6 or 12), got {num_layers}.")
    step = 12 // num_layers
    rows = [
        {"method": method, "layer": l, "paper_AP": float(np.mean(values[(l - 1) * step : l * step])),
         "paper_layers": f"{(l - 1) * step + 1}-{l * step}" if step > 1 else str(l)}
        for method, values in PAPER_ROBERTA_AP.items()
        for l in range(1, num_layers + 1)
    ]
    return pd.DataFrame(rows)
