"""What the faithfulness engine shows the model: rankings, ratios and perturbed inputs.

Tokens are ranked by attribution score (largest first). At ratio ``k``, **comprehensiveness** replaces the top
``c = int(k * n)`` ranked tokens and **sufficiency** replaces every ranked token after them. Two protocols:
``"clean"`` (special tokens never ranked or replaced; ``n`` = non-special tokens; a rounding-safe floor) and
``"paper"`` (the authors': only the first token excluded; ``n`` counts every token; ``int(k * n)``). Replacements:
``"mask"``, ``"pad"``, ``"unk"``, ``"attention"`` (drop from the attention mask) and ``"delete"``; ids are perturbed
directly, never round-tripped through text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from transformers import PreTrainedTokenizerBase

from ..core.attribution import Attribution
from ..core.inputs import replacement_token_id

PROTOCOLS = ("clean", "paper")
REPLACEMENTS = ("mask", "pad", "unk", "attention", "delete")
KINDS = ("comprehensiveness", "sufficiency")
#: 0, 0.1, ..., 1.0 as decimal literals (not ``np.linspace``), as the authors wrote them.
DEFAULT_RATIOS: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

Protocol = Literal["clean", "paper"]
Replacement = Literal["mask", "pad", "unk", "attention", "delete"]


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


