"""The attention baseline of generation attribution: how much attention the answer pays to each earlier token.

``attention[t, i]`` is the attention weight from the position that predicts generated token t (the one before it)
to position i, averaged over every layer and head: the usual cheap answer to "where did the model look?". It takes
one extra forward pass with eager attention (SDPA and flash kernels return no weights); the model's attention
implementation is switched for that pass only and restored afterwards. Memory: the pass holds every layer's
(heads, T, T) weights at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor
from transformers import PreTrainedModel

from .registry import GenerationBatch, register_generation_method

__all__ = ["eager_attention", "mean_attention"]


@contextlib.contextmanager
def eager_attention(model: PreTrainedModel) -> Iterator[None]:
    """Run the block with eager attention (which returns its weights); the caller's setting comes back after."""
    before = getattr(model.config, "_attn_implementation", None)
    switch = before not in (None, "eager") and hasattr(model, "set_attn_implementation")
    if switch:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(before)


def mean_attention(model: PreTrainedModel, input_ids: Tensor, positions: Tensor) -> Tensor:
    """(G, T): attention from each of ``positions`` to every position, averaged over layers and heads."""
    with eager_attention(model), torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), output_attentions=True,
                    use_cache=False)
    if not out.attentions or any(a is None for a in out.attentions):
        raise ValueError(f"This {type(model).__name__} returns no attention weights; the attention baseline needs a "
                         "model that can run eager attention.")
    total = None
    for weights in out.attentions:  # (1, heads, T, T) per layer
        rows = weights[0][:, positions.to(weights.device)].float().mean(0).cpu()  # (G, T)
        total = rows if total is None else total + rows
    return total / len(out.attentions)


@register_generation_method("attention", "attention from the position before each generated token to every earlier "
                            "token, averaged over layers and heads (one extra forward pass, eager attention)",
                            signed=False)
def attention(batch: GenerationBatch) -> Tensor:
    return mean_attention(batch.model, batch.input_ids, batch.positions)
