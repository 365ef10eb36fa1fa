"""The NormXLogit family: the ℓ2-norm, LogAt, and their product, all read from the one forward pass.

- ``norm``: ``||h_i||`` of the batch's norm source (``embedding_output`` = ``hidden_states[0]``, the default;
  ``word_embedding``; or ``layer`` = ``||h_i^layer||``).
- ``logat``: the model's own head read on token i's hidden state at the batch's layer, the target's logit
  (regression: ``|head(h_i) - output|``, never negative).
- ``normxlogit``: their plain product (signed; no normalisation).
"""

from __future__ import annotations

from torch import Tensor

from ..core.registry import Batch, register_method


def logat(batch: Batch, layer: int | None = None, targets: Tensor | None = None) -> Tensor:
    """LogAt (B, T): the target's logit when the head reads each token; regression: |head(h_i) - output|."""
    if batch.is_regression:
        logits = batch.head_logits(layer)
        return (logits[..., 0] - batch.logits[:, 0, None].float()).abs()
    return batch.target_logits(layer, targets)


@register_method("normxlogit", description="ℓ2-norm of the input embedding × LogAt (one forward pass)", signed=True,
                 layerwise=True)
def normxlogit_scores(batch: Batch) -> Tensor:
    return batch.norms() * logat(batch)


@register_method("logat", description="the head's logit for the target read on each token (one forward pass)",
                 signed=True, layerwise=True)
def logat_scores(batch: Batch) -> Tensor:
    return logat(batch)


@register_method("norm", description="ℓ2-norm of each token's input embedding (norm_source='layer': of its hidden "
                 "state at the layer; one forward pass)", signed=False)
def norm_scores(batch: Batch) -> Tensor:
    return batch.norms()
