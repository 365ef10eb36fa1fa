"""Gradient baselines through captum: gradient norm, Gradient x Input, Integrated Gradients.

Gradient methods attribute the explained output (the logit of the target class at the pooled position, the
regression output, or an LM's logit for the target token at the explained position) to the **output of the word
embedding layer** (``model.get_input_embeddings()``). The model runs on its usual ``input_ids`` while a forward hook
swaps that layer's output for the tensor being attributed, so the model itself adds positions, token types and any
embedding scaling exactly once. (The authors fed ``hidden_states[0]`` back in as ``inputs_embeds``, which added
position and type embeddings a second time.) The paper reduces the scores to one per token by the L1 norm over the
hidden dimension (unsigned); the ``_signed`` variants sum over it instead, as captum's tutorials and ferret do, so a
token that lowers the explained output scores below zero.

- ``gradient_norm``: ``|| d y / d e_i ||_1`` (saliency).
- ``grad_x_input``: ``|| e_i * d y / d e_i ||_1``; ``grad_x_input_signed``: ``sum_d e_id * d y / d e_id``.
- ``integrated_gradients``: ``|| IG_i ||_1`` with ``n_steps=50`` (captum's Gauss-Legendre rule);
  ``integrated_gradients_signed``: ``sum_d IG_id`` (by completeness the scores then sum to ``f(x) - f(baseline)``).
  ``baseline``: ``"zero"`` (the paper's, default), ``"pad"`` or ``"mask"`` (every token but the special ones and
  the padding replaced by the pad or mask token's embedding, as in captum's BERT tutorial).
  ``internal_batch_size`` bounds how many interpolated inputs go through the model at once (default ``"auto"``:
  about 8,192 tokens per pass, so long inputs and large batches fit in memory; ``None``: all at once).
"""

from __future__ import annotations

from typing import Callable

import torch
from captum.attr import InputXGradient, IntegratedGradients, Saliency
from torch import Tensor
from transformers import PreTrainedModel

from ..core.inputs import replacement_token_id
from ..core.label_words import LabelWordHead
from ..core.registry import Batch, register_method

#: The baselines integrated gradients can start from.
IG_BASELINES = ("zero", "pad", "mask")


class EmbeddingForward:
    """``f(word_embeddings, input_ids, ...) -> logits (B, C)``: the model with its word-embedding output replaced.

    ``word_embeddings`` is what ``model.get_input_embeddings()(input_ids)`` returns, (B, T, E). Every other input goes
    through the model's normal path, so ``f(model.get_input_embeddings()(ids), ids, mask, ...)`` equals the model's
    own logits. For LMs, ``positions`` picks the explained position of each row; ``columns`` (a prompted LM's
    label-word ids) keeps only those logits, so that the targets are class indices, and then only the explained
    positions reach the output embedding (no full-vocabulary product at every position).
    """

    def __init__(self, model: PreTrainedModel, input_names: tuple[str, ...], columns: list[int] | None = None):
        self.model = model
        self.embedding = model.get_input_embeddings()
        self.input_names = input_names  # the model inputs passed positionally after the embeddings (input_ids first)
        self.columns = columns

    def __call__(self, word_embeddings: Tensor, *args: Tensor) -> Tensor:
        *values, positions = args
        inputs = dict(zip(self.input_names, values))

        calls = 0

        def replace(module, module_inputs, output):  # noqa: ARG001 - hook signature
            # Only the first lookup is the word embedding: GPT-2 looks token types up in the same table afterwards.
            nonlocal calls
            calls += 1
            if calls > 1:
                return output
            if output.shape != word_embeddings.shape:
                raise RuntimeError(f"Embedding output {tuple(output.shape)} does not match the attributed tensor "
                                   f"{tuple(word_embeddings.shape)}.")
            return word_embeddings

        def last_only(module, args):  # label words: the output embedding reads the explained positions only
            x = args[0]
            rows = torch.arange(len(x), device=x.device)
            return (x[rows, positions.to(x.device)].unsqueeze(1),) + tuple(args[1:])

        decoder = self.model.get_output_embeddings() if self.columns is not None else None
        handles = [self.embedding.register_forward_hook(replace)]
        if decoder is not None:
            handles.append(decoder.register_forward_pre_hook(last_only))
        try:
            logits = self.model(**inputs).logits
        finally:
            for handle in handles:
                handle.remove()
        if logits.dim() == 3:  # LMs: the output at the explained position
            logits = logits[:, 0] if decoder is not None else logits[torch.arange(len(logits), device=logits.device),
                                                                      positions]
        if self.columns is not None:
            logits = logits[:, torch.as_tensor(self.columns, device=logits.device)]
        return logits

    def arguments(self, batch: Batch) -> tuple[Tensor, tuple[Tensor, ...]]:
        """The word embeddings of ``batch`` (detached) and the extra forward arguments, in captum's form."""
        extra = tuple(batch.inputs[name] for name in self.input_names) + (batch.positions,)
        with torch.no_grad():
            embeddings = self.embedding(batch.inputs["input_ids"])
        return embeddings.detach().requires_grad_(), extra


def embedding_forward(batch: Batch) -> EmbeddingForward:
    """The :class:`EmbeddingForward` of ``batch.model`` with the inputs this batch carries."""
    names = ("input_ids",) + tuple(k for k in batch.inputs if k != "input_ids")
    columns = batch.head.label_ids if isinstance(batch.head, LabelWordHead) else None
    return EmbeddingForward(batch.model, names, columns)


def _attribute(batch: Batch, make: Callable[[EmbeddingForward], object], **kwargs) -> Tensor:
    """Raw attributions (B, T, E) w.r.t. the word embeddings, for the batch's targets."""
    forward = embedding_forward(batch)
    embeddings, extra = forward.arguments(batch)
    algorithm = make(forward)
    return algorithm.attribute(embeddings, target=batch.targets, additional_forward_args=extra, **kwargs)


def raw_gradients(batch: Batch) -> Tensor:
    """d(target output)/d(word embeddings), (B, T, E)."""
    return _attribute(batch, Saliency, abs=False)


def raw_grad_x_input(batch: Batch) -> Tensor:
    """Word embeddings times the gradient, (B, T, E)."""
    return _attribute(batch, InputXGradient)


#: ``internal_batch_size="auto"`` keeps each forward/backward pass of integrated gradients near this many tokens of
#: a model of MiniLM's width times depth (384 x 6); a wider or deeper model gets proportionally fewer (see
#: :func:`ig_token_budget`), since activation memory per token grows with both (SmolLM2-135M: 576 x 30, about
#: 1.5 MB per token with its gradients, so 8,192 tokens took 12+ GB).
IG_TOKEN_BUDGET = 8192
_IG_REFERENCE_SIZE = 384 * 6


def ig_token_budget(model) -> int:
    """Tokens per integrated-gradients pass for ``model``: :data:`IG_TOKEN_BUDGET` scaled by MiniLM's hidden size x
    layers over the model's (never more than the budget; at least 256)."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    size = (getattr(config, "hidden_size", 0) or 0) * (getattr(config, "num_hidden_layers", 0) or 0)
    if size <= 0:
        return IG_TOKEN_BUDGET
    return max(256, min(IG_TOKEN_BUDGET, IG_TOKEN_BUDGET * _IG_REFERENCE_SIZE // size))


def ig_baseline(batch: Batch, baseline: str = "zero") -> Tensor | float:
    """The starting point of integrated gradients in word-embedding space: ``0.0`` or a (B, T, E) tensor.

    ``"pad"`` / ``"mask"``: the word embeddings of the input with every content token replaced by the tokenizer's pad
    or mask token; special tokens ([CLS], [SEP], <s>...) and padding keep their own.
    """
    if baseline not in IG_BASELINES:
        raise ValueError(f"baseline must be one of {', '.join(IG_BASELINES)}, not {baseline!r}.")
    if baseline == "zero":
        return 0.0
    token = replacement_token_id(batch.tokenizer, baseline)  # a clear error when the tokenizer has no such token
    content = ~batch.special_tokens_mask.bool() & batch.attention_mask.bool()
    ids = torch.where(content, torch.full_like(batch.input_ids, token), batch.input_ids)
    with torch.no_grad():
        return batch.model.get_input_embeddings()(ids).detach()


def raw_integrated_gradients(batch: Batch, n_steps: int = 50, internal_batch_size: int | str | None = "auto",
                             method: str = "gausslegendre", baseline: str = "zero") -> Tensor:
    """Integrated gradients in word-embedding space from ``baseline`` (see :func:`ig_baseline`), (B, T, E).

    ``internal_batch_size``: rows (examples x interpolation steps) per forward/backward pass. ``"auto"`` (default)
    keeps a pass near :func:`ig_token_budget` tokens (at least one step of every example); ``None`` runs all
    ``B * n_steps`` rows at once (captum's default, the paper's setting: fast on a large GPU, memory-hungry on long
    inputs); an int sets it. The result does not depend on it.
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be at least 1, got {n_steps}.")
    if internal_batch_size == "auto":
        rows, length = batch.input_ids.shape
        internal_batch_size = max(rows, ig_token_budget(batch.model) // max(length, 1))
    elif internal_batch_size is not None and (not isinstance(internal_batch_size, int) or internal_batch_size < 1):
        raise ValueError(f"internal_batch_size must be 'auto', None or an int of at least 1, got {internal_batch_size!r}.")
    return _attribute(batch, IntegratedGradients, baselines=ig_baseline(batch, baseline), n_steps=n_steps,
                      internal_batch_size=internal_batch_size, method=method)


def _l1(attributions: Tensor) -> Tensor:
    return attributions.detach().float().abs().sum(-1)


def _summed(attributions: Tensor) -> Tensor:
    return attributions.detach().float().sum(-1)


@register_method("gradient_norm", description="L1 norm of the gradient w.r.t. the word embedding (saliency; captum)",
                 signed=False, needs_grad=True)
def gradient_norm_scores(batch: Batch) -> Tensor:
    return _l1(raw_gradients(batch))


@register_method("grad_x_input", description="L1 norm of gradient × word embedding (captum)", signed=False,
                 needs_grad=True)
def grad_x_input_scores(batch: Batch) -> Tensor:
    return _l1(raw_grad_x_input(batch))


@register_method("grad_x_input_signed", description="gradient × word embedding summed over the hidden dimension "
                 "(signed; captum)", signed=True, needs_grad=True)
def grad_x_input_signed_scores(batch: Batch) -> Tensor:
    return _summed(raw_grad_x_input(batch))


@register_method("integrated_gradients",
                 description="L1 norm of integrated gradients, zero baseline, 50 steps (captum; baseline=, "
                 "internal_batch_size=)", signed=False, needs_grad=True)
def integrated_gradients_scores(batch: Batch, n_steps: int = 50, internal_batch_size: int | str | None = "auto",
                                baseline: str = "zero") -> Tensor:
    return _l1(raw_integrated_gradients(batch, n_steps=n_steps, internal_batch_size=internal_batch_size,
                                        baseline=baseline))


@register_method("integrated_gradients_signed",
                 description="integrated gradients summed over the hidden dimension (signed), zero baseline, 50 steps "
                 "(captum; baseline='zero'|'pad'|'mask', internal_batch_size=)", signed=True, needs_grad=True)
def integrated_gradients_signed_scores(batch: Batch, n_steps: int = 50,
                                       internal_batch_size: int | str | None = "auto", baseline: str = "zero") -> Tensor:
    return _summed(raw_integrated_gradients(batch, n_steps=n_steps, internal_batch_size=internal_batch_size,
                                            baseline=baseline))
