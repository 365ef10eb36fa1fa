"""Fine-tuning a masked LM on minimal pairs (the BLiMP recipe): the loss and accuracy over [target, foil] logits.

all-MiniLM-L6-v2 ships no MLM head, so ``BertForMaskedLM`` built from it has a newly initialised transform
(``cls.predictions.transform``) and a decoder tied to the word embeddings. The authors' recipe (DESIGN.md section 4):
batch 64, AdamW 3e-5, linear schedule with 10% warm-up, seed 42, loss = cross-entropy over [target logit, foil logit]
at the masked position, trained on one half of the pairs and evaluated on the other. Their RoBERTa had a pretrained
MLM head and needed one epoch; ours starts from a random transform, so it trains for more epochs and gives the new
transform a larger learning rate (``options["head_lr"]``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from transformers import AutoModelForMaskedLM, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from ..core.heads import id_logits, resolve_head
from ..models import DEFAULT_MODEL, resolve_model_name
from ..data import blimp
from ..data.evidence import evidence_data
from .loop import epoch_batches, train_loop
from .recipes import Recipe


def check_mlm_head(model: PreTrainedModel) -> None:
    """The decoder must be tied to the word embeddings (so LogAt reads the embedding space); raise otherwise."""
    decoder, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    if decoder is None or decoder.weight is not embeddings.weight:
        raise ValueError(f"{type(model).__name__}'s MLM decoder is not tied to its word embeddings.")


def untrained_mlm(base_model: str = DEFAULT_MODEL) -> tuple[PreTrainedModel, list[str]]:
    """``base_model`` as a masked LM before fine-tuning, and the names of the parameters it had to initialise.

    A sentence encoder such as all-MiniLM-L6-v2 ships no MLM head, so transformers warns that "some weights ... are
    newly initialized" and that the model should be trained. Here that is expected (the ``blimp`` recipe trains
    exactly these weights), so the warning is kept out of the log and the names are returned for the caller to show.
    """
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = AutoModelForMaskedLM.from_pretrained(resolve_model_name(base_model), output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.eval(), sorted(info["missing_keys"])


def _pair_batch(data: dict[str, list], index: Sequence[int], pad_id: int, device: torch.device) -> tuple[Tensor, ...]:
    ids = pad_sequence([torch.tensor(data["input_ids"][i]) for i in index], batch_first=True, padding_value=pad_id)
    mask = pad_sequence([torch.tensor(data["attention_mask"][i]) for i in index], batch_first=True)
    positions = torch.tensor([data["mask_position"][i] for i in index])
    pair = torch.tensor([[data["target_id"][i], data["foil_id"][i]] for i in index])
    return ids.to(device), mask.to(device), positions.to(device), pair.to(device)


def pair_logits(model: PreTrainedModel, ids: Tensor, mask: Tensor, positions: Tensor, pair: Tensor) -> Tensor:
    """[target logit, foil logit] at the masked position (B, 2), without the full-vocabulary product."""
    hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    at_mask = hidden[torch.arange(len(positions), device=hidden.device), positions]
    return id_logits(resolve_head(model, "masked-lm"), at_mask[:, None], pair, intermediate=False)[:, 0]


def _columns(dataset: Dataset) -> dict[str, list]:
    return dataset.select_columns(["input_ids", "attention_mask", "mask_position", "target_id", "foil_id"])[:]


def train_blimp_mlm(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, recipe: Recipe, *, device: torch.device
) -> dict[str, Any]:
    """The authors' loop: AdamW, linear warm-up and decay, cross-entropy over [target, foil] logits at the mask.

    Batches are seeded and length-grouped (less padding); the new head's parameters use ``options["head_lr"]``.
    """
    check_mlm_head(model)
    options = dict(recipe.options)
    halves, _ = evidence_data(tokenizer, options["paradigms"], options["split_seed"])
    data = _columns(halves[recipe.train_split])
    n = len(data["input_ids"])
    lengths = np.array([len(ids) for ids in data["input_ids"]])
    steps = math.ceil(recipe.epochs * math.ceil(n / recipe.batch_size))
    batches = epoch_batches(lengths, recipe.batch_size, steps, recipe.seed)
    new_head = tuple(options["new_head_prefixes"])
    labels = torch.zeros(recipe.batch_size, dtype=torch.long, device=device)  # the target is class 0 of [target, foil]
    pad_id = tokenizer.pad_token_id

    def loss_of(index: np.ndarray) -> Tensor:
        logits = pair_logits(model, *_pair_batch(data, index, pad_id, device))
        return torch.nn.functional.cross_entropy(logits, labels[: len(index)])

    try:
        stats = train_loop(
            model, batches, loss_of, steps=steps, lr=recipe.lr, weight_decay=recipe.weight_decay,
            warmup_steps=round(recipe.warmup_ratio * steps), max_grad_norm=recipe.max_grad_norm, fused=True,
            lr_of=lambda name: options["head_lr"] if name.startswith(new_head) else recipe.lr, smoothing=0.9,
            desc="fine-tuning (blimp MLM)",
        )
    finally:
        model.eval()
    return {"examples": n, "steps": steps, "final_loss": stats["final_loss"], "decoder_tied": True}


@torch.inference_mode()
def predict_pairs(model: PreTrainedModel, dataset: Dataset, batch_size: int = 256) -> np.ndarray:
    """[target, foil] logits at the mask for every row of an annotated dataset: (N, 2)."""
    model.eval()
    data = _columns(dataset)
    device = next(model.parameters()).device
    pad_id = model.config.pad_token_id or 0
    out = [pair_logits(model, *_pair_batch(data, range(s, min(s + batch_size, len(dataset))), pad_id, device))
           .float().cpu() for s in range(0, len(dataset), batch_size)]
    return torch.cat(out).numpy()


def evaluate_blimp_mlm(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, recipe: Recipe, *, device: torch.device
) -> dict[str, float]:
    """Accuracy (target logit > foil logit) on the held-out half, overall and per paradigm (``accuracy_<short>``)."""
    options = dict(recipe.options)
    halves, _ = evidence_data(tokenizer, options["paradigms"], options["split_seed"])
    dataset = halves[recipe.eval_split]
    logits = predict_pairs(model, dataset)
    right = logits[:, 0] > logits[:, 1]
    paradigms = np.asarray(list(dataset["paradigm"]))
    metrics = {"accuracy": float(right.mean()), "examples": len(dataset)}
    for paradigm in options["paradigms"]:
        metrics[f"accuracy_{blimp.SHORT_NAMES.get(paradigm, paradigm)}"] = float(right[paradigms == paradigm].mean())
    return metrics
