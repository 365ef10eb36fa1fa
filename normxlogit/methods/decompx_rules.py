"""DecompX's propagation rules: how each operation of a post-LayerNorm encoder layer and of the sequence head acts
on a vector carried as a sum of per-token parts (see :mod:`normxlogit.methods.decompx` for the method, its paper and
its choices).

Parts are a tensor (..., K, D) whose last part (``K - 1``) is the bias part. Linear maps apply to every part;
biases are added by :func:`add_bias_` (``"absdot"``: shared among the token parts, ``"separate"``: to the bias part);
LayerNorm divides every centred part by the *real* vector's standard deviation (:func:`layer_norm_parts_`);
element-wise activations are linearised with the real ``act(z) / z`` (:func:`activation_ratio`). The layers and head
come from :func:`normxlogit.core.layouts.model_structure`; nothing here knows a model family.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..core.heads import UnsupportedModelError
from ..core.layouts import HeadStep, Sublayer

#: Default bound on one parts tensor (sentences x T x (T + 1) x hidden) and on the feed-forward block: 2**25 floats
#: (128 MiB in float32). Peak memory is a few times this, or a few single-sentence parts tensors when those are larger.
CHUNK_ELEMENTS = 2**25


def check_activations(layers: list[list[Sublayer]], head: list[HeadStep]) -> None:
    """The ``act(z) / z`` linearisation keeps the parts' sum only where ``act(0) = 0``: a clear error otherwise."""
    for fn in [sub.activation for step in layers for sub in step] + [f for kind, f in head if kind == "activation"]:
        at_zero = float(fn(torch.zeros(1)))
        if at_zero != 0.0:
            raise UnsupportedModelError(
                f"DecompX linearises activations with act(z)/z, which needs act(0) = 0; {fn} gives {at_zero}."
            )


def _weight(linear: nn.Linear) -> Tensor:
    return linear.weight.float()


def _bias(linear: nn.Module, size: int, device: torch.device) -> Tensor:
    bias = getattr(linear, "bias", None)
    return bias.float() if bias is not None else torch.zeros(size, device=device)


def _linear(x: Tensor, linear: nn.Linear) -> Tensor:
    return F.linear(x, _weight(linear), None if linear.bias is None else linear.bias.float())


def add_bias_(parts: Tensor, bias: Tensor, mode: str) -> Tensor:
    """Add ``bias`` (E,) to parts (..., K, E) whose last part is the bias part, in place.

    ``separate``: all of it to the bias part. ``absdot``: shared among the other parts in proportion to
    ``|<part, bias>|``; where all those products are zero it goes to the bias part (so the sum is always kept).
    """
    if mode == "separate":
        parts[..., -1, :].add_(bias)
        return parts
    weights = (parts @ bias).abs()  # (..., K)
    weights[..., -1] = 0
    total = weights.sum(-1, keepdim=True)
    empty = total == 0
    share = weights / torch.where(empty, torch.ones_like(total), total)
    share[..., -1:] = empty.to(share.dtype)
    return parts.addcmul_(share.unsqueeze(-1), bias)


def layer_norm_parts_(parts: Tensor, real_input: Tensor, norm: nn.LayerNorm, mode: str) -> Tensor:
    """LayerNorm on parts (B, t, K, D), in place: each part minus its own mean, over the real input's std."""
    var = real_input.var(-1, unbiased=False, keepdim=True)  # (B, t, 1): the real vector's, fixed
    std = (var + norm.eps).sqrt()
    parts.sub_(parts.mean(-1, keepdim=True)).div_(std.unsqueeze(-1))
    if norm.weight is not None:
        parts.mul_(norm.weight.float())
    if norm.bias is not None:
        add_bias_(parts, norm.bias.float(), mode)
    return parts


def _real_layer_norm(x: Tensor, norm: nn.LayerNorm) -> Tensor:
    weight = None if norm.weight is None else norm.weight.float()
    bias = None if norm.bias is None else norm.bias.float()
    return F.layer_norm(x, norm.normalized_shape, weight, bias, norm.eps)


def activation_ratio(pre: Tensor, post: Tensor, activation: Callable[[Tensor], Tensor]) -> Tensor:
    """``act(z) / z`` element-wise; at ``z == 0`` the activation's slope at 0 (the limit of the ratio)."""
    zero = pre == 0
    ratio = post / torch.where(zero, torch.ones_like(pre), pre)
    if zero.any():
        eps = 1e-4
        slope = float(activation(torch.full((1,), eps, device=pre.device))) / eps
        ratio = torch.where(zero, torch.full_like(ratio, slope), ratio)
    return ratio


def _ffn_parts_(parts: Tensor, ratio: Tensor, sub: Sublayer, mode: str, budget: int, fused: bool | None) -> None:
    """parts += FFN(parts), in place, with the activation linearised by ``ratio`` (B, T, F); blocks of positions."""
    batch, length, k, width = parts.shape
    inner = sub.ffn_in.out_features
    w1, w2 = _weight(sub.ffn_in), _weight(sub.ffn_out)
    b1, b2 = _bias(sub.ffn_in, inner, parts.device), _bias(sub.ffn_out, width, parts.device)
    if fused is None:  # fuse W2 diag(r) W1 per position once that is cheaper than two products per part
        fused = k * (2 * inner - width) > width * inner
    # Floats held per position of a block: the FFN intermediate (unfused) or the fused matrices and the output.
    per_position = batch * (k * width + width * inner + width * width) if fused else batch * k * inner
    step = max(1, budget // max(per_position, 1))
    for start in range(0, length, step):
        block = parts[:, start:start + step]  # a view: written in place below
        r = ratio[:, start:start + step]  # (B, t, F)
        if not fused:
            z = block @ w1.T  # (B, t, K, F)
            add_bias_(z, b1, mode)
            z.mul_(r.unsqueeze(2))
            out = z @ w2.T
            del z
        else:
            # Same numbers as above, regrouped: part -> W2 diag(r) W1 part, plus the share of b1 it received.
            fused_w = (w2 * r.unsqueeze(-2)) @ w1  # (B, t, D, D): W2 diag(r) W1 at each position
            out = block @ fused_w.transpose(-1, -2)  # (B, t, K, D)
            b1_out = (r * b1) @ w2.T  # (B, t, D): where b1 goes through the linearised activation and W2
            if mode == "separate":
                out[..., -1, :].add_(b1_out)
            else:
                # absdot on the pre-activation: weights |<W1 part, b1>| = |<part, W1^T b1>|
                weights = (block @ (w1.T @ b1)).abs()
                weights[..., -1] = 0
                total = weights.sum(-1, keepdim=True)
                empty = total == 0
                share = weights / torch.where(empty, torch.ones_like(total), total)
                share[..., -1:] = empty.to(share.dtype)
                out.addcmul_(share.unsqueeze(-1), b1_out.unsqueeze(2))
        add_bias_(out, b2, mode)
        block.add_(out)
        del out


def propagate_layer(sub: Sublayer, hidden: Tensor, parts: Tensor, attention_mask: Tensor, mode: str,
                    budget: int = CHUNK_ELEMENTS, fused: bool | None = None,
                    queries: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One layer: the real output (B, Q, D) recomputed from ``hidden`` (B, T, D), and the parts propagated.

    ``parts`` (B, T, K, D) is consumed; use the returned (B, Q, K, D). ``queries`` (B, Q): the positions whose
    outputs are wanted (None: all T; the last layer needs only the pooled one, since a layer acts on other positions
    only through its attention).
    """
    batch, length, width = hidden.shape
    heads = sub.heads
    size = sub.value.out_features // heads

    def split(x: Tensor) -> Tensor:
        return x.view(batch, length, heads, size).transpose(1, 2)  # (B, nh, T, d)

    def at_queries(x: Tensor, dim: int = 1) -> Tensor:
        if queries is None:
            return x
        shape = [1] * x.dim()
        shape[0], shape[dim] = batch, queries.shape[1]
        index = queries.view(shape).expand(*x.shape[:dim], queries.shape[1], *x.shape[dim + 1:])
        return x.gather(dim, index)

    # The real forward: attention weights, pre-LayerNorm sums and pre-activations.
    q, k, v = split(_linear(hidden, sub.query)), split(_linear(hidden, sub.key)), split(_linear(hidden, sub.value))
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(size)
    scores = scores.masked_fill(~attention_mask.bool()[:, None, None, :], torch.finfo(scores.dtype).min)
    probs = at_queries(scores.softmax(-1), 2)  # (B, nh, Q, T)
    n_q = probs.shape[2]
    context = (probs @ v).transpose(1, 2).reshape(batch, n_q, heads * size)
    pre_norm1 = at_queries(hidden) + _linear(context, sub.output)
    normed1 = _real_layer_norm(pre_norm1, sub.attention_norm)
    pre_act = _linear(normed1, sub.ffn_in)
    post_act = sub.activation(pre_act)
    pre_norm2 = normed1 + _linear(post_act, sub.ffn_out)
    out = _real_layer_norm(pre_norm2, sub.output_norm)

    # Attention on the parts, head by head: part -> W_O,h (sum_j A_h[i, j] W_V,h part_j), added to the residual.
    k_parts = parts.shape[2]
    w_v, w_o = _weight(sub.value), _weight(sub.output)
    mixed = parts.clone() if queries is None else at_queries(parts)  # the residual (gather copies)
    flat = mixed.view(-1, width)
    for h in range(heads):
        rows = slice(h * size, (h + 1) * size)
        values = parts @ w_v[rows].T  # (B, T, K, d)
        ctx = torch.matmul(probs[:, h], values.view(batch, length, k_parts * size))  # (B, Q, K*d)
        del values
        flat.addmm_(ctx.view(-1, size), w_o[:, rows].T)
        del ctx
    del parts
    attention_bias = w_o @ _bias(sub.value, heads * size, hidden.device) + _bias(sub.output, width, hidden.device)
    add_bias_(mixed, attention_bias, mode)
    layer_norm_parts_(mixed, pre_norm1, sub.attention_norm, mode)
    _ffn_parts_(mixed, activation_ratio(pre_act, post_act, sub.activation), sub, mode, budget, fused)
    layer_norm_parts_(mixed, pre_norm2, sub.output_norm, mode)
    return out, mixed


def propagate_head(head: list[HeadStep], pooled: Tensor, parts: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    """The head on the pooled vector (B, D) and on its parts (B, K, D): logits (B, C) and their parts (B, K, C)."""
    for kind, step in head:
        if kind == "linear":
            parts = parts @ _weight(step).T
            add_bias_(parts, _bias(step, parts.shape[-1], parts.device), mode)
            pooled = _linear(pooled, step)
        else:
            post = step(pooled)
            parts = parts * activation_ratio(pooled, post, step).unsqueeze(1)
            pooled = post
    return pooled, parts

