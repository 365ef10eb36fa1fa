"""Fine-tuning sequence classifiers and regressors: the default training and evaluation of a :class:`Recipe`.

Length-grouped batches with dynamic padding over a seeded subset of the training split, the package's one training
loop (:func:`normxlogit.training.loop.train_loop`), optionally frozen word embeddings, and for regression targets a
rescaled output layer (train on ``label / scale``, then scale the layer so outputs keep the units).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..core.heads import output_layer
from .loop import epoch_batches, train_loop
from .recipes import Recipe


def _texts(dataset: Dataset, recipe: Recipe) -> list[list[str]]:
    columns = dataset.select_columns(list(recipe.text_columns))[:]  # one Arrow read, as plain lists
    return [columns[c] for c in recipe.text_columns]


def _tokenize(tokenizer: PreTrainedTokenizerBase, texts: list[list[str]], recipe: Recipe, **kwargs) -> Any:
    return tokenizer(*texts, truncation=True, max_length=recipe.max_length, **kwargs)


def _batch(tokenizer, texts: list[list[str]], index: np.ndarray, recipe: Recipe, device: torch.device) -> dict:
    """Tokenise the rows ``index`` padded to their own longest (dynamic padding)."""
    rows = [[column[i] for i in index] for column in texts]
    return _tokenize(tokenizer, rows, recipe, padding=True, return_tensors="pt").to(device)


def _labels(dataset: Dataset, recipe: Recipe) -> torch.Tensor:
    dtype = torch.float32 if recipe.task == "regression" else torch.long
    return torch.tensor(dataset[recipe.label_column][:], dtype=dtype)


def _plain(model: PreTrainedModel) -> PreTrainedModel:
    """The transformers model inside a peft wrapper (LoRA), else ``model``."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def train_sequence_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    recipe: Recipe,
    *,
    device: torch.device,
    callback: Callable[[int, PreTrainedModel], None] | None = None,
) -> dict[str, Any]:
    """The default loop for sequence classification/regression: AdamW, linear warm-up and decay, length-grouped
    batches with dynamic padding, gradient clipping; a seeded subset of ``recipe.train_size`` training rows.

    ``callback(step, model)`` runs after every optimiser step (e.g. to trace validation metrics); it must leave the
    model in train mode.
    """
    train = recipe.load_data(recipe.train_split)
    if recipe.train_size is not None and recipe.train_size < len(train):
        train = train.shuffle(seed=recipe.seed).select(range(recipe.train_size))
    texts, labels = _texts(train, recipe), _labels(train, recipe)
    regression = recipe.task == "regression"
    if regression:
        # Adam moves each weight by about lr per step, so a head started near 0 needs many steps to reach targets of
        # several units: train on targets of order 1, starting the bias at their mean, and rescale at the end.
        labels = labels / recipe.label_scale
        with torch.no_grad():
            bias = output_layer(_plain(model)).bias  # decoders' ``score`` has none
            if bias is not None:
                bias.fill_(labels.mean().item())
    lengths = np.array([len(ids) for ids in _tokenize(tokenizer, texts, recipe)["input_ids"]])
    steps = math.ceil(recipe.epochs * math.ceil(len(train) / recipe.batch_size))
    batches = epoch_batches(lengths, recipe.batch_size, steps, recipe.seed)

    def loss_of(index: np.ndarray) -> torch.Tensor:
        batch = _batch(tokenizer, texts, index, recipe, device)
        return model(**batch, labels=labels[index].to(device)).loss

    if recipe.freeze_word_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    try:
        stats = train_loop(
            model, batches, loss_of, steps=steps, lr=recipe.lr, weight_decay=recipe.weight_decay,
            warmup_steps=round(recipe.warmup_ratio * steps), max_grad_norm=recipe.max_grad_norm,
            on_step=None if callback is None else (lambda step, loss: callback(step, model)),
            desc=f"fine-tuning ({recipe.task})",
        )
    finally:
        model.get_input_embeddings().weight.requires_grad_(True)
        model.eval()
    if regression and recipe.label_scale != 1.0:
        with torch.no_grad():
            head = output_layer(_plain(model))
            head.weight.mul_(recipe.label_scale)
            if head.bias is not None:
                head.bias.mul_(recipe.label_scale)
    return {"examples": len(train), "steps": steps, "final_loss": stats["final_loss"]}


@torch.inference_mode()
def predict_logits(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[list[str]],
    recipe: Recipe,
    *,
    device: torch.device,
    batch_size: int = 128,
) -> torch.Tensor:
    """Logits for the rows of ``texts`` (one list per text column), batched by length, in the original order."""
    model.eval()
    lengths = np.array([len(ids) for ids in _tokenize(tokenizer, texts, recipe)["input_ids"]])
    order = np.argsort(-lengths, kind="stable")
    chunks = [
        model(**_batch(tokenizer, texts, order[i : i + batch_size], recipe, device)).logits.float().cpu()
        for i in range(0, len(order), batch_size)
    ]
    logits = torch.cat(chunks)
    out = torch.empty_like(logits)
    out[torch.from_numpy(order)] = logits
    return out


def learning_curve(
    tokenizer: PreTrainedTokenizerBase, recipe: Recipe, *, device: torch.device, every: int, size: int = 256
) -> tuple[Callable[[int, PreTrainedModel], None], list[dict[str, float]]]:
    """A ``callback`` for :func:`train_sequence_model` that scores the model every ``every`` steps on a seeded subset
    of ``size`` rows of ``recipe.eval_split``, and the list it fills with ``{"examples", "step", metric}`` records.

    The points come from one run with one learning-rate schedule (linear decay to the run's end), so they show what
    the run had learnt by then, not what a shorter run of its own would reach; the last point is the trained model.
    """
    from tqdm.auto import tqdm

    data = recipe.load_data(recipe.eval_split)
    data = data.shuffle(seed=recipe.seed).select(range(min(size, len(data))))
    curve: list[dict[str, float]] = []

    def callback(step: int, model: PreTrainedModel) -> None:
        if step % every:
            return
        metrics = _score(model, tokenizer, data, recipe, device=device)
        curve.append({"examples": step * recipe.batch_size, "step": step, recipe.metric: metrics[recipe.metric]})
        tqdm.write(f"  after {step * recipe.batch_size} examples: {recipe.metric} {metrics[recipe.metric]:.3f} "
                   f"on {len(data)} {recipe.eval_split} rows")
        model.train()

    return callback, curve


def _score(model, tokenizer, dataset: Dataset, recipe: Recipe, *, device: torch.device) -> dict[str, float]:
    from scipy.stats import pearsonr, spearmanr

    logits = predict_logits(model, tokenizer, _texts(dataset, recipe), recipe, device=device)
    labels = _labels(dataset, recipe)
    if recipe.task == "regression":
        pred = logits.squeeze(-1).numpy()
        gold = labels.numpy()
        return {
            "pearson": float(pearsonr(pred, gold)[0]),
            "spearman": float(spearmanr(pred, gold)[0]),
            "mse": float(np.mean((pred - gold) ** 2)),
            "examples": len(dataset),
        }
    return {"accuracy": float((logits.argmax(-1) == labels).float().mean()), "examples": len(dataset)}


def evaluate_sequence_model(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, recipe: Recipe, *, device: torch.device
) -> dict[str, float]:
    """Accuracy (classification) or Pearson/Spearman r and MSE (regression) on ``recipe.eval_split``."""
    return _score(model, tokenizer, recipe.load_data(recipe.eval_split), recipe, device=device)
