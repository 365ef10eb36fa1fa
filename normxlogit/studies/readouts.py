"""How predictive is each token's own representation? Layer-wise head read-outs and rank comparisons (chapter 3).

:func:`layer_readouts` reads the model's own head on every token at every layer, from one forward pass per batch;
:func:`layer_agreement` summarises it per layer: the share of (non-special) tokens whose read-out picks the model's
predicted class, and the mean LogAt of that class (regression: the mean ``|head(h_i^l) - output|``).
Comparing attributions (rank correlations) lives in :mod:`normxlogit.evaluation.agreement`.

    import normxlogit as nx
    by_layer = nx.layer_agreement(model, tokenizer, texts)          # one row per layer 0..L
    loo = nx.explain(model, tokenizer, texts, method="leave_one_out")
    rho = nx.rank_correlations(nx.explain(model, tokenizer, texts, method="logat"), loo)
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..core.explain import iter_batches
from ..core.heads import resolve_head
from ..core.inputs import Texts, encode
from ..evaluation.stats import cluster_bootstrap
from ..models import Task

__all__ = ["layer_agreement", "layer_readouts"]


@torch.no_grad()
def layer_readouts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Texts,
    *,
    batch_size: int = 32,
    max_length: int | None = None,
    head: Callable[[Tensor], Tensor] | None = None,
    task: Task | None = None,
    include_special: bool = False,
    progress: bool = False,
) -> pd.DataFrame:
    """The head read on every token at every layer: one row per (text, token, layer), one forward pass per batch.

    Columns: ``text_id`` (index in ``texts``), ``position``, ``token``, ``special``, ``layer`` (0 = embeddings),
    ``logat`` (the predicted class's logit in the token's read-out; regression: ``|head(h_i^l) - output|``),
    ``readout`` (the read-out's argmax class; regression: its value), ``prediction`` (the model's own) and
    ``agree`` (``readout == prediction``; regression: NaN). Special tokens and padding are left out unless
    ``include_special`` (padding never appears).
    """
    resolved = resolve_head(model, task, head)
    encoded = encode(model, tokenizer, texts, max_length)
    frames = []
    for batch in iter_batches(model, tokenizer, encoded, resolved, batch_size=batch_size, progress=progress,
                              desc="layer read-outs"):
        idx, special = batch.indices, batch.special_tokens_mask
        keep = batch.attention_mask.bool() & (~special if not include_special else torch.ones_like(special))
        b, t = keep.nonzero(as_tuple=True)
        per_layer = []
        for layer in range(batch.num_layers + 1):
            logits = batch.head_logits(layer)[b, t]  # (N, C)
            if batch.is_regression:
                readout = logits[:, 0]
                score = (readout - batch.logits[b, 0].float()).abs()
                agree = torch.full_like(score, float("nan"))
            else:
                readout = logits.argmax(-1)
                score = logits.gather(-1, batch.predictions[b].view(-1, 1)).squeeze(-1)
                agree = (readout == batch.predictions[b]).float()
            per_layer.append(torch.stack([score, readout.float(), agree]).cpu().numpy())
        n_layers = len(per_layer)
        values = np.concatenate(per_layer, axis=1)  # (3, N * layers), layer-major
        text_ids = np.asarray(idx)[b.cpu().numpy()]
        frames.append(pd.DataFrame({
            "text_id": np.tile(text_ids, n_layers),
            "position": np.tile(t.cpu().numpy(), n_layers),
            "token_id": np.tile(batch.input_ids[b, t].cpu().numpy(), n_layers),
            "special": np.tile(special[b, t].cpu().numpy(), n_layers),
            "layer": np.repeat(np.arange(n_layers), len(b)),
            "logat": values[0],
            "readout": values[1] if batch.is_regression else values[1].astype(int),
            "prediction": np.tile(batch.predictions[b].cpu().numpy(), n_layers),
            "agree": values[2] if batch.is_regression else values[2].astype(bool),
        }))
    df = pd.concat(frames, ignore_index=True).sort_values(["layer", "text_id", "position"], ignore_index=True)
    df.insert(2, "token", tokenizer.convert_ids_to_tokens(df["token_id"].tolist()))
    return df.drop(columns="token_id")


def layer_agreement(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Texts | None = None,
    batch_size: int = 32,
    *,
    readouts: pd.DataFrame | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    **kwargs,
) -> pd.DataFrame:
    """Per layer 0..L: how often, and how strongly, each token's own head read-out agrees with the model.

    Columns: ``layer``, ``tokens`` (non-special tokens counted), ``agree`` (share of them whose read-out argmax is
    the model's prediction; regression: NaN) with its ``agree_low``/``agree_high`` bootstrap interval (texts
    resampled), ``logat_mean`` (mean LogAt of the predicted class; regression: mean ``|head(h_i^l) - output|``) with
    ``logat_low``/``logat_high``, and ``logat_negative`` (share of tokens with negative LogAt). Pass ``readouts``
    (from :func:`layer_readouts`) to summarise without re-running the model; other keywords go to it.
    """
    if readouts is None:
        if texts is None:
            raise ValueError("Pass texts (or readouts= from layer_readouts).")
        readouts = layer_readouts(model, tokenizer, texts, batch_size=batch_size, **kwargs)
    df = readouts[~readouts["special"]] if "special" in readouts else readouts
    out = []
    for layer, g in df.groupby("layer", sort=True):
        per_text = g.groupby("text_id").agg(n=("logat", "size"), logat=("logat", "sum"),
                                            agree=("agree", "sum"), negative=("logat", lambda s: (s < 0).sum()))
        n = per_text["n"].to_numpy(float)
        row = {"layer": int(layer), "tokens": int(n.sum())}
        regression = g["agree"].isna().all()
        if regression:
            row.update(agree=np.nan, agree_low=np.nan, agree_high=np.nan)
        else:
            a = per_text["agree"].to_numpy(float)
            row["agree"] = a.sum() / n.sum()
            row["agree_low"], row["agree_high"] = cluster_bootstrap(a, n, n_boot, seed, ci)
        s = per_text["logat"].to_numpy(float)
        row["logat_mean"] = s.sum() / n.sum()
        row["logat_low"], row["logat_high"] = cluster_bootstrap(s, n, n_boot, seed, ci)
        row["logat_negative"] = per_text["negative"].sum() / n.sum()
        out.append(row)
    return pd.DataFrame(out)


