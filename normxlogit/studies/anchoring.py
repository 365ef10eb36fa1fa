"""Chapter 5: the sign of LogAt that a masked-LM head fine-tuned on minimal pairs leaves free.

The BLiMP recipe trains the MLM head with a cross-entropy over two logits, the target's and the foil's, so only
their difference is anchored: adding a constant ``c`` to every logit changes neither the loss nor a ranking by LogAt.
NormXLogit is not invariant to it: ``n_i * (LogAt_i + c) = NormXLogit_i + c * n_i`` (``n_i`` the input-embedding
norm). Where LogAt is negative a *smaller* norm scores higher, and as ``c`` grows the ranking tends to the norm's, as
``c`` falls to the reverse of it. These functions measure how much of the chapter's claim rests on that level.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..evaluation.alignment import LayerwiseScores, average_precision


def input_norms(scores: LayerwiseScores) -> np.ndarray:
    """``||h_i^0||`` per (example, token), (N, T): NormXLogit / LogAt, the median over layers (the norm does not
    depend on the layer; the median ignores layers where LogAt is too close to 0 to divide by). NaN past the end."""
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = scores.scores["normxlogit"] / scores.scores["logat"]
    ratio = np.where(np.abs(scores.scores["logat"]) > 1e-4, ratio, np.nan)
    with warnings.catch_warnings():  # past a sentence's end every layer is NaN, and so is the norm
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(ratio, axis=1)


def _ranked(scores: LayerwiseScores) -> np.ndarray:
    """(N, T): tokens in the ranking (not excluded, inside the sentence)."""
    inside = np.isfinite(scores.scores["logat"][:, 0])
    return inside & ~scores.exclude_mask


def negative_logat(scores: LayerwiseScores) -> pd.DataFrame:
    """Per layer: the share of ranked tokens with LogAt(target) < 0, the share of pairs whose cue has LogAt < 0, and
    the share of pairs where every ranked token's LogAt is negative."""
    logat, ranked = scores.scores["logat"], _ranked(scores)
    cue = scores.cue_mask & ranked
    rows = []
    for k, layer in enumerate(scores.layers):
        negative = (logat[:, k] < 0) & ranked
        has_cue = cue.any(1)
        rows.append({
            "layer": layer,
            "ranked tokens with LogAt < 0": negative.sum() / ranked.sum(),
            "pairs whose cue has LogAt < 0": ((negative & cue).any(1) & has_cue).sum() / has_cue.sum(),
            "pairs with every LogAt < 0": (negative.sum(1) == ranked.sum(1)).mean(),
        })
    return pd.DataFrame(rows).set_index("layer")


def ap_by_cue_sign(scores: LayerwiseScores, methods: Sequence[str] = ("logat", "normxlogit")) -> pd.DataFrame:
    """Mean AP of ``methods`` per layer, split by the sign of the cue's LogAt (a pair whose cues have both signs
    counts by its first cue), with the number of pairs in each group."""
    ranked, cue = _ranked(scores), scores.cue_mask & _ranked(scores)
    first_cue = np.argmax(cue, axis=1)
    has_cue = cue.any(1)
    rows = []
    for k, layer in enumerate(scores.layers):
        sign = np.where(scores.scores["logat"][np.arange(len(first_cue)), k, first_cue] < 0, "cue LogAt < 0",
                        "cue LogAt ≥ 0")
        for method in methods:
            ap = average_precision(scores.scores[method][:, k], scores.cue_mask, ~ranked)
            frame = pd.DataFrame({"sign": sign[has_cue], "AP": ap[has_cue]})
            for group, g in frame.groupby("sign"):
                rows.append({"layer": layer, "method": method, "sign": group, "pairs": len(g), "AP": g.AP.mean()})
    return pd.DataFrame(rows)


def shifted_normxlogit_ap(scores: LayerwiseScores, shifts: Sequence[float]) -> pd.DataFrame:
    """Mean AP per layer of ``n_i * (LogAt_i + c)`` for each shift ``c`` (logit units), beside LogAt's (which no
    shift changes). ``c = 0`` is NormXLogit itself."""
    norms, ranked = input_norms(scores), _ranked(scores)
    logat = scores.scores["logat"]
    cues = np.repeat(scores.cue_mask[:, None], len(scores.layers), 1)
    exclude = np.repeat(~ranked[:, None], len(scores.layers), 1)
    base = np.nanmean(average_precision(logat, cues, exclude), axis=0)
    rows = []
    for c in shifts:
        ap = np.nanmean(average_precision(norms[:, None, :] * (logat + c), cues, exclude), axis=0)
        rows += [{"shift": float(c), "layer": layer, "NormXLogit AP": a, "LogAt AP": b}
                 for layer, a, b in zip(scores.layers, ap, base)]
    return pd.DataFrame(rows)
