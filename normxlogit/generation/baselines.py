"""The baselines of generation attribution, per generated token: gradient norm, Gradient x Input, Integrated
Gradients (one backward pass per generated token, ``n_steps`` for IG, with captum's Gauss-Legendre rule) and
leave-one-out (one forward pass per source token). They read the same
:class:`~normxlogit.generation.registry.GenerationBatch` as the one-forward methods and return the same (G, T) scores.

Memory: the gradient methods run their sequences (one per generated token and interpolation step) in passes of a
bounded size (``batch_tokens``, default :data:`GRAD_TOKEN_BUDGET` tokens, or IG's ``internal_batch_size``
sequences), so the peak grows with one pass, not with ``n_steps`` x prompt length x answer length.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..core.heads import Head
from ..core.inputs import replacement_token_id
from .reading import gathered_logits, last_hidden, model_logits
from .registry import GenerationBatch, register_generation_method

__all__ = ["GRAD_TOKEN_BUDGET", "LOGITS_BUDGET", "TOKEN_BUDGET", "TargetLogit", "gradient_attributions",
           "gradient_rows", "loo_replacement"]

#: Tokens per forward pass of leave-one-out (rows = budget // sequence length; no gradients are kept).
TOKEN_BUDGET = 8192
#: Tokens per forward/backward pass of the gradient baselines by default. A backward pass keeps every layer's
#: activations for each token of the pass: measured for SmolLM2-135M-Instruct (float32, one thread, a 152-token
#: chat prompt, IG with 1 and 4 sequences per pass) 1.5-1.6 MB a token, so the former 8,192-token passes took over
#: 12 GB; 2,048 tokens keep a pass near 3 GB there, with passes still large enough to batch well.
GRAD_TOKEN_BUDGET = 2048
#: Largest logits tensor (elements) leave-one-out builds in one pass: rows x generated tokens x vocabulary.
LOGITS_BUDGET = 2**25


class TargetLogit:
    """``f(word_embeddings (B, T, E), input_ids, positions, targets) -> (B,)``: row b's logit for ``targets[b]`` at
    ``positions[b]``, with the word-embedding output replaced by ``word_embeddings`` (a forward hook, as in
    :mod:`normxlogit.methods.gradients`, so the model adds positions and scaling itself)."""

    def __init__(self, model: PreTrainedModel, head: Head):
        self.model, self.head = model, head
        self.embedding = model.get_input_embeddings()

    def __call__(self, word_embeddings: Tensor, input_ids: Tensor, positions: Tensor, targets: Tensor) -> Tensor:
        calls = 0

        def replace(module, args, output):  # noqa: ARG001 - hook signature
            nonlocal calls
            calls += 1
            return word_embeddings.to(output.device, output.dtype) if calls == 1 else output

        handle = self.embedding.register_forward_hook(replace)
        try:
            hidden = last_hidden(self.model, input_ids)
        finally:
            handle.remove()
        rows = torch.arange(len(positions), device=hidden.device)
        picked = hidden[rows, positions.to(hidden.device)]
        # The head against only this chunk's target rows: (B, B), of which row b needs column b.
        return gathered_logits(self.head, picked, targets).diagonal()


def rows_per_pass(batch: GenerationBatch, batch_tokens: int | None, budget: int = TOKEN_BUDGET) -> int:
    """Sequences per forward/backward pass: ``batch_tokens`` (default ``budget``) // sequence length, at least 1."""
    budget = budget if batch_tokens is None else int(batch_tokens)
    if budget < 1:
        raise ValueError(f"batch_tokens must be at least 1, got {batch_tokens}.")
    return max(1, budget // batch.length)


def gradient_rows(batch: GenerationBatch, batch_tokens: int | None, internal_batch_size: int | str | None,
                  total: int) -> int:
    """Sequences per forward/backward pass of a gradient method, out of ``total``: ``internal_batch_size`` (an int),
    all ``total`` (None) or, for ``"auto"``, ``batch_tokens`` (default :data:`GRAD_TOKEN_BUDGET`) // length."""
    if internal_batch_size == "auto":
        return rows_per_pass(batch, batch_tokens, GRAD_TOKEN_BUDGET)
    if internal_batch_size is None:
        return max(1, total)
    if isinstance(internal_batch_size, bool) or not isinstance(internal_batch_size, (int, np.integer)) \
            or internal_batch_size < 1:
        raise ValueError(f"internal_batch_size must be 'auto', None or an int of at least 1, got "
                         f"{internal_batch_size!r}.")
    return int(internal_batch_size)


def gradient_attributions(batch: GenerationBatch, algorithm: str, *, n_steps: int = 50,
                          batch_tokens: int | None = None, internal_batch_size: int | str | None = "auto") -> Tensor:
    """Raw attributions (G, T, E) w.r.t. the word embeddings, row t for generated token t's logit.

    ``gradient_norm``: the gradient; ``grad_x_input``: embedding x gradient; ``integrated_gradients``: IG from a
    zero baseline with ``n_steps`` Gauss-Legendre nodes (captum's ``method="gausslegendre"``): embedding x the
    weighted sum of the gradients at the scaled embeddings. Every (generated token, step) pair is one sequence
    through the model; they run in passes of ``internal_batch_size`` sequences (:func:`gradient_rows`), and each
    pass's weighted gradients are added at once into a (G, T, E) float32 sum, so the peak memory is one pass's
    activations plus the result, whatever ``n_steps`` and the answer's length (sequences are independent, so the
    chunking changes nothing but memory and speed).
    """
    if algorithm not in ("gradient_norm", "grad_x_input", "integrated_gradients"):
        raise ValueError(f"Unknown gradient algorithm {algorithm!r}.")
    forward = TargetLogit(batch.model, batch.head)
    with torch.no_grad():
        embeddings = forward.embedding(batch.input_ids).detach()[0]  # (T, E)
    if algorithm == "integrated_gradients":
        if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
            raise ValueError(f"n_steps must be an int of at least 1, got {n_steps!r}.")
        nodes, weights = np.polynomial.legendre.leggauss(int(n_steps))
        alphas, weights = (nodes + 1) / 2, weights / 2  # the rule on [0, 1]
    else:
        alphas, weights = np.ones(1), np.ones(1)
    G, S = batch.num_generated, len(alphas)
    rows = gradient_rows(batch, batch_tokens, internal_batch_size, G * S)
    device = embeddings.device
    alpha = torch.tensor(alphas, dtype=embeddings.dtype, device=device)
    weight = torch.tensor(weights, dtype=torch.float32, device=device)
    positions, targets = batch.positions.to(device), batch.targets.to(device)
    total = torch.zeros((G, *embeddings.shape), dtype=torch.float32, device=device)
    pairs = torch.arange(G * S, device=device)
    for start in range(0, G * S, rows):
        chunk = pairs[start: start + rows]
        t, k = chunk // S, chunk % S
        inputs = (alpha[k, None, None] * embeddings[None]).requires_grad_()
        logits = forward(inputs, batch.input_ids.expand(len(chunk), -1), positions[t], targets[t])
        (grad,) = torch.autograd.grad(logits.sum(), inputs)
        total.index_add_(0, t, weight[k, None, None] * grad.float())
        del inputs, logits, grad
    return total if algorithm == "gradient_norm" else embeddings.float()[None] * total


def l1(attributions: Tensor) -> Tensor:
    """The L1 norm over the embedding dimension (G, T), on the CPU."""
    return attributions.float().abs().sum(-1).cpu()


@register_generation_method("gradient_norm", "L1 norm of d logit(y_t) / d word embedding, one backward per generated "
                            "token", signed=False, needs_grad=True)
def gradient_norm(batch: GenerationBatch, batch_tokens: int | None = None) -> Tensor:
    return l1(gradient_attributions(batch, "gradient_norm", batch_tokens=batch_tokens))


@register_generation_method("grad_x_input", "L1 norm of gradient × word embedding, one backward per generated token",
                            signed=False, needs_grad=True)
def grad_x_input(batch: GenerationBatch, batch_tokens: int | None = None) -> Tensor:
    return l1(gradient_attributions(batch, "grad_x_input", batch_tokens=batch_tokens))


def steps_meta(batch: GenerationBatch, options: dict[str, Any]) -> dict[str, Any]:  # noqa: ARG001 - meta signature
    return {"n_steps": int(options.get("n_steps", 50))}


@register_generation_method("integrated_gradients", "L1 norm of integrated gradients (zero baseline, 50 steps of "
                            "captum's Gauss-Legendre rule) per generated token", signed=False, needs_grad=True,
                            meta=steps_meta)
def integrated_gradients(batch: GenerationBatch, n_steps: int = 50, batch_tokens: int | None = None,
                         internal_batch_size: int | str | None = "auto") -> Tensor:
    """IG per generated token; ``internal_batch_size``: interpolated sequences per forward/backward pass (``"auto"``:
    ``batch_tokens``, default :data:`GRAD_TOKEN_BUDGET`, // the sequence length; None: all G x ``n_steps`` at once;
    an int). It bounds the peak memory and leaves the scores unchanged (:func:`gradient_attributions`)."""
    return l1(gradient_attributions(batch, "integrated_gradients", n_steps=n_steps, batch_tokens=batch_tokens,
                                    internal_batch_size=internal_batch_size))


# --- leave-one-out -------------------------------------------------------------------------------------------------
def loo_replacement(tokenizer: PreTrainedTokenizerBase, replacement: int | str | None) -> int | str:
    """The leave-one-out replacement: ``"delete"``, a token id, or by default the tokenizer's mask, unk or pad id."""
    if replacement is None:
        return replacement_token_id(tokenizer)
    if replacement == "delete":
        return "delete"
    if isinstance(replacement, (int, np.integer)) and 0 <= int(replacement) < len(tokenizer):
        return int(replacement)
    raise ValueError(f"replacement must be None, 'delete' or a token id in 0..{len(tokenizer) - 1}, "
                     f"not {replacement!r}.")


def loo_meta(batch: GenerationBatch, options: dict[str, Any]) -> dict[str, Any]:
    return {"replacement": loo_replacement(batch.tokenizer, options.get("replacement"))}


@register_generation_method("leave_one_out", "drop in each generated token's probability when source token i alone "
                            "is replaced (the mask, else unk, else pad token; replacement='delete' removes it); "
                            "variants batched", signed=True, meta=loo_meta)
def leave_one_out(batch: GenerationBatch, replacement: int | str | None = None,
                  batch_tokens: int | None = None) -> Tensor:
    """``p(y_t | x) - p(y_t | x with token i replaced)`` (G, T), from T - 1 variants in few forward passes.

    A decoder has no mask token, so by default token i is replaced by :func:`normxlogit.replacement_token_id` (the
    mask token, else unk, else pad: ``<|endoftext|>`` for SmolLM2); ``replacement="delete"`` removes it instead (the
    sequence is one token shorter and later tokens move up one position); an int uses that token id. Every variant
    is teacher-forced on the same continuation, so one pass scores token i for all generated tokens at once.
    """
    rep = loo_replacement(batch.tokenizer, replacement)
    ids = batch.input_ids[0]
    T, G = batch.length, batch.num_generated
    # The last token predicts nothing, so only positions 0..T-2 are left out; each variant drops it too.
    sources = torch.arange(T - 1, device=ids.device)
    base = ids[: T - 1]
    if rep == "delete":
        keep = torch.arange(T - 1, device=ids.device)[None, :].expand(T - 1, -1)
        keep = keep + (keep >= sources[:, None]).long()  # skip position i in row i
        variants = ids[keep][:, : T - 2]
        predicting = batch.positions - 1  # one token fewer before every generated token
    else:
        variants = base[None, :].repeat(T - 1, 1)
        variants[sources, sources] = rep
        predicting = batch.positions
    length = variants.shape[1]
    vocab = batch.model.get_output_embeddings().weight.shape[0]
    rows = min(rows_per_pass(batch, batch_tokens), max(1, LOGITS_BUDGET // ((G + 1) * vocab)))
    probs = []
    keep_n = min(G + 1, length)
    cols = (predicting - (length - keep_n)).cpu()  # column of each predicting position among the kept logits
    ok = cols >= 0  # False only when deletion leaves no token before the generated one
    with torch.no_grad():
        for start in range(0, T - 1, rows):
            chunk = variants[start: start + rows]
            if length == 0:  # a one-token prompt and one generated token, deleted: no context left
                probs.append(torch.full((len(chunk), G), float("nan")))
                continue
            _, logits = model_logits(batch.model, chunk, keep_n)
            logp = logits.float().log_softmax(-1)
            wanted = batch.targets.cpu()[ok].to(logp.device)[None, :, None].expand(len(chunk), -1, 1)
            picked = torch.full((len(chunk), G), float("nan"))
            picked[:, ok] = logp[:, cols[ok].to(logp.device)].gather(-1, wanted).squeeze(-1).exp().cpu()
            probs.append(picked)
    masked = torch.cat(probs)  # (T - 1, G): variant i, generated token t
    scores = torch.full((G, T), float("nan"))
    scores[:, : T - 1] = batch.target_probs.float().cpu()[:, None] - masked.T
    return scores
