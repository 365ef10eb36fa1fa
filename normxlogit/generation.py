"""Attributing a causal LM's generation: every generated token to every earlier token, from one forward pass.

For a sequence y_1..y_T (the prompt, then the generated tokens), position i's final hidden state h_i is what the LM
head reads to predict token i+1. For a generated token at position p, ``LogAt[t, i] = head(h_i)[y_p]`` for every
i < p: the logit that token i's own representation gives to y_p. At i = p - 1 it is the model's own logit for y_p
(the invariant, checked on every call). ``NormXLogit[t, i] = ||h_i^0|| * LogAt[t, i]``.

:func:`explain_generation` generates greedily (or teacher-forces a given continuation), runs ONE forward pass over
prompt + continuation, and reads the head on all T positions against only the G gathered unembedding rows of the
generated tokens (a (T, H) x (H, G) product; the full-vocabulary logits are never formed at every position). The
baselines (gradient norm, Gradient x Input, Integrated Gradients, leave-one-out) return the same
:class:`GenerationAttribution`; they cost one backward pass (fifty for IG) per generated token, or one forward pass per
source token.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import html
import inspect
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from .core.heads import Head, resolve_head
from .core.inputs import replacement_token_id
from .models import detect_task

__all__ = [
    "GENERATION_METHODS", "GenerationAttribution", "GenerationBatch", "GenerationInvariantError", "explain_generation",
    "gathered_logits", "list_generation_methods",
]

NORM_SOURCES = ("embedding_output", "word_embedding")
#: Relative tolerance of the run-time invariant check, by the dtype of the hidden states.
INVARIANT_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-6, torch.float16: 1e-2, torch.bfloat16: 3e-2}
#: Tokens per forward/backward pass of the gradient and occlusion baselines (rows = budget // sequence length).
TOKEN_BUDGET = 8192
#: Largest logits tensor (elements) leave-one-out builds in one pass: rows x generated tokens x vocabulary.
LOGITS_BUDGET = 2**25


class GenerationInvariantError(RuntimeError):
    """The head read on the position before a generated token did not reproduce the model's own logit for it."""


# --- reading the head against a few unembedding rows ---------------------------------------------------------------
@contextlib.contextmanager
def _output_rows(model: nn.Module, ids: Tensor) -> Iterator[bool]:
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

    A variant of :func:`normxlogit.evidence.id_logits` that runs the whole head reader (not only up to the output
    embedding), so elementwise post-processing such as logit soft-capping applies to the gathered logits too. Falls
    back to the full head and a gather when the head does not end in a linear output embedding (a user's head).
    """
    ids = ids.reshape(-1)
    with _output_rows(head.model, ids) as restricted:
        out = head(states, intermediate=intermediate)
    if restricted and out.shape[-1] == len(ids):
        return out.float()
    return out[..., ids.to(out.device)].float()


# --- the forward pass every method reads ---------------------------------------------------------------------------
@dataclass
class GenerationBatch:
    """One sequence (prompt + continuation) after the forward pass, as every generation method sees it.

    ``input_ids`` (1, T); the generated tokens are positions ``prompt_length..T-1``. ``target_logits`` and
    ``target_probs`` (G,) are the model's own logit and probability of each generated token (read at the position
    before it); ``hidden_states[l]`` (1, T, H) is layer ``l``'s output (0 = embedding output).
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    head: Head
    input_ids: Tensor
    prompt_length: int
    hidden_states: tuple[Tensor, ...]
    target_logits: Tensor
    target_probs: Tensor
    layer: int
    norm_source: str = "embedding_output"

    @property
    def length(self) -> int:
        return self.input_ids.shape[1]

    @property
    def num_generated(self) -> int:
        return self.length - self.prompt_length

    @property
    def num_layers(self) -> int:
        return len(self.hidden_states) - 1

    @property
    def targets(self) -> Tensor:
        """The generated token ids (G,)."""
        return self.input_ids[0, self.prompt_length:]

    @property
    def positions(self) -> Tensor:
        """The position that predicts each generated token (G,): the one just before it."""
        return torch.arange(self.num_generated, device=self.input_ids.device) + self.prompt_length - 1

    def valid(self) -> Tensor:
        """(G, T) True where source position i is before generated token t."""
        cols = torch.arange(self.length)
        return cols[None, :] < (cols[self.prompt_length:, None])


def _model_logits(model: PreTrainedModel, input_ids: Tensor, keep: int, *, hidden: bool = False):
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


def _invariant_gap(batch: GenerationBatch) -> float:
    """Check LogAt at i = p - 1 against the model's own logits; the largest relative gap. Raises when too large."""
    last = batch.hidden_states[batch.num_layers]
    final = last[0, batch.positions.to(last.device)]  # (G, H)
    read = gathered_logits(batch.head, final, batch.targets).diagonal()
    own = batch.target_logits.to(read.device)
    gaps = (read - own).abs() / own.abs().clamp(min=1.0)
    worst = int(gaps.argmax())
    gap = float(gaps[worst])
    dtype = batch.hidden_states[-1].dtype
    tolerance = INVARIANT_TOLERANCE.get(dtype, 3e-2)
    if not gap <= tolerance:  # also catches NaN
        model = batch.model
        token = batch.tokenizer.convert_ids_to_tokens(int(batch.targets[worst]))
        raise GenerationInvariantError(
            f"LogAt does not reproduce the model's own logits for this {type(model).__name__} "
            f"(model_type={getattr(model.config, 'model_type', '?')!r}, {dtype}): for generated token {worst} "
            f"({token!r}) the head read on the previous position gives {float(read[worst]):.6g}, the model's own "
            f"logit is {float(own[worst]):.6g} (relative gap {gap:.2e} > {tolerance:.0e}). The head reader misses "
            "something the model applies after its last layer (final norm, logit soft-capping or scaling): pass "
            "head=callable(hidden (N, H)) -> logits (N, vocab), or fix the family's entry in normxlogit.heads.HEADS."
        )
    return gap


# --- methods -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GenerationMethod:
    """A generation attribution method: ``fn(batch, **options) -> Tensor (G, T)``."""

    name: str
    fn: Callable[..., Tensor]
    description: str
    signed: bool
    needs_grad: bool = False
    layerwise: bool = False


GENERATION_METHODS: dict[str, GenerationMethod] = {}


def _register(name: str, description: str, *, signed: bool, needs_grad: bool = False, layerwise: bool = False):
    def decorate(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        GENERATION_METHODS[name] = GenerationMethod(name, fn, description, signed, needs_grad, layerwise)
        return fn

    return decorate


def list_generation_methods() -> list[str]:
    """Names of the methods :func:`explain_generation` accepts."""
    return sorted(GENERATION_METHODS)


def generation_norms(batch: GenerationBatch) -> Tensor:
    """ℓ2-norm of every source token's input vector (T,): ``hidden_states[0]`` or the raw word-embedding row."""
    if batch.norm_source == "embedding_output":
        vectors = batch.hidden_states[0][0]
    else:
        vectors = batch.model.get_input_embeddings()(batch.input_ids)[0]
    return torch.linalg.vector_norm(vectors.float(), dim=-1).cpu()


def generation_logat(batch: GenerationBatch, layer: int | None = None) -> Tensor:
    """LogAt (G, T): each generated token's logit read on every position's hidden state at ``layer``.

    One (T, H) x (H, G) product against the generated tokens' unembedding rows; intermediate layers get the final
    norm first (a logit lens).
    """
    layer = batch.layer if layer is None else layer
    states = batch.hidden_states[layer][0]
    return gathered_logits(batch.head, states, batch.targets, intermediate=layer < batch.num_layers).T.cpu()


@_register("normxlogit", "ℓ2-norm of the input embedding × LogAt, every generated token from one forward pass",
           signed=True, layerwise=True)
def _normxlogit(batch: GenerationBatch) -> Tensor:
    return generation_norms(batch)[None, :] * generation_logat(batch)


@_register("logat", "the head's logit for each generated token read on every earlier position (one forward pass)",
           signed=True, layerwise=True)
def _logat(batch: GenerationBatch) -> Tensor:
    return generation_logat(batch)


@_register("norm", "ℓ2-norm of each source token's input embedding (the same for every generated token)",
           signed=False)
def _norm(batch: GenerationBatch) -> Tensor:
    return generation_norms(batch)[None, :].expand(batch.num_generated, -1)


class _TargetLogit:
    """``f(word_embeddings (B, T, E), input_ids, positions, targets) -> (B,)``: row b's logit for ``targets[b]`` at
    ``positions[b]``, with the word-embedding output replaced by ``word_embeddings`` (a forward hook, as in
    :mod:`normxlogit.baselines`, so the model adds positions and scaling itself)."""

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
            hidden = _last_hidden(self.model, input_ids)
        finally:
            handle.remove()
        rows = torch.arange(len(positions), device=hidden.device)
        picked = hidden[rows, positions.to(hidden.device)]
        # The head against only this chunk's target rows: (B, B), of which row b needs column b.
        return gathered_logits(self.head, picked, targets).diagonal()


def _last_hidden(model: PreTrainedModel, input_ids: Tensor) -> Tensor:
    """The final hidden states (B, T, H) as the head reads them, without computing any logits."""
    base = model.base_model
    mask = torch.ones_like(input_ids)
    if base is model:
        return model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    kwargs = {"use_cache": False} if "use_cache" in inspect.signature(base.forward).parameters else {}
    return base(input_ids=input_ids, attention_mask=mask, **kwargs).last_hidden_state


def _rows_per_pass(batch: GenerationBatch, batch_tokens: int | None) -> int:
    budget = TOKEN_BUDGET if batch_tokens is None else int(batch_tokens)
    if budget < 1:
        raise ValueError(f"batch_tokens must be at least 1, got {batch_tokens}.")
    return max(1, budget // batch.length)


def _gradient_attributions(batch: GenerationBatch, algorithm: str, *, n_steps: int = 50,
                           batch_tokens: int | None = None) -> Tensor:
    """Raw captum attributions (G, T, E) w.r.t. the word embeddings, row t for generated token t's logit.

    Row t is its own backward pass (rows are independent, so batching them changes nothing but speed).
    """
    from captum.attr import InputXGradient, IntegratedGradients, Saliency

    forward = _TargetLogit(batch.model, batch.head)
    with torch.no_grad():
        embeddings = forward.embedding(batch.input_ids).detach()
    G = batch.num_generated
    ids, positions, targets = batch.input_ids.expand(G, -1), batch.positions, batch.targets
    rows = _rows_per_pass(batch, batch_tokens)
    if algorithm == "integrated_gradients":
        if not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
            raise ValueError(f"n_steps must be an int of at least 1, got {n_steps!r}.")
        per_chunk = max(1, rows // n_steps)  # generated tokens whose n_steps interpolations fit in one pass
        attribute = functools.partial(IntegratedGradients(forward).attribute, baselines=0.0, n_steps=n_steps,
                                      internal_batch_size=max(rows, 2 * per_chunk), method="gausslegendre")
    else:
        per_chunk = rows
        algo = Saliency(forward) if algorithm == "gradient_norm" else InputXGradient(forward)
        attribute = functools.partial(algo.attribute, abs=False) if algorithm == "gradient_norm" else algo.attribute
    parts = []
    for start in range(0, G, per_chunk):
        sel = slice(start, start + per_chunk)
        inputs = embeddings.expand(len(targets[sel]), -1, -1).clone().requires_grad_()
        parts.append(attribute(inputs, additional_forward_args=(ids[sel], positions[sel], targets[sel])).detach())
    return torch.cat(parts)


def _l1(attributions: Tensor) -> Tensor:
    return attributions.float().abs().sum(-1).cpu()


@_register("gradient_norm", "L1 norm of d logit(y_t) / d word embedding, one backward per generated token (captum)",
           signed=False, needs_grad=True)
def _gradient_norm(batch: GenerationBatch, batch_tokens: int | None = None) -> Tensor:
    return _l1(_gradient_attributions(batch, "gradient_norm", batch_tokens=batch_tokens))


@_register("grad_x_input", "L1 norm of gradient × word embedding, one backward per generated token (captum)",
           signed=False, needs_grad=True)
def _grad_x_input(batch: GenerationBatch, batch_tokens: int | None = None) -> Tensor:
    return _l1(_gradient_attributions(batch, "grad_x_input", batch_tokens=batch_tokens))


@_register("integrated_gradients", "L1 norm of integrated gradients (zero baseline, 50 steps) per generated token "
           "(captum)", signed=False, needs_grad=True)
def _integrated_gradients(batch: GenerationBatch, n_steps: int = 50, batch_tokens: int | None = None) -> Tensor:
    return _l1(_gradient_attributions(batch, "integrated_gradients", n_steps=n_steps, batch_tokens=batch_tokens))


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


@_register("leave_one_out", "drop in each generated token's probability when source token i alone is replaced "
           "(the mask, else unk, else pad token; replacement='delete' removes it); variants batched", signed=True)
def _leave_one_out(batch: GenerationBatch, replacement: int | str | None = None,
                   batch_tokens: int | None = None) -> Tensor:
    """``p(y_t | x) - p(y_t | x with token i replaced)`` (G, T), from T - 1 variants in few forward passes.

    A decoder has no mask token, so by default token i is replaced by :func:`normxlogit.replacement_token_id` (the
    mask token, else unk, else pad: ``<|endoftext|>`` for SmolLM2); ``replacement="delete"`` removes it instead (the
    sequence is one token shorter and later tokens move up one position); an int uses that token id. Every variant
    is teacher-forced on the same continuation, so one pass scores token i for all generated tokens at once.
    """
    rep = loo_replacement(batch.tokenizer, replacement)
    ids = batch.input_ids[0]
    T, P, G = batch.length, batch.prompt_length, batch.num_generated
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
    rows = min(_rows_per_pass(batch, batch_tokens), max(1, LOGITS_BUDGET // ((G + 1) * vocab)))
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
            _, logits = _model_logits(batch.model, chunk, keep_n)
            logp = logits.float().log_softmax(-1)
            wanted = batch.targets.cpu()[ok].to(logp.device)[None, :, None].expand(len(chunk), -1, 1)
            picked = torch.full((len(chunk), G), float("nan"))
            picked[:, ok] = logp[:, cols[ok].to(logp.device)].gather(-1, wanted).squeeze(-1).exp().cpu()
            probs.append(picked)
    masked = torch.cat(probs)  # (T - 1, G): variant i, generated token t
    scores = torch.full((G, T), float("nan"))
    scores[:, : T - 1] = batch.target_probs.float().cpu()[:, None] - masked.T
    return scores


# --- the result ----------------------------------------------------------------------------------------------------
def _json_floats(values: np.ndarray) -> list:
    """Nested lists with NaN (and inf) as ``None``: strict JSON."""
    array = np.asarray(values, dtype=np.float64)
    return np.where(np.isfinite(array), array, None).tolist()


def _display(token: str) -> str:
    return token.replace("\n", "⏎").replace("\t", "⇥").replace("\r", "")


@dataclass
class GenerationAttribution:
    """Every generated token attributed to every earlier token.

    ``source_tokens`` are the prompt's tokens then the continuation's, as text pieces (``source_ids`` their ids); the
    generated tokens are ``source_tokens[prompt_length:]``. ``scores[t, i]`` (G x T) is the score of source position
    i for generated token t; NaN where i is not before t. ``target_logits[t]`` and ``target_probs[t]`` are the
    model's own logit and probability of generated token t at the position before it.
    """

    source_tokens: list[str]
    source_ids: list[int]
    prompt_length: int
    scores: np.ndarray
    target_logits: np.ndarray
    target_probs: np.ndarray
    method: str
    layer: int | None = None
    prompt: str = ""
    generated_text: str = ""
    special_tokens_mask: list[int] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64)
        self.target_logits = np.asarray(self.target_logits, dtype=np.float64)
        self.target_probs = np.asarray(self.target_probs, dtype=np.float64)
        if not self.special_tokens_mask:
            self.special_tokens_mask = [0] * len(self.source_tokens)
        T, G = len(self.source_tokens), len(self.source_tokens) - self.prompt_length
        if not (len(self.source_ids) == len(self.special_tokens_mask) == T and 1 <= self.prompt_length < T):
            raise ValueError("source_tokens, source_ids and special_tokens_mask must have one entry per token, after "
                             "a prompt of at least one token and at least one generated token.")
        if self.scores.shape != (G, T) or self.target_logits.shape != (G,) or self.target_probs.shape != (G,):
            raise ValueError(f"scores must be (generated, source) = ({G}, {T}) and target_logits/probs ({G},); got "
                             f"{self.scores.shape}, {self.target_logits.shape}, {self.target_probs.shape}.")

    # --- views ---------------------------------------------------------------------------------------------------
    @property
    def generated_tokens(self) -> list[str]:
        return self.source_tokens[self.prompt_length:]

    @property
    def generated_ids(self) -> list[int]:
        return self.source_ids[self.prompt_length:]

    @property
    def prompt_tokens(self) -> list[str]:
        return self.source_tokens[: self.prompt_length]

    @property
    def signed(self) -> bool:
        method = GENERATION_METHODS.get(self.method)
        return method.signed if method else bool(np.nanmin(self.scores) < 0)

    def __len__(self) -> int:
        return len(self.generated_tokens)

    def _step(self, step: int) -> int:
        G = len(self)
        if not -G <= step < G:
            raise IndexError(f"step {step} is out of range for {G} generated tokens.")
        return step % G

    def top(self, step: int, k: int = 5, *, include_special: bool = False) -> list[tuple[int, str, float]]:
        """The ``k`` highest-scoring source positions for generated token ``step``: (position, token, score)."""
        row = self.scores[self._step(step)]
        ok = np.isfinite(row) & (include_special | ~np.asarray(self.special_tokens_mask, dtype=bool))
        positions = np.flatnonzero(ok)
        order = positions[np.argsort(-row[positions], kind="stable")][:k]
        return [(int(i), self.source_tokens[i], float(row[i])) for i in order]

    def to_dataframe(self, *, wide: bool = False) -> pd.DataFrame:
        """Long format (one row per generated token and earlier source token), or ``wide``: generated x source."""
        if wide:
            return pd.DataFrame(self.scores, index=[f"{t}:{tok}" for t, tok in enumerate(self.generated_tokens)],
                                columns=[f"{i}:{tok}" for i, tok in enumerate(self.source_tokens)])
        G = len(self)
        steps, sources = np.nonzero(np.isfinite(self.scores))
        return pd.DataFrame({
            "step": steps,
            "generated_position": steps + self.prompt_length,
            "generated_token": [self.generated_tokens[t] for t in steps],
            "source_position": sources,
            "source_token": [self.source_tokens[i] for i in sources],
            "in_prompt": sources < self.prompt_length,
            "special": np.asarray(self.special_tokens_mask, dtype=bool)[sources],
            "score": self.scores[steps, sources],
            "target_logit": self.target_logits[steps],
            "target_prob": self.target_probs[steps],
        }, index=pd.RangeIndex(len(steps))) if G else pd.DataFrame()

    def _heading(self) -> str:
        parts = [f"method={self.method}"]
        if self.layer is not None:
            parts.append(f"layer={self.layer}")
        for key in ("model_type", "dtype"):
            if key in self.meta:
                parts.append(f"{key}={self.meta[key]}")
        return ", ".join(parts)

    def __str__(self) -> str:
        width = min(max((len(repr(t)) for t in self.generated_tokens), default=5), 16)
        lines = [
            f"GenerationAttribution({self._heading()})",
            f"prompt ({self.prompt_length} tokens): {self.prompt!r}",
            f"generated ({len(self)} tokens): {self.generated_text!r}",
            f"{'step':>4}  {'token':<{width}}  {'prob':>6}  {'logit':>8}  top sources",
        ]
        for t, token in enumerate(self.generated_tokens):
            top = ", ".join(f"{tok!r} ({score:+.3g})" for _, tok, score in self.top(t, 3))
            lines.append(f"{t:>4}  {repr(token)[:width]:<{width}}  {self.target_probs[t]:6.3f}  "
                         f"{self.target_logits[t]:8.3f}  {top}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"GenerationAttribution(method={self.method!r}, prompt_tokens={self.prompt_length}, "
                f"generated={self.generated_text!r})")

    # --- HTML ----------------------------------------------------------------------------------------------------
    def _colour(self, value: float) -> tuple[str, str]:
        """Background and text colour for a score scaled to [-1, 1]."""
        if not np.isfinite(value):
            return "#f2f2f2", "#999"
        strength = min(abs(float(value)), 1.0)
        if value >= 0:
            rgb = "214, 39, 40" if self.signed else "31, 119, 180"
        else:
            rgb = "31, 119, 180"
        return f"rgba({rgb}, {strength:.3f})", "white" if strength > 0.6 else "black"

    def _row_scaled(self, step: int) -> np.ndarray:
        row = self.scores[step]
        content = row[np.isfinite(row) & ~np.asarray(self.special_tokens_mask, dtype=bool)]
        if content.size == 0:
            content = row[np.isfinite(row)]
        scale = float(np.max(np.abs(content))) if content.size else 0.0
        return row / scale if scale > 0 else np.where(np.isfinite(row), 0.0, np.nan)

    def _step_view(self, step: int) -> str:
        """The text up to generated token ``step``, each token coloured by its score for it; the token outlined."""
        scaled = self._row_scaled(step)
        position = self.prompt_length + step
        spans = []
        for i in range(position + 1):
            token = self.source_tokens[i]
            if i == position:
                style = "outline:2px solid #222;background:#ffe97a;color:black"
                title = f"generated token {step}: p={self.target_probs[step]:.3g}, logit={self.target_logits[step]:.4g}"
            else:
                background, colour = self._colour(scaled[i])
                style = f"background:{background};color:{colour}"
                title = f"{i}: {self.scores[step, i]:.4g}"
            if self.special_tokens_mask[i]:
                style += ";font-style:italic;opacity:0.75"
            if i == self.prompt_length and i != position:
                style += ";border-left:2px solid #888"
            spans.append(f'<span class="nxg-tok" title="{html.escape(title)}" style="{style}">'
                         f"{html.escape(_display(token))}</span>")
            if "\n" in token:
                spans.append("<br>")
        return "".join(spans)

    def to_html(self, step: int | None = 0) -> str:
        """A per-step view (the text coloured for each generated token; ``step`` is shown open) and a heatmap matrix.

        Colours are scaled per generated token (row), since logit scales differ between steps. Pure HTML and CSS:
        it renders in notebooks, in the built book and in a saved file; tokens wrap on narrow screens and the
        matrix scrolls sideways.
        """
        open_step = None if step is None else self._step(step)
        legend = ("red = raises the generated token's score, blue = lowers it" if self.signed
                  else "darker = higher score")
        steps = []
        for t, token in enumerate(self.generated_tokens):
            summary = (f"step {t}: {html.escape(repr(token))} &nbsp;p={self.target_probs[t]:.3f}, "
                       f"logit={self.target_logits[t]:.3f}")
            opened = " open" if t == open_step else ""
            steps.append(f'<details{opened}><summary style="cursor:pointer">{summary}</summary>'
                         f'<div class="nxg-text">{self._step_view(t)}</div></details>')
        header = "".join(
            f'<th title="{i}: {html.escape(tok)}" class="nxg-col{" nxg-gen" if i >= self.prompt_length else ""}">'
            f"<div>{html.escape(_display(tok))}</div></th>" for i, tok in enumerate(self.source_tokens))
        body = []
        for t, token in enumerate(self.generated_tokens):
            scaled = self._row_scaled(t)
            cells = []
            for i in range(len(self.source_tokens)):
                background, _ = self._colour(scaled[i])
                value = self.scores[t, i]
                title = f"{html.escape(repr(token))} ← {html.escape(repr(self.source_tokens[i]))}: " + (
                    f"{value:.4g}" if np.isfinite(value) else "not before")
                cells.append(f'<td title="{title}" style="background:{background}"></td>')
            body.append(f'<tr><th class="nxg-row">{t}: {html.escape(_display(token))}</th>{"".join(cells)}</tr>')
        style = (
            "<style>.nxg{font-family:sans-serif;max-width:100%}.nxg-text{line-height:2em;overflow-wrap:anywhere;"
            "margin:0.3em 0 0.6em}.nxg-tok{white-space:pre;display:inline-block;max-width:100%;overflow:hidden;"
            "padding:0 2px;margin:1px;border-radius:3px;font-family:monospace;line-height:1.6em}.nxg-matrix{overflow-x:auto;max-width:100%}.nxg table{border-collapse:collapse;"
            "font-size:0.75em}.nxg td{min-width:1.1em;height:1.1em;padding:0;border:1px solid #fff}"
            ".nxg-col{vertical-align:bottom;padding:0 1px}.nxg-col div{writing-mode:vertical-rl;transform:rotate(180deg);"
            "white-space:pre;font-family:monospace;font-weight:normal;max-height:10em;overflow:hidden;padding:2px 0}"
            ".nxg-gen div{color:#a00}.nxg-row{text-align:right;white-space:pre;font-family:monospace;"
            "font-weight:normal;padding-right:4px}</style>"
        )
        return (
            f'<div class="nxg">{style}<div style="font-size:0.85em;color:#555">{html.escape(self._heading())} '
            f"({legend}; scaled per generated token)</div>"
            f"<div><b>Prompt</b> ({self.prompt_length} tokens) <b>→ generated</b>: "
            f"{html.escape(self.generated_text)}</div>"
            f"<h4 style='margin:0.6em 0 0.2em'>Per generated token</h4>{''.join(steps)}"
            f"<h4 style='margin:0.6em 0 0.2em'>All steps (rows: generated tokens, columns: source tokens)</h4>"
            f'<div class="nxg-matrix"><table><tr><th></th>{header}</tr>{"".join(body)}</table></div></div>'
        )

    def _repr_html_(self) -> str:
        return self.to_html()

    # --- serialisation -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A strict-JSON-ready dict (NaN becomes ``None``)."""
        return {
            "format": "normxlogit.GenerationAttribution/1",
            "method": self.method, "layer": self.layer, "prompt": self.prompt, "generated_text": self.generated_text,
            "prompt_length": self.prompt_length, "source_tokens": list(self.source_tokens),
            "source_ids": [int(i) for i in self.source_ids], "special_tokens_mask": [int(m) for m in self.special_tokens_mask],
            "scores": _json_floats(self.scores), "target_logits": _json_floats(self.target_logits),
            "target_probs": _json_floats(self.target_probs), "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GenerationAttribution":
        data = {k: v for k, v in data.items() if k != "format"}
        for key in ("scores", "target_logits", "target_probs"):
            data[key] = np.array(data[key], dtype=np.float64)  # None -> NaN
        return cls(**data)

    def to_json(self, indent: int | None = None) -> str:
        """Strict JSON (no NaN literals)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False, ensure_ascii=False)

    def save(self, path: str | Path) -> None:
        """Write as strict JSON."""
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "GenerationAttribution":
        """Read a file written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


# --- the entry point -----------------------------------------------------------------------------------------------
def _check_causal_lm(model: PreTrainedModel) -> None:
    config = getattr(model, "config", None)
    try:
        task = detect_task(model)
    except ValueError:
        task = None
    if task != "causal-lm" or getattr(config, "is_encoder_decoder", False):
        raise ValueError(
            f"explain_generation needs a decoder-only causal LM (a *ForCausalLM model), got a {type(model).__name__}. "
            "Load one with nx.load_model(name, task='causal-lm'); use nx.explain for classifiers and masked LMs."
        )


def _resolve_layer(layer: int, num_layers: int) -> int:
    if not isinstance(layer, (int, np.integer)) or not -(num_layers + 1) <= layer <= num_layers:
        raise ValueError(f"layer={layer!r} is out of range: this model has layers 0..{num_layers} "
                         "(0 = embeddings, -1 = last).")
    return int(layer) % (num_layers + 1)


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str, *, chat: bool = False,
               system_prompt: str | None = None) -> list[int]:
    """The prompt's token ids: plain (with the tokenizer's special tokens), or wrapped in its chat template."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, not {type(prompt).__name__}.")
    if not prompt.strip():
        raise ValueError("The prompt is empty or whitespace only; there is nothing to generate from.")
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"chat=True, but this tokenizer ({type(tokenizer).__name__}) has no chat template; use "
                             "chat=False or set tokenizer.chat_template.")
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(prompt)["input_ids"]
    if not ids:
        raise ValueError(f"The prompt {prompt!r} has no tokens.")
    return list(ids)


def _continuation_ids(tokenizer: PreTrainedTokenizerBase, continuation: str | Sequence[int], vocab: int) -> list[int]:
    if isinstance(continuation, str):
        if not continuation:
            raise ValueError("continuation is empty; pass None to generate, or the text to attribute.")
        ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    else:
        values = continuation.reshape(-1).tolist() if isinstance(continuation, (Tensor, np.ndarray)) else continuation
        ids = [int(i) for i in values]
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise ValueError(f"continuation token id {bad[0]} is out of range for a vocabulary of {vocab}.")
    if not ids:
        raise ValueError("continuation has no tokens; pass None to generate, or the text / ids to attribute.")
    return list(ids)


def _generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, ids: Tensor, max_new_tokens: int) -> list[int]:
    """Greedy continuation of ``ids`` (1, P) without touching the model's or the tokenizer's configuration."""
    own = model.generation_config
    eos = own.eos_token_id if own.eos_token_id is not None else tokenizer.eos_token_id
    pad = own.pad_token_id if own.pad_token_id is not None else tokenizer.pad_token_id
    if pad is None:
        pad = eos[0] if isinstance(eos, (list, tuple)) else eos
    # A fresh configuration: plain greedy decoding, whatever sampling settings the model's own one carries.
    config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, eos_token_id=eos,
                              pad_token_id=pad, bos_token_id=own.bos_token_id)
    kwargs: dict[str, Any] = {}
    if "use_model_defaults" in inspect.signature(model.generate).parameters:
        kwargs["use_model_defaults"] = False
    out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config, **kwargs)
    return out[0, ids.shape[1]:].tolist()


def _max_positions(model: PreTrainedModel) -> int | None:
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _check_options(spec: GenerationMethod, options: dict[str, Any]) -> None:
    accepted = [p for p in list(inspect.signature(spec.fn).parameters)[1:]]
    unknown = [k for k in options if k not in accepted]
    if unknown:
        raise TypeError(f"method {spec.name!r} takes no option {unknown[0]!r}"
                        + (f"; its options: {', '.join(accepted)}." if accepted else " (it has no options)."))


def explain_generation(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    *,
    max_new_tokens: int = 32,
    continuation: str | Sequence[int] | None = None,
    method: str = "normxlogit",
    chat: bool = False,
    system_prompt: str | None = None,
    layer: int = -1,
    norm_source: str = "embedding_output",
    head: Callable[[Tensor], Tensor] | None = None,
    **options: Any,
) -> GenerationAttribution:
    """Attribute every generated token of a causal LM to every earlier token.

    Generates greedily up to ``max_new_tokens`` (stopping after the EOS token), or teacher-forces ``continuation``
    (text, tokenised without special tokens, or token ids), then runs one forward pass over prompt + continuation.
    ``chat=True`` wraps the prompt in the tokenizer's chat template (with the generation prompt; ``system_prompt``
    optional). ``method``: see :func:`list_generation_methods`; ``layer`` reads the head on that layer (a logit
    lens: the final norm is applied first; -1 = last); ``norm_source``: ``embedding_output`` (``hidden_states[0]``)
    or ``word_embedding``. ``head``: a callable (N, hidden) -> (N, vocab) for architectures the head table does not
    know. ``options`` go to the method (``n_steps`` for integrated gradients, ``replacement`` for leave-one-out,
    ``batch_tokens`` for the memory of the baselines). Every call checks that the head read on the position before
    each generated token reproduces the model's own logit (:class:`GenerationInvariantError` if not). Inputs go to
    the input embedding's device (``device_map`` models included); results are numpy arrays on the CPU.
    """
    if method not in GENERATION_METHODS:
        raise ValueError(f"Unknown method {method!r}; available: {', '.join(list_generation_methods())}.")
    spec = GENERATION_METHODS[method]
    _check_options(spec, options)
    _check_causal_lm(model)
    if norm_source not in NORM_SOURCES:
        raise ValueError(f"norm_source must be one of {', '.join(NORM_SOURCES)}, not {norm_source!r}.")
    if continuation is None and (not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1):
        raise ValueError(f"max_new_tokens must be an int of at least 1, got {max_new_tokens!r}.")
    source = prompt_ids(tokenizer, prompt, chat=chat, system_prompt=system_prompt)
    resolved_head = resolve_head(model, "causal-lm", head)
    device = model.get_input_embeddings().weight.device
    vocab = model.get_input_embeddings().weight.shape[0]
    limit = _max_positions(model)
    planned = len(source) + (max_new_tokens if continuation is None else 0)
    if limit is not None and planned > limit:
        raise ValueError(f"The prompt ({len(source)} tokens) plus max_new_tokens={max_new_tokens} exceeds the "
                         f"model's {limit} positions.")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            prompt_tensor = torch.tensor([source], device=device)
            if continuation is None:
                generated = _generate(model, tokenizer, prompt_tensor, int(max_new_tokens))
            else:
                generated = _continuation_ids(tokenizer, continuation, vocab)
            if limit is not None and len(source) + len(generated) > limit:
                raise ValueError(f"Prompt and continuation ({len(source) + len(generated)} tokens) exceed the "
                                 f"model's {limit} positions.")
            ids = torch.tensor([source + generated], device=device)
            G = len(generated)
            out, own = _model_logits(model, ids, G + 1, hidden=True)
            own = own[0, :G].float()  # (G, V): the logits at the G positions that predict the generated tokens
            targets = ids[0, len(source):].to(own.device)
            target_logits = own.gather(-1, targets[:, None])[:, 0]
            target_probs = own.log_softmax(-1).gather(-1, targets[:, None])[:, 0].exp()
            hidden = out.hidden_states
            del out, own
            batch = GenerationBatch(model, tokenizer, resolved_head, ids, len(source), hidden, target_logits,
                                    target_probs, _resolve_layer(layer, len(hidden) - 1), norm_source)
            gap = _invariant_gap(batch)
        with torch.enable_grad() if spec.needs_grad else torch.no_grad():
            scores = spec.fn(batch, **options).detach().float().cpu()
    finally:
        model.train(was_training)
    scores = scores.masked_fill(~batch.valid(), float("nan")).numpy()
    return _result(batch, scores, spec, prompt, gap, chat=chat, options=options, generated=continuation is None)


def _token_pieces(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> list[str]:
    """Each token as the text it adds (byte-level BPE and SentencePiece keep their leading space)."""
    raw = tokenizer.convert_ids_to_tokens(ids)
    pieces = tokenizer.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False)
    return [(" " + p) if isinstance(r, str) and r.startswith("▁") and not p.startswith(" ") else p
            for r, p in zip(raw, pieces)]


def _result(batch: GenerationBatch, scores: np.ndarray, spec: GenerationMethod, prompt: str, gap: float, *,
            chat: bool, options: dict[str, Any], generated: bool) -> GenerationAttribution:
    ids = batch.input_ids[0].tolist()
    tokenizer, model = batch.tokenizer, batch.model
    special = set(tokenizer.all_special_ids)
    meta: dict[str, Any] = {
        "model_type": getattr(model.config, "model_type", None),
        "model": getattr(model.config, "_name_or_path", None) or None,
        "dtype": str(batch.hidden_states[-1].dtype).removeprefix("torch."),
        "chat": chat,
        "generated": generated,  # False: the continuation was given (teacher-forced)
        "invariant_gap": gap,
        "num_layers": batch.num_layers,
    }
    if spec.name in ("normxlogit", "norm"):
        meta["norm_source"] = batch.norm_source
    if spec.name == "leave_one_out":
        meta["replacement"] = loo_replacement(tokenizer, options.get("replacement"))
    if spec.name == "integrated_gradients":
        meta["n_steps"] = int(options.get("n_steps", 50))
    return GenerationAttribution(
        source_tokens=_token_pieces(tokenizer, ids),
        source_ids=ids,
        prompt_length=batch.prompt_length,
        scores=scores,
        target_logits=batch.target_logits.cpu().numpy(),
        target_probs=batch.target_probs.cpu().numpy(),
        method=spec.name,
        layer=batch.layer if spec.layerwise else None,
        prompt=prompt,
        generated_text=tokenizer.decode(ids[batch.prompt_length:], clean_up_tokenization_spaces=False),
        special_tokens_mask=[int(i in special) for i in ids],
        meta=meta,
    )


# --- command line --------------------------------------------------------------------------------------------------
DEFAULT_LLM = "SmolLM2-135M-Instruct"


def add_cli_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``explain-generation`` command to the ``normxlogit`` command's subparsers."""
    p = subparsers.add_parser(
        "explain-generation", help="generate with a causal LM and attribute every generated token",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Generate greedily (or teacher-force --continuation) and attribute every generated token to "
                    "every earlier token, from one forward pass.")
    p.add_argument("prompt", metavar="PROMPT", help="the prompt")
    p.add_argument("--model", default=DEFAULT_LLM, help="a local name (../shared/models, $NORMXLOGIT_MODELS), a "
                   "hub id, a path or a .gguf file")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    p.add_argument("--system", help="system prompt (with --chat)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate")
    p.add_argument("--continuation", help="attribute this continuation instead of generating")
    p.add_argument("--method", default="normxlogit", choices=list_generation_methods(), help="attribution method")
    p.add_argument("--layer", type=int, default=-1, help="read the head on this layer (0..L, -1 = last)")
    p.add_argument("--norm-source", default="embedding_output", choices=list(NORM_SOURCES),
                   help="which vector's norm NormXLogit uses")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="load the model in this dtype")
    p.add_argument("--device", help="run on this device (cpu, cuda, cuda:1...)")
    p.add_argument("--format", default="text", choices=["text", "json", "html"], help="output format")
    p.add_argument("--step", type=int, default=0, help="html: the generated token whose view is open")
    p.add_argument("-o", "--output", help="write to this file instead of standard output")
    return p


def _check_output_path(path: str) -> None:
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"-o {path}: is a directory; give a file name.")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"-o {path}: the folder {parent} does not exist.")


def _page(result: GenerationAttribution, step: int) -> str:
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><meta name='viewport' content='width=device-width, "
            "initial-scale=1'><title>normxlogit generation attribution</title></head><body style='font-family:"
            "sans-serif;max-width:70em;margin:1em auto;padding:0 1em'><h2>normxlogit: generation attribution</h2>"
            f"<p>Prompt: {html.escape(result.prompt)}</p>{result.to_html(step)}</body></html>\n")


def run_cli(args: argparse.Namespace) -> int:
    """Run ``normxlogit explain-generation``; input errors raise ValueError (the caller prints one line)."""
    from .models import load_model

    if args.output:
        _check_output_path(args.output)  # fail before the (slow) model load
    model, tokenizer = load_model(args.model, task="causal-lm", dtype=args.dtype, device=args.device)
    result = explain_generation(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens,
                                continuation=args.continuation, method=args.method, chat=args.chat,
                                system_prompt=args.system, layer=args.layer, norm_source=args.norm_source)
    if args.format == "json":
        out = result.to_json(indent=1) + "\n"
    elif args.format == "html":
        if not -len(result) <= args.step < len(result):
            raise ValueError(f"--step {args.step} is out of range for {len(result)} generated tokens.")
        out = _page(result, args.step)
    else:
        out = str(result) + "\n"
    if not args.output:
        sys.stdout.write(out)
        return 0
    try:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(out)
    except OSError as err:
        raise ValueError(f"cannot write -o {args.output}: {err.strerror or err}") from None
    print(f"wrote {args.output}", file=sys.stderr)
    return 0
