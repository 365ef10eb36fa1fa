"""Rank agreement between attributions of the same texts: per-text Spearman, summaries, layer by layer.

    rho = nx.rank_correlations(nx.explain(model, tokenizer, texts, method="logat"), loo)
    nx.correlation_summary(loo, {"logat": logat, "norm": norm})  # mean rho with bootstrap intervals
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..core.attribution import Attribution
from ..core.explain import attribute, num_layers_of
from ..core.inputs import Texts, encode
from ..core.registry import get_method
from .stats import bootstrap_mean

__all__ = ["correlation_summary", "layer_correlations", "rank_correlations", "token_table"]


def _check_aligned(a: Sequence[Attribution], b: Sequence[Attribution]) -> None:
    if len(a) != len(b):
        raise ValueError(f"Got {len(a)} and {len(b)} attributions: compare attributions of the same texts.")
    for k, (x, y) in enumerate(zip(a, b)):
        if x.input_ids != y.input_ids:
            raise ValueError(f"Attribution {k} covers different tokens in the two lists: compare the same texts, "
                             "tokenised by the same tokenizer.")


def rank_correlations(
    attributions_a: Sequence[Attribution], attributions_b: Sequence[Attribution], *, min_tokens: int = 3
) -> pd.DataFrame:
    """Per text, Spearman's rho between two attributions' scores over the non-special tokens.

    Returns ``text_id``, ``n_tokens`` and ``rho`` (NaN with fewer than ``min_tokens`` tokens or a constant score).
    """
    _check_aligned(attributions_a, attributions_b)
    rows = []
    for k, (x, y) in enumerate(zip(attributions_a, attributions_b)):
        keep = x.content_mask
        n = int(keep.sum())
        rho = np.nan
        xs, ys = x.scores[keep], y.scores[keep]
        if n >= max(min_tokens, 2) and np.ptp(xs) > 0 and np.ptp(ys) > 0:
            rho = float(stats.spearmanr(xs, ys).statistic)
        rows.append({"text_id": k, "n_tokens": n, "rho": rho})
    return pd.DataFrame(rows)


def correlation_summary(
    reference: Sequence[Attribution],
    candidates: Mapping[str, Sequence[Attribution]],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    min_tokens: int = 3,
) -> pd.DataFrame:
    """Per candidate method: its per-text Spearman correlation with ``reference``, summarised over texts.

    Columns: ``method``, ``mean_rho`` with its bootstrap ``low``/``high`` (texts resampled), ``median_rho``,
    ``positive`` (share of texts with rho > 0) and ``texts`` (texts with a defined rho).
    """
    rows = []
    for name, attrs in candidates.items():
        rho = rank_correlations(attrs, reference, min_tokens=min_tokens)["rho"]
        summary = bootstrap_mean(rho, n_boot, seed, ci)
        valid = rho.dropna()
        rows.append({"method": name, "mean_rho": summary["mean"], "low": summary["low"], "high": summary["high"],
                     "median_rho": float(valid.median()) if len(valid) else np.nan,
                     "positive": float((valid > 0).mean()) if len(valid) else np.nan, "texts": summary["n"]})
    return pd.DataFrame(rows)


def layer_correlations(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Texts,
    reference: Sequence[Attribution],
    methods: Sequence[str] = ("logat", "normxlogit"),
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 32,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    **explain_options,
) -> pd.DataFrame:
    """:func:`correlation_summary` of layer-wise ``methods`` read at each of ``layers`` (default 0..L) against
    ``reference`` (attributions of the same ``texts``, e.g. leave-one-out). One row per (layer, method)."""
    flat = [m for m in methods if not get_method(m).layerwise]
    if flat:
        raise ValueError(f"{', '.join(flat)} do(es) not depend on the layer; pass layer-wise methods such as logat.")
    if layers is None:
        layers = range(num_layers_of(model) + 1)
    encoded = encode(model, tokenizer, texts, explain_options.pop("max_length", None))  # tokenised once
    frames = []
    for layer in layers:
        attrs = {m: attribute(model, tokenizer, encoded, m, layer=layer, batch_size=batch_size, **explain_options)
                 for m in methods}
        table = correlation_summary(reference, attrs, n_boot=n_boot, seed=seed, ci=ci)
        frames.append(table.assign(layer=layer))
    out = pd.concat(frames, ignore_index=True)
    return out[["layer"] + [c for c in out.columns if c != "layer"]]


def token_table(attributions: Mapping[str, Sequence[Attribution]], *, include_special: bool = False) -> pd.DataFrame:
    """One row per token of the texts, one score column per method: ``text_id``, ``position``, ``token``, ... .

    All lists must explain the same texts (same tokens). Special tokens are left out unless ``include_special``.
    """
    names = list(attributions)
    if not names:
        raise ValueError("Pass at least one list of attributions, e.g. token_table({'logat': attrs}).")
    first = attributions[names[0]]
    for name in names[1:]:
        _check_aligned(first, attributions[name])
    text_id = np.concatenate([np.full(len(a), k) for k, a in enumerate(first)])
    position = np.concatenate([np.arange(len(a)) for a in first])
    df = pd.DataFrame({
        "text_id": text_id, "position": position, "token": [t for a in first for t in a.tokens],
        "special": np.concatenate([np.asarray(a.special_tokens_mask, bool) for a in first]),
    })
    for name in names:
        df[name] = np.concatenate([a.scores for a in attributions[name]])
    return df if include_special else df[~df["special"]].reset_index(drop=True)
