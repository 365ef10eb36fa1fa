"""The NormXLogit family: the ℓ2-norm, LogAt, and their product, all read from the one forward pass.

- ``norm``: ``||h_i||`` of the batch's norm source (``embedding_output`` = ``hidden_states[0]``, the default;
  ``word_embedding``; or ``layer`` = ``||h_i^layer||``).
- ``logat``: the model's own head read on token i's hidden state at the batch's layer, the target's logit
  (regression: ``|head(h_i) - output|``, never negative). ``contrast=True`` (classifiers, and causal LMs read
  through their label words): the target's logit minus the log-sum-exp of the other classes' logits, the log-odds
  the head itself gives when it reads token i; at the explained position it equals the model's own log-odds (checked).
- ``normxlogit``: their plain product (signed; no normalisation); ``contrast=True`` multiplies the contrastive read.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core.label_words import check_log_odds, log_odds
from ..core.registry import Batch, register_method


def logat(batch: Batch, layer: int | None = None, targets: Tensor | None = None) -> Tensor:
    """LogAt (B, T): the target's logit when the head reads each token; regression: |head(h_i) - output|."""
    if batch.is_regression:
        logits = batch.head_logits(layer)
        return (logits[..., 0] - batch.logits[:, 0, None].float()).abs()
    return batch.target_logits(layer, targets)


def contrastive_logat(batch: Batch, layer: int | None = None, targets: Tensor | None = None) -> Tensor:
    """(B, T): the target's logit minus the log-sum-exp of the other classes' logits, read on every token.

    Read at the model's last layer, the value at the explained position must equal the model's own log-odds over
    the classes (the label words of a prompted LM); a :class:`~normxlogit.core.heads.HeadMismatchError` otherwise.
    """
    if batch.task != "classification":
        raise ValueError(
            "contrast=True reads the target's log-odds against the other classes, so it needs classes: a sequence "
            f"classifier, or a causal LM read through label_words=[...]; this is a {batch.task} model"
            + (" (pass label_words=, e.g. [' negative', ' positive'])." if batch.task == "causal-lm" else "."))
    targets = batch.targets if targets is None else targets
    scores = log_odds(batch.head_logits(layer), targets)
    if (batch.layer if layer is None else layer) == batch.num_layers:
        rows = torch.arange(len(batch.positions), device=scores.device)
        check_log_odds(batch.head, batch.logits, scores[rows, batch.positions.to(scores.device)], targets,
                       next(batch.model.parameters()).dtype)
    return scores


def _read(batch: Batch, contrast: bool) -> Tensor:
    if not isinstance(contrast, bool):
        raise TypeError(f"contrast must be True or False, not {contrast!r}.")
    return contrastive_logat(batch) if contrast else logat(batch)


@register_method("normxlogit", description="ℓ2-norm of the input embedding × LogAt (one forward pass; "
                 "contrast=True: × the target's log-odds against the other classes)", signed=True, layerwise=True)
def normxlogit_scores(batch: Batch, contrast: bool = False) -> Tensor:
    return batch.norms() * _read(batch, contrast)


@register_method("logat", description="the head's logit for the target read on each token (one forward pass; "
                 "contrast=True: its log-odds against the other classes)", signed=True, layerwise=True)
def logat_scores(batch: Batch, contrast: bool = False) -> Tensor:
    return _read(batch, contrast)


@register_method("norm", description="ℓ2-norm of each token's input embedding (norm_source='layer': of its hidden "
                 "state at the layer; one forward pass)", signed=False)
def norm_scores(batch: Batch) -> Tensor:
    return batch.norms()
