"""What the faithfulness engine shows the model: rankings, ratios and perturbed inputs.

Tokens are ranked by attribution score (largest first). At ratio ``k``, **comprehensiveness** replaces the top
``c = int(k * n)`` ranked tokens and **sufficiency** replaces every ranked token after them. Two protocols:
``"clean"`` (special tokens never ranked or replaced; ``n`` = non-special tokens; a rounding-safe floor) and
``"paper"`` (the authors': only the first token excluded; ``n`` counts every token; ``int(k * n)``). Replacements:
``"mask"``, ``"pad"``, ``"unk"``, ``"attention"`` (drop from the attention mask) and ``"delete"``; ids are perturbed
directly, never round-tripped through text. ``replacement=None`` means :func:`default_replacement`: the mask token for
encoders, :data:`DECODER_REPLACEMENT` for decoders (which have none; chosen by measurement, see
:mod:`normxlogit.evaluation.faithfulness`). For causal LMs, :func:`label_word_ids` turns label words into the token
ids whose probability at the last position is the prediction's confidence. :func:`classifier_outputs` and
:func:`causal_lm_outputs` run the perturbed inputs in length-sorted batches.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..core.attribution import Attribution
from ..core.inputs import eval_mode, model_device, model_inputs, padded_batches, replacement_token_id
from ..core.label_words import LabelWords, label_word_ids  # noqa: F401  (label_word_ids: re-exported for callers)
from ..models import Task

PROTOCOLS = ("clean", "paper")
REPLACEMENTS = ("mask", "pad", "unk", "attention", "delete")
KINDS = ("comprehensiveness", "sufficiency")
#: 0, 0.1, ..., 1.0 as decimal literals (not ``np.linspace``), as the authors wrote them.
DEFAULT_RATIOS: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

Protocol = Literal["clean", "paper"]
Replacement = Literal["mask", "pad", "unk", "attention", "delete"]
#: ``replacement=None`` for encoders: the mask token (the paper's choice; their pretraining saw it in place of words).
ENCODER_REPLACEMENT: Replacement = "mask"
#: ``replacement=None`` for decoders (causal LMs and decoder classifiers, which have no mask token): removing the
#: tokens. Chosen by measurement (the numbers are in :mod:`normxlogit.evaluation.faithfulness`).
DECODER_REPLACEMENT: Replacement = "delete"


def default_replacement(decoder: bool) -> Replacement:
    """What ``replacement=None`` means: :data:`DECODER_REPLACEMENT` for a decoder, else :data:`ENCODER_REPLACEMENT`."""
    return DECODER_REPLACEMENT if decoder else ENCODER_REPLACEMENT


def measured_targets(attrs: Sequence[Attribution], task: Task, num_classes: int, label_ids: list[int] | None,
                     tokenizer: PreTrainedTokenizerBase) -> np.ndarray | None:
    """The class whose probability each example's curves follow: the one its attributions explain (their
    ``target``; by default the prediction), so that a ranking is measured on the output it ranks tokens for.
    Classification: a class index; causal LMs: the index of the label word, or (without ``label_words``) the token
    id. None for regression. A clear error where an attribution's target cannot be measured."""
    if task == "regression":
        return None
    targets = [a.target for a in attrs]
    missing = [i for i, t in enumerate(targets) if t is None]
    if missing:
        raise ValueError(f"Attribution {missing[0]} has no target (it was computed for a regression model?), so "
                         "evaluate() cannot tell which class its ranking explains; explain the texts with this model.")
    values = np.asarray(targets, dtype=np.int64)
    if task == "causal-lm" and label_ids is not None:
        # Attributions of the label-word head already explain a label-word index; others explain a token id.
        read_by_head = np.array([bool(getattr(a, "meta", {}).get("label_words")) for a in attrs])
        bad = [i for i, t in enumerate(values) if read_by_head[i] and not 0 <= t < len(label_ids)]
        if bad:
            raise ValueError(f"Attribution {bad[0]} explains label word {int(values[bad[0]])}, but there are "
                             f"{len(label_ids)} label words (0..{len(label_ids) - 1}).")
        index = {token: k for k, token in enumerate(label_ids)}
        values = np.where(read_by_head, -1, values)  # checked above; mapped below
        bad = [i for i, t in enumerate(values) if not read_by_head[i] and int(t) not in index]
        if bad:
            token = tokenizer.convert_ids_to_tokens(int(values[bad[0]]))
            raise ValueError(
                f"Attribution {bad[0]} explains the token {token!r} (id {int(values[bad[0]])}), which is none of the "
                f"label_words (ids {label_ids}); evaluate() measures the probability of the label word the "
                "attributions explain. Explain a label word (target= its token id), or evaluate without label_words.")
        return np.array([int(targets[i]) if read_by_head[i] else index[int(t)] for i, t in enumerate(values)],
                        dtype=np.int64)
    bad = [i for i, t in enumerate(values) if not 0 <= t < num_classes]
    if bad:
        what = "token ids" if task == "causal-lm" else "classes"
        raise ValueError(f"Attribution {bad[0]} explains target {int(values[bad[0]])}, but this model has "
                         f"{num_classes} {what} (0..{num_classes - 1}); were the attributions computed with another "
                         "model?")
    return values


def ranked_positions(attribution: Attribution, protocol: Protocol = "clean") -> tuple[np.ndarray, int]:
    """The positions that may be replaced, highest score first (ties keep text order), and ``n``.

    ``clean``: the non-special tokens, ``n`` = their number. ``paper``: every position but the first, ``n`` = the
    full length (special tokens included), as in the authors' code.
    """
    scores = np.nan_to_num(np.asarray(attribution.scores, dtype=np.float64), nan=-np.inf)
    if protocol == "clean":
        candidates = np.flatnonzero(attribution.content_mask)
        n = len(candidates)
    elif protocol == "paper":
        candidates = np.arange(1, len(scores))
        n = len(scores)
    else:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}.")
    order = np.argsort(-scores[candidates], kind="stable")
    return candidates[order], n


def top_count(ratio: float, n: int, protocol: Protocol = "clean") -> int:
    """How many top-ranked tokens ratio ``ratio`` covers: ``int(k * n)`` (paper) or its rounding-safe floor (clean)."""
    if protocol == "paper":
        return int(ratio * n)
    return int(math.floor(ratio * n + 1e-9))


def replaced_positions(ranking: np.ndarray, count: int, kind: str) -> np.ndarray:
    """Comprehensiveness replaces the top ``count`` ranked positions; sufficiency all ranked positions after them."""
    if kind == "comprehensiveness":
        return ranking[:count]
    if kind == "sufficiency":
        return ranking[count:]
    raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}.")


def replacement_id(tokenizer: PreTrainedTokenizerBase, replacement: Replacement) -> int | None:
    """The id that replaces removed tokens under ``replacement`` (None for ``attention`` and ``delete``)."""
    if replacement not in REPLACEMENTS:
        raise ValueError(f"replacement must be one of {', '.join(REPLACEMENTS)}, not {replacement!r}.")
    return replacement_token_id(tokenizer, replacement)


def perturb(row: dict[str, np.ndarray], positions: np.ndarray, replacement: Replacement,
            token_id: int | None, pad_id: int) -> dict[str, np.ndarray]:
    """A copy of the model inputs ``row`` with ``positions`` removed the ``replacement`` way."""
    out = {k: v.copy() for k, v in row.items()}
    if len(positions) == 0:
        return out
    if replacement == "attention":
        out["attention_mask"][positions] = 0
    elif replacement == "delete":
        keep = np.ones(len(row["input_ids"]), dtype=bool)
        keep[positions] = False
        if not keep.any():  # nothing left to run: one padding token stands for the empty input
            out = {k: v[:1].copy() for k, v in row.items()}
            out["input_ids"][:] = pad_id
            return out
        out = {k: v[keep] for k, v in out.items()}
    else:
        out["input_ids"][positions] = token_id
    return out


def perturbation_table(attribution: Attribution, tokenizer: PreTrainedTokenizerBase,
                       ratios: Sequence[float] = (0.1, 0.3, 0.5), *, protocol: Protocol = "clean",
                       replacement: Replacement = "mask") -> pd.DataFrame:
    """What the model is shown: the perturbed token sequences of one example, per measure and ratio (for teaching)."""
    token_id = replacement_id(tokenizer, replacement)
    ranking, n = ranked_positions(attribution, protocol)
    row = {"input_ids": np.asarray(attribution.input_ids, dtype=np.int64),
           "attention_mask": np.ones(len(attribution), dtype=np.int64)}
    records = []
    for kind in KINDS:
        for ratio in ratios:
            count = top_count(ratio, n, protocol)
            out = perturb(row, replaced_positions(ranking, count, kind), replacement, token_id,
                          tokenizer.pad_token_id)
            tokens = tokenizer.convert_ids_to_tokens(out["input_ids"].tolist())
            if replacement == "attention":
                tokens = [t if keep else f"({t})" for t, keep in zip(tokens, out["attention_mask"])]
            records.append({"measure": kind, "ratio": ratio, "top tokens": count, "n": n,
                            "input the model sees": " ".join(tokens)})
    return pd.DataFrame(records)


# --- the model's outputs on them ------------------------------------------------------------------------------
def classifier_outputs(model: PreTrainedModel, pads: dict[str, int], inputs: list[dict[str, np.ndarray]],
                       batch_tokens: int, progress: bool | None) -> np.ndarray:
    """Logits (len(inputs), C) as float32, computed in length-sorted, right-padded batches of ``batch_tokens``."""
    show = len(inputs) > 5000 if progress is None else progress
    out: np.ndarray | None = None
    with eval_mode(model), torch.inference_mode():
        for idx, batch, _ in padded_batches(pads, inputs, model_device(model), batch_tokens=batch_tokens,
                                            progress=show, desc="faithfulness"):
            logits = model(**model_inputs(model, batch)).logits.float().cpu().numpy()
            if out is None:
                out = np.empty((len(inputs), logits.shape[-1]), dtype=np.float32)
            out[idx] = logits
    assert out is not None
    return out


def causal_lm_outputs(model: PreTrainedModel, pads: dict[str, int], inputs: list[dict[str, np.ndarray]],
                      batch_tokens: int, columns: Sequence[int] | None,
                      progress: bool | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A causal LM read at each input's last position: the logits of ``columns`` (len(inputs), K; K = 0 for None),
    the log of the softmax's normaliser over the whole vocabulary, and the most probable token.

    Batches are right-padded, so the last position is ``len(input_ids) - 1`` whatever the replacement; a pre-hook
    hands the output embedding only that position, so the full-vocabulary logits are formed once per input.
    """
    show = len(inputs) > 5000 if progress is None else progress
    cols = torch.as_tensor(list(columns or []), dtype=torch.long)
    picked = np.empty((len(inputs), len(cols)), dtype=np.float32)
    lse = np.empty(len(inputs), dtype=np.float64)
    top = np.empty(len(inputs), dtype=np.int64)
    decoder = model.get_output_embeddings()
    cache = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
    with eval_mode(model), torch.inference_mode():
        for idx, batch, _ in padded_batches(pads, inputs, model_device(model), batch_tokens=batch_tokens,
                                            progress=show, desc="faithfulness"):
            rows = torch.arange(len(idx))
            last = torch.as_tensor([len(inputs[i]["input_ids"]) - 1 for i in idx])
            shape = tuple(batch["input_ids"].shape)

            def pick(module, args):
                x = args[0]
                if x.dim() == 3 and tuple(x.shape[:2]) == shape:
                    return (x[rows.to(x.device), last.to(x.device)].unsqueeze(1),) + tuple(args[1:])
                return None

            handle = decoder.register_forward_pre_hook(pick) if isinstance(decoder, nn.Linear) else None
            try:
                logits = model(**model_inputs(model, batch), **cache).logits
            finally:
                if handle is not None:
                    handle.remove()
            logits = (logits[:, 0] if logits.shape[1] == 1 else logits[rows, last.to(logits.device)]).float()
            lse[idx] = torch.logsumexp(logits, -1).double().cpu().numpy()
            top[idx] = logits.argmax(-1).cpu().numpy()
            picked[idx] = logits[:, cols.to(logits.device)].cpu().numpy()
    return picked, lse, top


def lm_predictions(model: PreTrainedModel, pads: dict[str, int], rows: Sequence[dict], label_ids: list[int] | None,
                   batch_tokens: int) -> np.ndarray:
    """A causal LM's prediction for each encoded row at its last position: the index of the most probable label
    word, or (``label_ids=None``) the most probable token."""
    keys = [k for k in rows[0] if k != "special_tokens_mask"]
    picked, _, top = causal_lm_outputs(model, pads, [{k: np.asarray(r[k], dtype=np.int64) for k in keys}
                                                     for r in rows], batch_tokens, label_ids, False)
    return picked.argmax(-1) if label_ids else top


# --- several methods, cached ---------------------------------------------------------------------------------------
