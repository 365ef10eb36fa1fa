"""The method registry and the :class:`Batch` every attribution method reads.

A method is a function ``fn(batch: Batch, **options) -> Tensor[B, T]`` registered under a name with
:func:`register_method`. :func:`normxlogit.explain` tokenises, batches and runs one forward pass with hidden states
per batch, and hands every method the same :class:`Batch`; the layer-wise evidence pipeline builds the same
``Batch`` for every layer. The methods themselves live in :mod:`normxlogit.methods` (importing the package
registers them all).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..models import Task
from .heads import Head, id_logits

NORM_SOURCES = ("embedding_output", "word_embedding", "layer")


@dataclass
class Batch:
    """One padded batch after the model's forward pass, as every attribution method sees it.

    ``hidden_states[l]`` is layer ``l``'s output (0 = embedding output), ``logits`` the model's output at the
    explained position (B, C), ``positions`` that position, ``targets`` the explained class / token id,
    ``predictions`` the predicted one (a float for regression). ``indices`` are the examples' places in the input
    list, so that seeded methods give the same scores whatever the batching.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    head: Head
    task: Task
    inputs: dict[str, Tensor]
    special_tokens_mask: Tensor
    hidden_states: tuple[Tensor, ...]
    logits: Tensor
    positions: Tensor
    targets: Tensor
    predictions: Tensor
    layer: int
    norm_source: str = "embedding_output"
    indices: list[int] = field(default_factory=list)
    seed: int = 0
    #: per-batch memo shared by the copies ``dataclasses.replace`` makes (e.g. one per layer)
    cache: dict = field(default_factory=dict, repr=False)

    @property
    def input_ids(self) -> Tensor:
        return self.inputs["input_ids"]

    @property
    def attention_mask(self) -> Tensor:
        return self.inputs["attention_mask"]

    @property
    def num_layers(self) -> int:
        return len(self.hidden_states) - 1

    @property
    def is_regression(self) -> bool:
        return self.task == "regression"

    def head_logits(self, layer: int | None = None) -> Tensor:
        """The model's own head read on every token's hidden state at ``layer``: (B, T, C), one batched call."""
        layer = self.layer if layer is None else layer
        return self.head(self.hidden_states[layer], intermediate=layer < self.num_layers).float()

    def target_logits(self, layer: int | None = None, targets: Tensor | None = None) -> Tensor:
        """(B, T): each row's target logit read on each of its tokens at ``layer``. For LMs only the target rows of
        the unembedding are applied (never the full vocabulary); memoised per (layer, targets)."""
        layer = self.layer if layer is None else layer
        targets = self.targets if targets is None else targets
        key = ("target_logits", layer, tuple(targets.tolist()))
        if key not in self.cache:
            ids = targets.to(self.hidden_states[layer].device).view(-1, 1)
            logits = id_logits(self.head, self.hidden_states[layer], ids, intermediate=layer < self.num_layers)
            self.cache[key] = logits[..., 0]
        return self.cache[key]

    def norms(self, source: str | None = None, layer: int | None = None) -> Tensor:
        """ℓ2-norm of every token's vector (B, T).

        ``embedding_output``: ``hidden_states[0]`` (the authors' choice: word + position (+ type) embeddings, after
        LayerNorm for BERT-like models). ``word_embedding``: the raw row of the input-embedding matrix. ``layer``:
        ``hidden_states[layer]`` (the "EachLayer" variant).
        """
        source = source or self.norm_source
        if source == "embedding_output":
            vectors = self.hidden_states[0]
        elif source == "word_embedding":
            vectors = self.model.get_input_embeddings()(self.input_ids)
        elif source == "layer":
            vectors = self.hidden_states[self.layer if layer is None else layer]
        else:
            raise ValueError(f"norm_source must be one of {', '.join(NORM_SOURCES)}, not {source!r}.")
        return torch.linalg.vector_norm(vectors.float(), dim=-1)


@dataclass(frozen=True)
class Method:
    """A registered attribution method and what a result table needs to know about it."""

    name: str
    fn: Callable[..., Tensor]
    description: str
    signed: bool
    needs_grad: bool = False
    layerwise: bool = False  # honours ``layer`` (reads hidden_states[layer])


METHODS: dict[str, Method] = {}


def register_method(
    name: str, *, description: str, signed: bool, needs_grad: bool = False, layerwise: bool = False
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator: register ``fn(batch, **options) -> Tensor[B, T]`` under ``name``."""

    def decorate(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        METHODS[name] = Method(name, fn, description, signed, needs_grad, layerwise)
        return fn

    return decorate


def list_methods() -> list[str]:
    """Names of all registered attribution methods."""
    return sorted(METHODS)


def get_method(name: str) -> Method:
    """The registered method ``name``; a clear error listing the others when unknown."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"Unknown method {name!r}; available: {', '.join(list_methods())}.") from None
