"""What every generation method reads (:class:`GenerationBatch`: one forward pass over prompt + continuation) and
the registry of generation methods (:func:`register_generation_method`, :func:`list_generation_methods`).

A method is ``fn(batch, **options) -> Tensor (G, T)``: one row per generated token, one column per source token.
Its ``meta`` function (optional) adds what a result must record about its options (a replacement, a step count).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..core.heads import Head

__all__ = ["GENERATION_METHODS", "NORM_SOURCES", "GenerationBatch", "GenerationMethod", "check_options",
           "get_generation_method", "list_generation_methods", "register_generation_method"]

NORM_SOURCES = ("embedding_output", "word_embedding")


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


@dataclass(frozen=True)
class GenerationMethod:
    """A generation attribution method: ``fn(batch, **options) -> Tensor (G, T)``.

    ``meta(batch, options) -> dict``: what the result records about this run beyond the common fields.
    """

    name: str
    fn: Callable[..., Tensor]
    description: str
    signed: bool
    needs_grad: bool = False
    layerwise: bool = False
    meta: Callable[[GenerationBatch, dict[str, Any]], dict[str, Any]] | None = None


GENERATION_METHODS: dict[str, GenerationMethod] = {}


def register_generation_method(
    name: str, description: str, *, signed: bool, needs_grad: bool = False, layerwise: bool = False,
    meta: Callable[[GenerationBatch, dict[str, Any]], dict[str, Any]] | None = None,
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator: register ``fn(batch, **options) -> Tensor (G, T)`` under ``name``."""

    def decorate(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        GENERATION_METHODS[name] = GenerationMethod(name, fn, description, signed, needs_grad, layerwise, meta)
        return fn

    return decorate


def list_generation_methods() -> list[str]:
    """Names of the methods :func:`~normxlogit.explain_generation` accepts."""
    return sorted(GENERATION_METHODS)


def get_generation_method(name: str) -> GenerationMethod:
    """The registered method ``name``; a clear error listing the others when unknown."""
    if name not in GENERATION_METHODS:
        raise ValueError(f"Unknown method {name!r}; available: {', '.join(list_generation_methods())}.")
    return GENERATION_METHODS[name]


def check_options(spec: GenerationMethod, options: dict[str, Any]) -> None:
    """A clear error for an option the method does not take, naming the ones it does."""
    accepted = list(inspect.signature(spec.fn).parameters)[1:]
    unknown = [k for k in options if k not in accepted]
    if unknown:
        raise TypeError(f"method {spec.name!r} takes no option {unknown[0]!r}"
                        + (f"; its options: {', '.join(accepted)}." if accepted else " (it has no options)."))
