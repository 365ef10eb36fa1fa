"""The one training loop, used by every recipe and by chapter 2's small masked-LM pre-training.

:func:`train_loop` runs AdamW with a linear warm-up and decay over a sequence of batches, with a caller-supplied
loss; :func:`make_optimizer` holds the one weight-decay rule: **every parameter decays except biases and
normalisation gains** (names ending in ``bias``, ``LayerNorm.weight``, ``layer_norm.weight`` or ``norm.weight``),
as in BERT's recipe. ``fused=True`` uses torch's fused AdamW kernel (the same update rule, about ten times cheaper on
a CPU when a large embedding matrix is trained), with a fallback where no fused kernel exists.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformers import PreTrainedModel, get_linear_schedule_with_warmup

B = TypeVar("B")

#: Parameters whose names end so are not decayed: biases and normalisation gains.
NO_DECAY_SUFFIXES: tuple[str, ...] = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


def decays(name: str) -> bool:
    """Whether the parameter ``name`` gets weight decay under the package's one rule."""
    return not name.endswith(NO_DECAY_SUFFIXES)


def make_optimizer(
    model: torch.nn.Module,
    *,
    lr: float,
    weight_decay: float,
    fused: bool = False,
    lr_of: Callable[[str], float] | None = None,
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, grouped by (learning rate, decay) in the order they first appear.

    ``lr_of(name)``: a parameter's learning rate (default ``lr`` for all), e.g. a larger one for a new head.
    """
    groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            rate = lr if lr_of is None else lr_of(name)
            groups.setdefault((rate, decays(name)), []).append(param)
    param_groups = [{"params": params, "lr": rate, "weight_decay": weight_decay if decay else 0.0}
                    for (rate, decay), params in groups.items()]
    if fused:
        try:
            return torch.optim.AdamW(param_groups, lr=lr, fused=True)
        except (RuntimeError, TypeError):  # older torch, or a device/dtype without a fused kernel
            pass
    return torch.optim.AdamW(param_groups, lr=lr)


def train_loop(
    model: PreTrainedModel,
    batches: Iterable[B],
    loss_fn: Callable[[B], Tensor],
    *,
    steps: int,
    lr: float,
    weight_decay: float,
    warmup_steps: int,
    max_grad_norm: float | None = 1.0,
    fused: bool = False,
    lr_of: Callable[[str], float] | None = None,
    smoothing: float = 0.95,
    on_step: Callable[[int, float], bool | None] | None = None,
    desc: str = "training",
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``model`` in place for up to ``steps`` updates, one per batch: ``loss_fn(batch).backward()``, gradient
    clipping to ``max_grad_norm`` (None: none), an AdamW step and a linear warm-up/decay schedule step.

    ``on_step(step, loss)`` runs after every update; returning True stops early. Returns ``{"steps": updates made,
    "final_loss": the loss smoothed with ``smoothing`` (an exponential moving average)}``.
    """
    optimizer = make_optimizer(model, lr=lr, weight_decay=weight_decay, fused=fused, lr_of=lr_of)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup_steps, steps)
    model.train()
    running = None
    done = 0
    bar = tqdm(total=steps, desc=desc, unit="step", dynamic_ncols=True, disable=not progress)
    try:
        for step, batch in enumerate(batches, 1):
            if step > steps:
                break
            loss = loss_fn(batch)
            loss.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            value = loss.item()
            running = value if running is None else smoothing * running + (1 - smoothing) * value
            done = step
            bar.update(1)
            bar.set_postfix(loss=f"{running:.3f}", refresh=False)
            if on_step is not None and on_step(step, value):
                break
    finally:
        bar.close()
    return {"steps": done, "final_loss": running}


def length_grouped_batches(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator, group: int = 50
) -> list[np.ndarray]:
    """Random batches of similar lengths (less padding): shuffle, sort within chunks of ``group`` batches, shuffle.

    The chunking keeps batches random across epochs, as transformers' LengthGroupedSampler does.
    """
    perm = rng.permutation(len(lengths))
    batches = []
    for start in range(0, len(perm), batch_size * group):
        chunk = perm[start : start + batch_size * group]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def epoch_batches(lengths: np.ndarray, batch_size: int, steps: int, seed: int) -> list[np.ndarray]:
    """``steps`` length-grouped batches: whole epochs, each freshly shuffled, cut at the fractional end."""
    rng = np.random.default_rng(seed)
    batches: list[np.ndarray] = []
    while len(batches) < steps:
        batches += length_grouped_batches(lengths, batch_size, rng)
    return batches[:steps]


def available_cores() -> int:
    """``OMP_NUM_THREADS`` when set, else the cores this process may run on."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextlib.contextmanager
def num_threads(n: int) -> Iterator[None]:
    """Use ``n`` intra-op threads inside the block, then restore the caller's setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
