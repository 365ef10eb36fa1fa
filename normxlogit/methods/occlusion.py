"""Occlusion: what happens to the model's output when tokens are replaced by the mask token.

``leave_one_out`` (a registered method) scores token i by the change in the output when token i alone is replaced:

- classification: ``p(target | x) - p(target | x with token i masked)``, the drop in the explained (by default the
  predicted) class's probability; negative when the token works against the target;
- regression: ``|f(x) - f(x with token i masked)|``, the absolute change of the predicted value;
- masked / causal LM: the drop in the target token's probability at the explained position (the [MASK] being
  filled, or the last token).

The replacement is the tokenizer's mask token; tokenizers without one (GPT-2, Llama) use their unk token, then their
pad token (:func:`normxlogit.core.inputs.replacement_token_id` says which; ``replacement=`` overrides it). Attention mask and token types
are unchanged and ids are replaced directly (never through text). Special tokens and padding score 0.

Every single-token-masked variant of a batch is built as one tensor and run in chunks of ``chunk_size`` rows, so a
batch of B texts of n tokens costs about ``B * n / chunk_size`` forward passes, not ``B * n``.

:func:`occlude` masks chosen tokens of chosen texts together and reports what the model predicts then.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..core.heads import Head, pooled_positions, resolve_head
from ..core.inputs import Texts, collate, encode, eval_mode, model_device, model_inputs, replacement_token_id
from ..core.registry import Batch, register_method
from ..core.padding import lent_pad, padding_for
from ..core.padding import pooled_pad_id, rows_padding
from ..models import Task

__all__ = ["leave_one_out", "occlude", "variant_outputs"]


def _last_hidden(model: PreTrainedModel, inputs: dict[str, Tensor]) -> Tensor:
    """The final layer's hidden states (B, T, H), from the base model (no task head run on every position)."""
    base = model.base_model
    if base is model:
        return model(**model_inputs(model, inputs), output_hidden_states=True).hidden_states[-1]
    return base(**model_inputs(base, inputs)).last_hidden_state


def variant_outputs(
    model: PreTrainedModel,
    head: Head,
    inputs: dict[str, Tensor],
    rows: Tensor,
    ids: Tensor,
    positions: Tensor,
    chunk_size: int = 128,
) -> Tensor:
    """The model's output (logits at the explained position, (K, C)) for K variants of a padded batch.

    Variant k is row ``rows[k]`` of ``inputs`` with its input ids replaced by ``ids[k]``, read at ``positions[k]``.
    Runs ``ceil(K / chunk_size)`` forward passes of the base model and applies ``head`` at the explained positions
    only: for LMs the (T, vocab) logits of every variant would not fit in memory, and for decoder classifiers the
    position stays fixed even when the replacement is the pad token (which the model would otherwise skip).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}.")
    outs = []
    for start in range(0, len(rows), chunk_size):
        sel = slice(start, start + chunk_size)
        chunk = {k: v[rows[sel]] for k, v in inputs.items()}
        chunk["input_ids"] = ids[sel]
        pos = positions[sel]
        # Trim the padding no row of this chunk needs (rows are right-padded).
        width = max(int(chunk["attention_mask"].sum(-1).max()), int(pos.max()) + 1)
        hidden = _last_hidden(model, {k: v[:, :width] for k, v in chunk.items()})
        outs.append(head(hidden[torch.arange(len(pos), device=pos.device), pos]).float())
    return torch.cat(outs)


def _output_change(task: Task, original: Tensor, masked: Tensor, targets: Tensor) -> Tensor:
    """Per variant: the drop in the target's probability, or |change| of a regression output."""
    if task == "regression":
        return (original[:, 0] - masked[:, 0]).abs()
    index = targets.view(-1, 1)
    return original.softmax(-1).gather(-1, index).squeeze(-1) - masked.softmax(-1).gather(-1, index).squeeze(-1)


@register_method(
    "leave_one_out",
    description="drop in the target's probability (regression: |change| of the output) when the token alone is "
    "replaced by the mask token (unk/pad without one); B*n variants in chunks",
    signed=True,
)
def leave_one_out(batch: Batch, chunk_size: int = 256, replacement: int | None = None) -> Tensor:
    """Leave-one-out occlusion scores (B, T); special tokens and padding get 0.

    ``chunk_size``: variants per forward pass (memory against speed); ``replacement``: the token id that stands in
    for the left-out token (default: :func:`replacement_token_id`).
    """
    rep = replacement_token_id(batch.tokenizer) if replacement is None else int(replacement)
    ids = batch.input_ids
    scores = torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
    rows, cols = (~batch.special_tokens_mask.to(ids.device)).nonzero(as_tuple=True)
    if len(rows) == 0:
        return scores
    variants = ids[rows].clone()
    variants[torch.arange(len(rows), device=ids.device), cols] = rep
    masked = variant_outputs(batch.model, batch.head, batch.inputs, rows, variants, batch.positions[rows], chunk_size)
    scores[rows, cols] = _output_change(batch.task, batch.logits[rows].float(), masked, batch.targets[rows])
    return scores


@torch.no_grad()
def occlude(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Texts,
    positions: Sequence[Sequence[int]],
    *,
    replacement: int | None = None,
    max_length: int | None = None,
    chunk_size: int = 64,
) -> pd.DataFrame:
    """What a sequence classifier or regressor predicts when the given token positions of each text are masked.

    ``positions[k]``: token positions (indices into the tokenised text, as in ``Attribution.tokens``) to replace
    together in text k. One row per text: ``prediction`` and ``masked_prediction`` (class or value),
    ``p_original`` / ``p_masked`` (probability of the original prediction before and after; regression: the values),
    ``flipped`` (the predicted class changed; regression: NaN) and ``masked_tokens``.
    """
    encoded = encode(model, tokenizer, texts, max_length)
    items, rows = encoded.items, encoded.rows
    if len(positions) != len(items):
        raise ValueError(f"Got {len(positions)} position lists for {len(items)} texts: pass one list per text.")
    head = resolve_head(model)
    task = head.task
    if task not in ("classification", "regression"):
        raise ValueError(f"occlude supports sequence classifiers and regressors, not {task} models.")
    rep = replacement_token_id(tokenizer) if replacement is None else int(replacement)
    for k, (row, pos) in enumerate(zip(rows, positions)):
        bad = [p for p in pos if not 0 <= p < len(row["input_ids"])]
        if bad:
            raise ValueError(f"Position {bad[0]} is outside text {k}, which has {len(row['input_ids'])} tokens.")
    device = model_device(model)
    pads, lend = rows_padding(model, tokenizer, head, rows, *padding_for(model, tokenizer, head), avoid=[rep])
    with eval_mode(model), lent_pad(model, lend):
        inputs, _ = collate(pads, rows, device)
        masked_ids = inputs["input_ids"].clone()
        for k, pos in enumerate(positions):
            masked_ids[k, list(pos)] = rep
        n = len(rows)
        index = torch.arange(n, device=device)
        pooled = pooled_positions(inputs["attention_mask"], head.pooling, inputs["input_ids"],
                                  pooled_pad_id(model))
        both = variant_outputs(model, head, inputs, torch.cat([index, index]),
                               torch.cat([inputs["input_ids"], masked_ids]), torch.cat([pooled, pooled]), chunk_size)
    original, masked = both[:n].cpu(), both[n:].cpu()
    tokens = [tokenizer.convert_ids_to_tokens(r["input_ids"]) for r in rows]
    out = pd.DataFrame({"text": items, "masked_tokens": [[tokens[k][p] for p in pos] for k, pos in enumerate(positions)]})
    if task == "regression":
        out["prediction"] = original[:, 0].numpy()
        out["masked_prediction"] = masked[:, 0].numpy()
        out["p_original"], out["p_masked"], out["flipped"] = out["prediction"], out["masked_prediction"], np.nan
        return out
    pred = original.argmax(-1)
    out["prediction"] = pred.numpy()
    out["masked_prediction"] = masked.argmax(-1).numpy()
    out["p_original"] = original.softmax(-1)[torch.arange(n), pred].numpy()
    out["p_masked"] = masked.softmax(-1)[torch.arange(n), pred].numpy()
    out["flipped"] = out["prediction"] != out["masked_prediction"]
    return out
