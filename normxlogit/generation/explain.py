"""``explain_generation``: every generated token attributed to every earlier token from ONE forward pass.

For a sequence y_1..y_T (the prompt, then the generated tokens), position i's final hidden state h_i is what the LM
head reads to predict token i+1. For a generated token at position p, ``LogAt[t, i] = head(h_i)[y_p]`` for every
i < p: the logit that token i's own representation gives to y_p. At i = p - 1 it is the model's own logit for y_p
(the invariant, checked on every call: :class:`GenerationInvariantError`). ``NormXLogit[t, i] = ||h_i^0|| *
LogAt[t, i]``. The head is read on all T positions against only the G gathered unembedding rows of the generated
tokens (a (T, H) x (H, G) product, :func:`~normxlogit.generation.reading.gathered_logits`); the full-vocabulary
logits are formed only at the G positions that predict a generated token (the model's own, for the invariant).
The baselines (:mod:`normxlogit.generation.baselines`) return the same result object.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..core.heads import resolve_head
from ..core.inputs import eval_mode, model_device
from ..models import check_trained_head
from .prompts import (check_causal_lm, continuation_ids, greedy_continuation, max_positions, prompt_ids,
                      resolve_layer)
from .reading import gathered_logits, model_logits
from .registry import (NORM_SOURCES, GenerationBatch, GenerationMethod, check_options, get_generation_method,
                       register_generation_method)
from .result import GenerationAttribution
from .sources import Sources, attach_sources, check_aggregation, locate_sources

__all__ = ["INVARIANT_TOLERANCE", "GenerationInvariantError", "attribute_sequence", "explain_generation",
           "generation_logat", "generation_norms", "invariant_gap"]

#: Relative tolerance of the run-time invariant check, by the dtype of the hidden states.
INVARIANT_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-6, torch.float16: 1e-2, torch.bfloat16: 3e-2}


class GenerationInvariantError(RuntimeError):
    """The head read on the position before a generated token did not reproduce the model's own logit for it."""


def invariant_gap(batch: GenerationBatch) -> float:
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


# --- the one-forward methods ---------------------------------------------------------------------------------------
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


def norm_meta(batch: GenerationBatch, options: dict[str, Any]) -> dict[str, Any]:  # noqa: ARG001 - meta signature
    return {"norm_source": batch.norm_source}


@register_generation_method("normxlogit", "ℓ2-norm of the input embedding × LogAt, every generated token from one "
                            "forward pass", signed=True, layerwise=True, meta=norm_meta)
def normxlogit(batch: GenerationBatch) -> Tensor:
    return generation_norms(batch)[None, :] * generation_logat(batch)


@register_generation_method("logat", "the head's logit for each generated token read on every earlier position "
                            "(one forward pass)", signed=True, layerwise=True)
def logat(batch: GenerationBatch) -> Tensor:
    return generation_logat(batch)


@register_generation_method("norm", "ℓ2-norm of each source token's input embedding (the same for every generated "
                            "token)", signed=False, meta=norm_meta)
def norm(batch: GenerationBatch) -> Tensor:
    return generation_norms(batch)[None, :].expand(batch.num_generated, -1)


# --- the entry point -----------------------------------------------------------------------------------------------
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
    sources: Sources | None = None,
    source_aggregation: str = "sum",
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
    ``batch_tokens`` for the memory of the baselines: tokens per pass; ``internal_batch_size`` for integrated
    gradients: interpolated sequences per forward/backward pass, ``"auto"`` by default, see
    :mod:`normxlogit.generation.baselines`). Every call checks that the head read on the position before
    each generated token reproduces the model's own logit (:class:`GenerationInvariantError` if not). Inputs go to
    the input embedding's device (``device_map`` models included); results are numpy arrays on the CPU.
    ``sources``: ``"sentences"``, strings found in the prompt or (start, end) character spans of it (the user's
    message with ``chat=True``); the result then has ``sources``, ``source_scores`` and
    :meth:`~GenerationAttribution.cite`. ``source_aggregation`` (stored on the result as ``source_aggregation``)
    makes a source's score from its tokens' scores: ``"sum"`` (the default: an additive reading predicts the effect
    of deleting a source as the sum of its tokens' effects, which is what the top-k drop and the LDS of
    :func:`~normxlogit.evaluate_generation` test) or ``"mean"`` (the average over the source's tokens, which removes
    the sum's length bias: scores positive everywhere make long sources outrank short ones whatever they say); see
    :mod:`normxlogit.generation.sources`.
    """
    spec = get_generation_method(method)
    check_options(spec, options)
    check_aggregation(source_aggregation)
    check_causal_lm(model)
    check_trained_head(model, "explain_generation")
    if norm_source not in NORM_SOURCES:
        raise ValueError(f"norm_source must be one of {', '.join(NORM_SOURCES)}, not {norm_source!r}.")
    if continuation is None and (not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1):
        raise ValueError(f"max_new_tokens must be an int of at least 1, got {max_new_tokens!r}.")
    source = prompt_ids(tokenizer, prompt, chat=chat, system_prompt=system_prompt)
    located = None if sources is None else locate_sources(tokenizer, prompt, sources, source, chat=chat,
                                                          system_prompt=system_prompt)
    resolve_head(model, "causal-lm", head)  # an unsupported model fails before generating
    device = model_device(model)
    vocab = model.get_input_embeddings().weight.shape[0]
    limit = max_positions(model)
    planned = len(source) + (max_new_tokens if continuation is None else 0)
    if limit is not None and planned > limit:
        raise ValueError(f"The prompt ({len(source)} tokens) plus max_new_tokens={max_new_tokens} exceeds the "
                         f"model's {limit} positions.")
    with eval_mode(model), torch.no_grad():
        prompt_tensor = torch.tensor([source], device=device)
        if continuation is None:
            generated = greedy_continuation(model, tokenizer, prompt_tensor, int(max_new_tokens))
        else:
            generated = continuation_ids(tokenizer, continuation, vocab)
    if limit is not None and len(source) + len(generated) > limit:
        raise ValueError(f"Prompt and continuation ({len(source) + len(generated)} tokens) exceed the "
                         f"model's {limit} positions.")
    batch, scores, gap = attribute_sequence(model, tokenizer, source + generated, len(source), method=method,
                                            layer=layer, norm_source=norm_source, head=head, **options)
    result = build_result(batch, scores, spec, prompt, gap, chat=chat, options=options, generated=continuation is None)
    return result if located is None else attach_sources(result, located, tokenizer, source_aggregation)


def attribute_sequence(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    ids: Sequence[int],
    prompt_length: int,
    *,
    method: str = "normxlogit",
    layer: int = -1,
    norm_source: str = "embedding_output",
    head: Callable[[Tensor], Tensor] | None = None,
    **options: Any,
) -> tuple[GenerationBatch, np.ndarray, float]:
    """The core of :func:`explain_generation` on given token ids: one forward pass, the self-check, the scores.

    ``ids`` are the whole sequence; positions ``prompt_length..`` are the tokens attributed (``prompt_length >= 1``).
    Returns the :class:`GenerationBatch`, the scores (G, T) as float32 numpy (NaN where the source is not before the
    token) and the invariant's largest relative gap. For integrations that tokenise themselves (inseq).
    """
    spec = get_generation_method(method)
    check_options(spec, options)
    check_causal_lm(model)
    if norm_source not in NORM_SOURCES:
        raise ValueError(f"norm_source must be one of {', '.join(NORM_SOURCES)}, not {norm_source!r}.")
    check_trained_head(model, "attribute_sequence")
    ids = [int(i) for i in ids]
    if not 1 <= prompt_length < len(ids):
        raise ValueError(f"prompt_length must be in 1..{len(ids) - 1} for a sequence of {len(ids)} tokens, "
                         f"got {prompt_length}.")
    resolved_head = resolve_head(model, "causal-lm", head)
    device = model_device(model)
    with eval_mode(model):
        with torch.no_grad():
            tensor = torch.tensor([ids], device=device)
            G = len(ids) - prompt_length
            out, own = model_logits(model, tensor, G + 1, hidden=True)
            own = own[0, :G].float()  # (G, V): the logits at the G positions that predict the generated tokens
            targets = tensor[0, prompt_length:].to(own.device)
            target_logits = own.gather(-1, targets[:, None])[:, 0]
            target_probs = own.log_softmax(-1).gather(-1, targets[:, None])[:, 0].exp()
            hidden = out.hidden_states
            del out, own
            batch = GenerationBatch(model, tokenizer, resolved_head, tensor, prompt_length, hidden, target_logits,
                                    target_probs, resolve_layer(layer, len(hidden) - 1), norm_source)
            gap = invariant_gap(batch)
        with torch.enable_grad() if spec.needs_grad else torch.no_grad():
            scores = spec.fn(batch, **options).detach().float().cpu()
    return batch, scores.masked_fill(~batch.valid(), float("nan")).numpy(), gap


def token_pieces(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> list[str]:
    """Each token as the text it adds (byte-level BPE and SentencePiece keep their leading space)."""
    raw = tokenizer.convert_ids_to_tokens(ids)
    pieces = tokenizer.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False)
    return [(" " + p) if isinstance(r, str) and r.startswith("▁") and not p.startswith(" ") else p
            for r, p in zip(raw, pieces)]


def build_result(batch: GenerationBatch, scores: np.ndarray, spec: GenerationMethod, prompt: str, gap: float, *,
                 chat: bool, options: dict[str, Any], generated: bool) -> GenerationAttribution:
    """The :class:`GenerationAttribution` of one run: scores, the model's own logits and probabilities, and meta."""
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
    if spec.meta is not None:
        meta.update(spec.meta(batch, options))
    return GenerationAttribution(
        source_tokens=token_pieces(tokenizer, ids),
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
