"""Layer-wise evidence alignment on BLiMP: do a method's top tokens at layer ``l`` fall on the cue words?

:func:`layerwise_scores` runs the model once per batch with hidden states (the core's batch iterator and forward
pass) and reads every method at every layer from that one :class:`~normxlogit.core.registry.Batch`: the methods are
the registered ones (:data:`LAYER_METHODS` names the variants the chapter compares), plus one cheap recomputation
per layer for Value Zeroing. :func:`average_precision` and
:func:`dp` score one ranking against the cue set; :func:`evaluate_alignment` puts it together as a table.

Ranking protocol (DESIGN.md section 4): the target (masked) position is removed from the ranking, and so are the
special tokens ([CLS], [SEP]) and padding, which are not words of the sentence; ties keep sentence order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from transformers import PreTrainedModel

from ..core.explain import forward_batch, num_layers_of
from ..core.heads import resolve_head
from ..core.inputs import eval_mode, model_device, padded_batches
from ..core.registry import get_method

Positions = "Sequence[int] | Sequence[Sequence[int]] | np.ndarray"
NORMALISATIONS = ("softmax", "sum")


# --- metrics on one ranking (or many, vectorised) -------------------------------------------------------------------
def _mask(positions, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A boolean mask of ``shape`` from a mask, a list of positions (1-D scores) or one list per row (2-D)."""
    if isinstance(positions, (np.ndarray, Tensor)) and np.asarray(positions).dtype == bool:
        return np.broadcast_to(np.asarray(positions), shape)
    out = np.zeros(shape, dtype=bool)
    positions = list(positions)
    if not positions:  # nothing marked, whatever the shape
        return out
    rows = positions if len(shape) == 2 else [positions] if len(shape) == 1 else None
    if rows is None or (len(shape) == 2 and len(rows) != shape[0]):
        raise ValueError(f"{what}: pass a boolean mask shaped like the scores {shape}, a list of positions (1-D "
                         "scores), or one list per row (2-D scores).")
    for r, row in enumerate(rows):
        row = [int(p) for p in np.atleast_1d(row)]
        if any(not -shape[-1] <= p < shape[-1] for p in row):
            raise ValueError(f"{what}: position out of range for {shape[-1]} tokens: {row}.")
        out.reshape(-1, shape[-1])[r, row] = True
    return out


def _prepare(scores, cue_positions, exclude) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = np.asarray(scores.detach().cpu() if isinstance(scores, Tensor) else scores, dtype=np.float64)
    if s.ndim == 0:
        raise ValueError("scores must have a token axis (the last one).")
    excluded = _mask(exclude, s.shape, "exclude") | np.isnan(s)
    cues = _mask(cue_positions, s.shape, "cue_positions") & ~excluded
    return s, cues, excluded


def average_precision(scores, cue_positions, exclude=()) -> float | np.ndarray:
    """Average precision of the ranking by ``scores`` (largest first) against the cue set.

    ``scores``: (T,) or (..., T). ``cue_positions`` and ``exclude``: boolean masks shaped like ``scores``, or lists
    of positions; excluded tokens (and NaN scores) leave the ranking. With one cue this is 1 / its rank. NaN where
    no cue is left. Ties keep sentence order.
    """
    s, cues, excluded = _prepare(scores, cue_positions, exclude)
    # Sort by (excluded last, then score descending); lexsort's last key is the primary one.
    order = np.lexsort((-np.where(excluded, 0.0, s), excluded), axis=-1)
    hits = np.take_along_axis(cues, order, -1)
    precision = np.cumsum(hits, -1) / np.arange(1, s.shape[-1] + 1)
    n = hits.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.where(n > 0, (precision * hits).sum(-1) / n, np.nan)
    return float(ap) if ap.ndim == 0 else ap


def dp(scores, cue_positions, normalisation: str = "softmax", exclude=()) -> float | np.ndarray:
    """Score mass on the cue tokens after turning the scores of the ranked tokens into a distribution.

    ``normalisation="softmax"``: ``softmax(scores)``; ``"sum"``: ``|scores| / sum |scores|`` (how the authors
    normalised vector-based methods). Excluded tokens get no mass. NaN where nothing is left to normalise.
    """
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {', '.join(NORMALISATIONS)}, not {normalisation!r}.")
    s, cues, excluded = _prepare(scores, cue_positions, exclude)
    if normalisation == "softmax":
        z = np.where(excluded, -np.inf, s)
        top = z.max(-1, keepdims=True)
        weights = np.exp(z - np.where(np.isfinite(top), top, 0.0))
    else:
        weights = np.where(excluded, 0.0, np.abs(s))
    total = weights.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mass = np.where(total > 0, (weights * cues).sum(-1) / total, np.nan)
    return float(mass) if mass.ndim == 0 else mass


# --- the layer-wise variants of registered methods ----------------------------------------------------------------
@dataclass(frozen=True)
class LayerVariant:
    """A registered method read at layer ``l`` with one setting of the :class:`Batch`: the norm source, or the
    foil word as the target."""

    method: str
    description: str
    norm_source: str = "embedding_output"
    foil: bool = False


#: The chapter's rows, in this order: name -> the registered method and how it reads the batch at layer l.
LAYER_METHODS: dict[str, LayerVariant] = {
    "random": LayerVariant("random", "a random ranking, seeded per (seed, layer) and example"),
    "norm": LayerVariant("norm", "ℓ2-norm of layer l's hidden state ||h_i^l||", norm_source="layer"),
    "logat": LayerVariant("logat", "LogAt(target): the MLM head read on h_i^l, the target word's logit"),
    "logat_foil": LayerVariant("logat", "LogAt(foil): the same read-out, the foil word's logit", foil=True),
    "normxlogit": LayerVariant("normxlogit", "NormXLogit: ||h_i^0|| x LogAt_l(target)"),
    "normxlogit_each": LayerVariant("normxlogit", "NormXLogit (each layer): ||h_i^l|| x LogAt_l(target)",
                                    norm_source="layer"),
    "value_zeroing": LayerVariant("value_zeroing", "Value Zeroing: cosine distance at the target when v_i is "
                                  "zeroed in layer l"),
}


def list_layer_methods() -> list[str]:
    """Names accepted by :func:`layerwise_scores`."""
    return list(LAYER_METHODS)


def layer_seed(seed: int, layer: int) -> int:
    """The seed of a random draw at ``layer``: a fresh ranking per layer, reproducible from ``seed``."""
    return int(seed) * 1009 + int(layer)


# --- all layers and methods for a dataset ---------------------------------------------------------------------------
@dataclass
class LayerwiseScores:
    """Scores of every method at every layer for every example, with what the metrics need.

    ``scores[method]``: (N, L, T) float32, NaN past each sentence's end; layer ``k`` of axis 1 is layer
    ``layers[k]``. ``cue_mask`` and ``exclude_mask``: (N, T). ``correct``: whether the model's final layer gives the
    target a higher logit than the foil.
    """

    scores: dict[str, np.ndarray]
    layers: list[int]
    cue_mask: np.ndarray
    exclude_mask: np.ndarray
    paradigms: np.ndarray
    correct: np.ndarray
    lengths: np.ndarray

    @property
    def methods(self) -> list[str]:
        return list(self.scores)

    def metrics(self) -> pd.DataFrame:
        """One row per (example, method, layer): AP, DP_softmax, DP_sum, paradigm, whether the model was right."""
        frames = []
        n, num_layers = len(self.paradigms), len(self.layers)
        cues = np.repeat(self.cue_mask[:, None], num_layers, 1)
        exclude = np.repeat(self.exclude_mask[:, None], num_layers, 1)
        for method, s in self.scores.items():
            frames.append(pd.DataFrame({
                "example": np.repeat(np.arange(n), num_layers),
                "method": method,
                "layer": np.tile(self.layers, n),
                "paradigm": np.repeat(self.paradigms, num_layers),
                "correct": np.repeat(self.correct, num_layers),
                "AP": average_precision(s, cues, exclude).ravel(),
                "DP_softmax": dp(s, cues, "softmax", exclude).ravel(),
                "DP_sum": dp(s, cues, "sum", exclude).ravel(),
            }))
        return pd.concat(frames, ignore_index=True)


REQUIRED_COLUMNS = ("input_ids", "attention_mask", "mask_position", "target_id", "foil_id", "cue_positions")


@torch.no_grad()
def layerwise_scores(
    model: PreTrainedModel,
    dataset,
    methods: Sequence[str] | None = None,
    batch_size: int = 64,
    *,
    seed: int = 0,
    exclude_special: bool = True,
    progress: bool = False,
) -> LayerwiseScores:
    """Scores of ``methods`` (default: all of :data:`LAYER_METHODS`) at layers 1..L for every row of ``dataset``.

    ``dataset``: rows with ``input_ids`` (target replaced by the mask token), ``attention_mask``, ``mask_position``,
    ``target_id``, ``foil_id``, ``cue_positions`` (and ``special_tokens_mask``, ``paradigm`` when present), as
    :func:`normxlogit.data.blimp.build_dataset` makes them. Per batch: one forward pass with hidden states; each method
    reads the batch at each layer (LogAt gathers only the target/foil rows of the unembedding), and Value Zeroing
    recomputes each layer once.
    """
    methods = list(LAYER_METHODS) if methods is None else list(methods)
    unknown = [m for m in methods if m not in LAYER_METHODS]
    if unknown:
        raise ValueError(f"Unknown layer-wise method(s) {unknown}; available: {', '.join(LAYER_METHODS)}.")
    missing = [c for c in REQUIRED_COLUMNS if c not in dataset.column_names]
    if missing:
        raise ValueError(f"The dataset lacks column(s) {missing}; build it with normxlogit.data.blimp.build_dataset.")
    if len(dataset) == 0:
        raise ValueError("The dataset is empty: there is nothing to score.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    head = resolve_head(model, "masked-lm")
    columns = [c for c in ("input_ids", "attention_mask", "special_tokens_mask") if c in dataset.column_names]
    data = dataset.select_columns([c for c in (*REQUIRED_COLUMNS, "special_tokens_mask", "paradigm")
                                   if c in dataset.column_names])[:]
    rows = [{c: data[c][i] for c in columns if c != "special_tokens_mask"} for i in range(len(dataset))]
    n = len(dataset)
    lengths = np.array([len(ids) for ids in data["input_ids"]])
    width = int(lengths.max())
    num_layers = num_layers_of(model)
    layers = list(range(1, num_layers + 1))
    scores = {m: np.full((n, num_layers, width), np.nan, dtype=np.float32) for m in methods}
    correct = np.zeros(n, dtype=bool)
    device = model_device(model)
    pads = {"input_ids": model.config.pad_token_id if model.config.pad_token_id is not None else 0}
    with eval_mode(model):
        for idx, inputs, _ in padded_batches(pads, rows, device, batch_size=batch_size, progress=progress,
                                             desc="layer-wise scores"):
            positions = torch.tensor([data["mask_position"][i] for i in idx], device=device)
            foils = torch.tensor([data["foil_id"][i] for i in idx], device=device)
            batch = forward_batch(model, None, head, inputs, None, target=[data["target_id"][i] for i in idx],
                                  layer=num_layers, norm_source="embedding_output", indices=idx, seed=seed,
                                  positions=positions)
            rows_ = torch.arange(len(idx), device=device)
            final_target = batch.target_logits(num_layers)[rows_, positions]
            final_foil = batch.target_logits(num_layers, foils)[rows_, positions]
            correct[idx] = (final_target > final_foil).cpu().numpy()
            t = inputs["input_ids"].shape[1]
            real = inputs["attention_mask"].bool().cpu().numpy()
            for name in methods:
                variant = LAYER_METHODS[name]
                fn = get_method(variant.method).fn
                per_layer = []
                for l in layers:
                    view = dataclasses.replace(batch, layer=l, norm_source=variant.norm_source,
                                               targets=foils if variant.foil else batch.targets,
                                               seed=layer_seed(seed, l))
                    per_layer.append(fn(view).float().cpu())
                values = torch.stack(per_layer, 1).numpy()  # (B, L, T)
                scores[name][idx, :, :t] = np.where(real[:, None], values, np.nan)
    cue_mask = np.zeros((n, width), dtype=bool)
    exclude = np.ones((n, width), dtype=bool)  # past the end: excluded
    for i in range(n):
        cue_mask[i, data["cue_positions"][i]] = True
        exclude[i, : lengths[i]] = False
        if exclude_special and "special_tokens_mask" in data:
            exclude[i, : lengths[i]] = np.asarray(data["special_tokens_mask"][i], dtype=bool)
        exclude[i, data["mask_position"][i]] = True
    paradigms = np.asarray(data.get("paradigm", ["all"] * n), dtype=object)
    return LayerwiseScores(scores, layers, cue_mask, exclude, paradigms, correct, lengths)


def summarise(metrics: pd.DataFrame, by: Sequence[str] = ("method", "layer")) -> pd.DataFrame:
    """Mean AP / DP over examples per group (example-weighted), with the number of examples ``n``."""
    grouped = metrics.groupby(list(by), sort=False)
    out = grouped[["AP", "DP_softmax", "DP_sum"]].mean()
    out["n"] = grouped.size()
    return out.reset_index()


def evaluate_alignment(
    model: PreTrainedModel,
    dataset,
    methods: Sequence[str] | None = None,
    batch_size: int = 64,
    *,
    seed: int = 0,
    per_example: bool = False,
    progress: bool = False,
) -> pd.DataFrame:
    """AP and DP (both normalisations) of each method at each layer: one row per (method, layer, paradigm) with
    the mean over that paradigm's examples and their number ``n``; ``per_example=True`` returns every example's row.
    Average over paradigms with :func:`summarise` (example-weighted)."""
    metrics = layerwise_scores(model, dataset, methods, batch_size, seed=seed, progress=progress).metrics()
    if per_example:
        return metrics
    return summarise(metrics, ("method", "layer", "paradigm"))
