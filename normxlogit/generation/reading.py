"""Reading a causal LM for generation attribution: its logits at a few positions, its head against a few rows.

:func:`gathered_logits` is the generation package's variant of :func:`normxlogit.core.heads.id_logits`. Both
apply only the K wanted unembedding rows (never the full vocabulary) and the model's logit soft-capping / scaling
(``Head.postprocess``), follow the unembedding's device and leave offloaded (``meta``) heads to the full path. This
one takes one set of ids for all states (``(..., K)``, the G generated tokens for every position) where
``id_logits`` takes one set per row, and it swaps the output embedding's forward for the call while keeping
accelerate's device hook, so a head split over devices runs as the model runs it. Folding it into ``id_logits``
(a shared-ids mode) is left to do.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from ..core.heads import Head

__all__ = ["gathered_logits", "last_hidden", "model_logits", "output_rows"]


@contextlib.contextmanager
def output_rows(model: nn.Module, ids: Tensor) -> Iterator[bool]:
    """Inside the block the output embedding maps vectors to the logits of ``ids`` only (K columns, not the vocabulary).

    Yields whether it could (a plain ``nn.Linear`` with its weights in memory). Everything the head reader does
    before (final norm) and after it (logit soft-capping, scaling: elementwise) still runs, so a fix to the reader
    carries over.
    """
    decoder = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(decoder, nn.Linear) or decoder.weight.device.type == "meta":
        yield False
        return
    weight = decoder.weight[ids.to(decoder.weight.device)]
    bias = None if decoder.bias is None else decoder.bias[ids.to(decoder.bias.device)]

    def forward(x: Tensor) -> Tensor:
        return nn.functional.linear(x.to(weight.device), weight, bias)

    saved = decoder.__dict__.get("forward")  # accelerate keeps its device hook here; put it back afterwards
    decoder.forward = forward
    try:
        yield True
    finally:
        if saved is None:
            del decoder.forward
        else:
            decoder.forward = saved


def gathered_logits(head: Head, states: Tensor, ids: Tensor, *, intermediate: bool = False) -> Tensor:
    """``head(states)[..., ids]`` as float32, (..., K), applying only the K output-embedding rows of ``ids``.

    Runs the whole head reader (not only up to the output embedding), so elementwise post-processing such as logit
    soft-capping applies to the gathered logits too. Falls back to the full head and a gather when the head does not
    end in a linear output embedding with its weights in memory (a user's head, offloaded weights).
    """
    ids = ids.reshape(-1)
    with output_rows(head.model, ids) as restricted:
        out = head(states, intermediate=intermediate)
    if restricted and out.shape[-1] == len(ids):
        return out.float()
    return out[..., ids.to(out.device)].float()


def model_logits(model: PreTrainedModel, input_ids: Tensor, keep: int, *, hidden: bool = False):
    """The model's forward pass and its logits at the last ``keep`` positions (B, keep, V).

    ``logits_to_keep`` spares the full-vocabulary logits at every other position where the model supports it.
    """
    params = inspect.signature(model.forward).parameters
    kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if hidden:
        kwargs["output_hidden_states"] = True
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = keep
    if "use_cache" in params:
        kwargs["use_cache"] = False
    out = model(**kwargs)
    return out, out.logits[:, -keep:]


def last_hidden(model: PreTrainedModel, input_ids: Tensor) -> Tensor:
    """The final hidden states (B, T, H) as the head reads them, without computing any logits."""
    base = model.base_model
    mask = torch.ones_like(input_ids)
    if base is model:
        return model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    kwargs = {"use_cache": False} if "use_cache" in inspect.signature(base.forward).parameters else {}
    return base(input_ids=input_ids, attention_mask=mask, **kwargs).last_hidden_state
