"""Fine-tuning recipes: what to train and how, in a registry keyed by name, hashed into the models' cache key.

A :class:`Recipe` names its data, columns, hyper-parameters and (optionally) its own training and evaluation
functions. Every field is part of the hash that keys the cached model (:func:`recipe_hash`), so a changed recipe
never reuses a stale model; functions enter the hash by a stable identifier (:class:`Named`), so moving code does
not invalidate the cache.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..models import DEFAULT_MODEL, Task


class TrainFn(Protocol):
    """A training loop: updates ``model`` in place and returns statistics to store in the metadata."""

    def __call__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, recipe: Recipe, *, device: torch.device
    ) -> dict[str, Any]: ...


class EvalFn(Protocol):
    """An evaluation: returns metrics, including the one named by ``recipe.metric``."""

    def __call__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, recipe: Recipe, *, device: torch.device
    ) -> dict[str, float]: ...


@dataclass(frozen=True)
class Recipe:
    """How to fine-tune one model. Every field is part of the cache key (callables by their qualified name)."""

    task: Task
    load_data: Callable[..., Dataset]  # load_data(split) -> Dataset
    text_columns: tuple[str, ...]  # one column, or two for sentence pairs
    label_column: str | None
    metric: str  # the key of the evaluation's metrics reported as the model's score
    num_labels: int | None = None
    label_names: tuple[str, ...] | None = None  # stored as config.id2label
    base_model: str = DEFAULT_MODEL
    epochs: float = 1.0
    lr: float = 5e-5
    batch_size: int = 32
    max_length: int = 64
    train_size: int | None = None  # a seeded random subset of the train split; None: all of it
    train_split: str = "train"
    eval_split: str = "validation"
    seed: int = 0
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    label_scale: float = 1.0  # regression: train on label / scale, then scale the head so outputs keep the units
    freeze_word_embeddings: bool = False  # saves the dense update of the 30k-row matrix: much faster on CPU
    train_fn: TrainFn | None = None  # None: the sequence-model loop of normxlogit.training.zoo
    eval_fn: EvalFn | None = None  # None: the sequence-model evaluation of normxlogit.training.zoo
    options: Mapping[str, Any] = field(default_factory=dict)  # free-form settings for custom train/eval functions
    revision: int = 1  # bump to invalidate cached models when the training code changes


RecipeLike = Recipe | Callable[[], Recipe]
_RECIPES: dict[str, RecipeLike] = {}


def register_recipe(name: str, recipe_or_builder: RecipeLike, *, overwrite: bool = False) -> None:
    """Register a recipe, or a zero-argument builder called when ``name`` is first used."""
    if name in _RECIPES and not overwrite:
        raise ValueError(f"A recipe named {name!r} is already registered; pass overwrite=True to replace it.")
    if not (isinstance(recipe_or_builder, Recipe) or callable(recipe_or_builder)):
        raise TypeError(f"Expected a Recipe or a function returning one, got {type(recipe_or_builder).__name__}.")
    _RECIPES[name] = recipe_or_builder


def list_recipes() -> list[str]:
    """Names accepted by :func:`pretrained`."""
    return sorted(_RECIPES)


def get_recipe(name: str) -> Recipe:
    """The registered recipe ``name`` (building it if it was registered as a builder)."""
    if name not in _RECIPES:
        raise ValueError(f"No fine-tuning recipe named {name!r}; available: {', '.join(list_recipes()) or 'none'}.")
    entry = _RECIPES[name]
    if not isinstance(entry, Recipe):
        entry = entry()
        if not isinstance(entry, Recipe):
            raise TypeError(f"The builder registered for {name!r} returned {type(entry).__name__}, not a Recipe.")
        _RECIPES[name] = entry
    return entry


class Named:
    """A function with a stable identifier: the name recipes hash, whichever module the function lives in.

    Recipes are hashed into the cache key of their models; naming their functions this way keeps the key (and the
    cached models) valid when code moves between modules.
    """

    def __init__(self, identifier: str, fn: Callable[..., Any]):
        self.identifier = identifier
        self.fn = fn
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Named({self.identifier!r})"


def _callable_id(fn: Any) -> str:
    """A stable name for a callable: its :class:`Named` identifier, else module.qualname (with the arguments of a
    functools.partial)."""
    if isinstance(fn, Named):
        return fn.identifier
    if isinstance(fn, functools.partial):
        args = [repr(a) for a in fn.args] + [f"{k}={v!r}" for k, v in sorted(fn.keywords.items())]
        return f"{_callable_id(fn.func)}({', '.join(args)})"
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"


def recipe_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe as JSON-ready data (callables by name), as stored in the metadata and hashed."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(recipe):
        value = getattr(recipe, f.name)
        if callable(value):
            value = _callable_id(value)
        elif isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, Mapping):
            value = dict(value)
        out[f.name] = value
    return out


def recipe_hash(recipe: Recipe) -> str:
    """A short hash of the recipe: the cache key suffix."""
    text = json.dumps(recipe_dict(recipe), sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:10]
