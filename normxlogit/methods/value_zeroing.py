"""Value Zeroing (Mohebbi et al., EACL 2023) for BERT-family encoders.

For layer ``l`` and token ``j``: zero token ``j``'s value vector in layer ``l``'s self-attention, recompute the
layer, and score ``j`` by the cosine distance this causes in the output of the explained position ``t``:
``VZ_l(j) = 1 - cos(h_t^l, h_t^l[v_j = 0])``. Keys and queries are untouched, so the attention weights stay as
they were and only the mixed values change.

How it is batched: a layer's output at ``t`` depends on the other tokens only through ``t``'s attention, and
everything after the attention (output dense, residual, LayerNorm, feed-forward) acts per position. So the layer is
re-implemented from its own modules for the query ``t`` alone, with one *variant* per zeroed token: the context of
variant ``j`` is ``sum_k A[t, k] * keep[j, k] * v_k`` with ``keep = 1 - I``, computed for all ``j`` of all sentences
of a batch by one einsum, and the rest of the layer runs once on the (batch x variants) vectors. One call per
layer, exact, and nearly free next to the forward pass that produced the hidden states.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from ..core.heads import encoder_layers
from ..core.inputs import eval_mode
from ..core.registry import Batch, register_method


def layer_outputs(
    layer: nn.Module,
    hidden: Tensor,
    attention_mask: Tensor,
    keep: Tensor | None = None,
    queries: Tensor | None = None,
) -> Tensor:
    """One BERT layer's output at ``queries``, recomputed with value rows scaled per variant.

    ``hidden`` (B, T, H): the layer's input. ``attention_mask`` (B, T): 1 for real tokens. ``keep`` (B, V, T): a
    multiplier on each token's value vector for each of V variants (1 keeps, 0 zeroes; None: one variant, all kept).
    ``queries`` (B, Q): the positions whose outputs are wanted (None: all T). Returns (B, V, Q, H). With nothing
    zeroed and all queries this is the layer's ordinary output (eval mode: dropout off).
    """
    sa = layer.attention.self
    batch, length, width = hidden.shape
    heads, size = sa.num_attention_heads, sa.attention_head_size
    if keep is None:
        keep = hidden.new_ones(batch, 1, length)
    if queries is None:
        queries = torch.arange(length, device=hidden.device).expand(batch, -1)
    if keep.shape[0] != batch or keep.shape[-1] != length:
        raise ValueError(f"keep must be (batch={batch}, variants, length={length}), got {tuple(keep.shape)}.")
    n_q = queries.shape[1]
    h_q = hidden.gather(1, queries.unsqueeze(-1).expand(-1, -1, width))  # (B, Q, H)
    q = sa.query(h_q).view(batch, n_q, heads, size).transpose(1, 2)  # (B, nh, Q, d)
    k = sa.key(hidden).view(batch, length, heads, size).transpose(1, 2)  # (B, nh, T, d)
    v = sa.value(hidden).view(batch, length, heads, size).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(size)  # (B, nh, Q, T)
    scores = scores.masked_fill(~attention_mask.bool()[:, None, None, :], torch.finfo(scores.dtype).min)
    probs = scores.softmax(-1)
    # Every variant mixes the same values with the same weights, minus its zeroed rows.
    context = torch.einsum("bhqt,bvt,bhtd->bvqhd", probs, keep.to(probs.dtype), v)
    context = context.reshape(batch, -1, n_q, heads * size)
    attended = layer.attention.output(context, h_q.unsqueeze(1))  # dense, dropout, LayerNorm(x + residual)
    return layer.output(layer.intermediate(attended), attended)  # (B, V, Q, H)


def value_zeroing_layer(
    layer: nn.Module, hidden: Tensor, attention_mask: Tensor, positions: Tensor | None = None
) -> Tensor:
    """Value Zeroing scores of one layer: (B, T) for the query ``positions`` (B,), or (B, T_query, T) when None.

    Score of token ``j`` = cosine distance between the query's layer output with all values and with ``v_j = 0``.
    Padding tokens score 0 (their attention weight is 0, so zeroing them changes nothing).
    """
    batch, length, _ = hidden.shape
    queries = None if positions is None else positions.view(batch, 1).to(hidden.device)
    # Variant 0 keeps everything (the reference, recomputed the same way so rounding cancels); variant j+1 zeroes j.
    keep = torch.cat([hidden.new_ones(1, length), 1 - torch.eye(length, dtype=hidden.dtype, device=hidden.device)])
    out = layer_outputs(layer, hidden, attention_mask, keep.expand(batch, -1, -1), queries)  # (B, 1+T, Q, H)
    distance = 1 - nn.functional.cosine_similarity(out[:, 1:], out[:, :1], dim=-1)  # (B, T, Q)
    distance = distance.transpose(1, 2) * attention_mask[:, None, :].to(distance.dtype)  # (B, Q, T)
    return distance[:, 0] if positions is not None else distance


@torch.no_grad()
def value_zeroing(
    model: PreTrainedModel,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    positions: Tensor | None = None,
    *,
    layers: Sequence[int] | None = None,
    hidden_states: Sequence[Tensor] | None = None,
    token_type_ids: Tensor | None = None,
) -> Tensor:
    """Value Zeroing scores of a BERT-family model for layers ``layers`` (1..L, default all).

    Returns (len(layers), B, T) for the query ``positions`` (B,), e.g. the mask positions, or (len(layers), B, T, T)
    for every query when ``positions`` is None (rows: queries, columns: zeroed tokens). ``hidden_states``: the
    model's ``output_hidden_states`` for these inputs, to skip the forward pass.
    """
    blocks = encoder_layers(model, "Value Zeroing")
    num_layers = len(blocks)
    layers = list(range(1, num_layers + 1)) if layers is None else list(layers)
    bad = [l for l in layers if not 1 <= l <= num_layers]
    if bad:
        raise ValueError(f"Value Zeroing layers run 1..{num_layers} (layer 0 is the embeddings, with no attention); got {bad}.")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    with eval_mode(model):  # the recomputation assumes dropout is off
        if hidden_states is None:
            kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
            hidden_states = model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                             output_hidden_states=True, **kwargs).hidden_states
        return torch.stack([value_zeroing_layer(blocks[l - 1], hidden_states[l - 1], attention_mask, positions)
                            for l in layers])


@register_method("value_zeroing", description="Value Zeroing (Mohebbi et al. 2023): cosine distance at the explained "
                 "position when a token's value vector is zeroed in the layer's attention (BERT-family encoders)",
                 signed=False, layerwise=True)
def value_zeroing_scores(batch: Batch) -> Tensor:
    if batch.layer == 0:
        raise ValueError("Value Zeroing needs an attention layer: pass layer=1..L (or -1), not 0 (the embeddings).")
    block = encoder_layers(batch.model, "Value Zeroing")[batch.layer - 1]
    return value_zeroing_layer(block, batch.hidden_states[batch.layer - 1], batch.attention_mask, batch.positions)
