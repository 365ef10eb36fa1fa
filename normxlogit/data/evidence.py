"""BLiMP pairs as model input for evidence alignment: token positions of target and cues, the dataset, its halves.

:func:`build_dataset` turns the annotated pairs of :mod:`normxlogit.data.blimp` into rows a masked LM reads (the
target replaced by the mask token, cues as token positions), keeping pairs whose target and foil are single tokens;
:func:`split_halves` splits them into the fine-tuning and evaluation halves; :func:`evidence_data` does both for a
tokenizer and caches the result in memory.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from datasets import Dataset, DatasetDict, Features, Value
from datasets import Sequence as SequenceFeature
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ..models import DEFAULT_MODEL, resolve_model_name
from .blimp import (PAPER_PARADIGMS, BlimpExample, SkippedPair, TokenizedExample,
                    annotate_paradigm, render_words)

def _token_word_ids(offsets: Sequence[tuple[int, int]], special: Sequence[int], spans) -> list[int | None]:
    """Word index of each token, by character overlap (works for WordPiece, BPE with or without a leading-space
    marker, SentencePiece); a zero-width token goes to the word starting where it stands."""
    ids: list[int | None] = []
    for (start, end), is_special in zip(offsets, special, strict=True):
        word = None
        if not is_special:
            for w, (ws, we) in enumerate(spans):
                if (start < we and end > ws) if end > start else ws <= start < we:
                    word = w
                    break
        ids.append(word)
    return ids


def _encode(tokenizer: PreTrainedTokenizerBase, words: Sequence[str]) -> tuple[dict[str, list], list[int | None]]:
    text, spans = render_words(words)
    enc = tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    return enc, _token_word_ids(enc["offset_mapping"], enc["special_tokens_mask"], spans)


def to_token_positions(example: BlimpExample, tokenizer: PreTrainedTokenizerBase) -> TokenizedExample | SkippedPair:
    """Model input for one example under ``tokenizer`` (a fast Hugging Face tokenizer with a mask token).

    The good sentence is tokenized as text, the target's token is replaced by the mask token (ids are edited, the
    text is never re-tokenized), and every word-level index is mapped to token positions through the offsets, so
    a cue word split in several pieces gives all its pieces. Pairs whose target or foil is not one token (with the
    leading-space marker a BPE vocabulary gives a mid-sentence word) come back as a :class:`SkippedPair`.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("to_token_positions needs a fast tokenizer (it reads character offsets).")
    if tokenizer.mask_token_id is None:
        raise ValueError(f"{type(tokenizer).__name__} has no mask token; BLiMP cue alignment needs a masked LM.")

    def skip(reason: str) -> SkippedPair:
        return SkippedPair(example.paradigm, example.pair_id, reason)

    good, good_words = _encode(tokenizer, example.words)
    bad, bad_words = _encode(tokenizer, example.bad_words)
    t = example.target_index
    target_pos = [k for k, w in enumerate(good_words) if w == t]
    foil_pos = [k for k, w in enumerate(bad_words) if w == t]
    if len(target_pos) != 1:
        return skip("target_not_single_token")
    if len(foil_pos) != 1 or foil_pos != target_pos or len(bad["input_ids"]) != len(good["input_ids"]):
        return skip("foil_not_single_token")
    position = target_pos[0]
    target_id, foil_id = good["input_ids"][position], bad["input_ids"][position]
    if target_id == foil_id:
        return skip("target_and_foil_same_token")

    def positions(indices: Iterable[int]) -> list[int]:
        wanted = set(indices)
        return [k for k, w in enumerate(good_words) if w in wanted]

    cue_positions = positions(example.cue_indices)
    if {good_words[k] for k in cue_positions} != set(example.cue_indices):
        return skip("cue_not_tokenized")
    input_ids = list(good["input_ids"])
    input_ids[position] = tokenizer.mask_token_id
    return TokenizedExample(
        example=example,
        input_ids=input_ids,
        attention_mask=list(good["attention_mask"]),
        special_tokens_mask=list(good["special_tokens_mask"]),
        token_word_ids=good_words,
        mask_position=position,
        target_id=target_id,
        foil_id=foil_id,
        cue_positions=cue_positions,
        cue_span_positions=positions(example.cue_span_indices),
    )


# The TokenizedExample fields that become dataset columns (the others come from the BlimpExample).
_TOKEN_COLUMNS = (
    "input_ids", "attention_mask", "special_tokens_mask", "mask_position", "target_id", "foil_id", "cue_positions",
    "cue_span_positions",
)
_INTS = SequenceFeature(Value("int64"))
DATASET_FEATURES = Features(
    {
        "paradigm": Value("string"),
        "pair_id": Value("string"),
        "input_ids": _INTS,
        "attention_mask": _INTS,
        "special_tokens_mask": _INTS,
        "mask_position": Value("int64"),
        "target_id": Value("int64"),
        "foil_id": Value("int64"),
        "cue_positions": _INTS,
        "cue_span_positions": _INTS,
        "words": SequenceFeature(Value("string")),
        "target_index": Value("int64"),
        "target_word": Value("string"),
        "foil_word": Value("string"),
        "cue_indices": _INTS,
        "cue_span_indices": _INTS,
    }
)


def build_dataset(
    paradigms: str | Iterable[str], tokenizer: PreTrainedTokenizerBase, data_dir: str | os.PathLike | None = None
) -> tuple[Dataset, dict[str, dict[str, Any]]]:
    """One row per usable pair of ``paradigms`` under ``tokenizer`` (columns: :data:`DATASET_FEATURES`).

    Stats per paradigm: ``{"pairs", "annotated", "kept", "dropped": {reason: count}}``, where the reasons are the
    annotation's (no single differing word, no cue) and the tokenizer's (target or foil not a single token).
    """
    if isinstance(paradigms, str):
        paradigms = [paradigms]
    rows: list[dict[str, Any]] = []
    stats: dict[str, dict[str, Any]] = {}
    for paradigm in paradigms:
        examples, coverage = annotate_paradigm(paradigm, data_dir)
        dropped: Counter[str] = Counter(coverage["skipped"])
        kept = 0
        for example in examples:
            tokenized = to_token_positions(example, tokenizer)
            if isinstance(tokenized, SkippedPair):
                dropped[tokenized.reason] += 1
                continue
            kept += 1
            rows.append({**example.to_dict(), **{k: getattr(tokenized, k) for k in _TOKEN_COLUMNS}})
        stats[paradigm] = {
            "pairs": coverage["pairs"],
            "annotated": coverage["annotated"],
            "kept": kept,
            "dropped": dict(dropped),
        }
    columns = {name: [row[name] for row in rows] for name in DATASET_FEATURES}
    return Dataset.from_dict(columns, features=DATASET_FEATURES), stats


def _half_key(seed: int, paradigm: str, pair_id: str) -> str:
    return hashlib.sha256(f"{seed}/{paradigm}/{pair_id}".encode()).hexdigest()


def split_halves(dataset: Dataset, seed: int = 42) -> DatasetDict:
    """Split each paradigm's pairs into a ``finetune`` half and an ``eval`` half (the larger when odd).

    Pairs are ordered by a seeded hash of (paradigm, pair id), not by a random generator, so the split depends on
    nothing but the seed and the pairs: a pair present under two tokenizers mostly lands in the same half.
    """
    by_paradigm: dict[str, list[int]] = {}
    for row, paradigm in enumerate(list(dataset["paradigm"])):
        by_paradigm.setdefault(paradigm, []).append(row)
    pair_ids = list(dataset["pair_id"])
    finetune: list[int] = []
    evaluation: list[int] = []
    for paradigm, rows in by_paradigm.items():
        ordered = sorted(rows, key=lambda r: _half_key(seed, paradigm, pair_ids[r]))
        half = len(ordered) // 2
        finetune += ordered[:half]
        evaluation += ordered[half:]
    return DatasetDict(finetune=dataset.select(sorted(finetune)), eval=dataset.select(sorted(evaluation)))


_HALVES: dict[tuple, tuple[DatasetDict, dict]] = {}


def evidence_data(
    tokenizer: PreTrainedTokenizerBase | None = None,
    paradigms: Sequence[str] = PAPER_PARADIGMS,
    seed: int = 42,
) -> tuple[DatasetDict, dict[str, dict[str, Any]]]:
    """The annotated pairs of ``paradigms`` under ``tokenizer`` (default: MiniLM's), split into ``finetune`` and
    ``eval`` halves, and the annotation statistics per paradigm. Cached in memory."""
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_name(DEFAULT_MODEL))
    key = (tokenizer.name_or_path, len(tokenizer), tuple(paradigms), seed)
    if key not in _HALVES:
        dataset, stats = build_dataset(list(paradigms), tokenizer)
        _HALVES[key] = (split_halves(dataset, seed=seed), stats)
    return _HALVES[key]


def load_split(split: str, paradigms: Sequence[str] = PAPER_PARADIGMS, seed: int = 42) -> Dataset:
    """One half (``finetune`` or ``eval``) under the default tokenizer: the BLiMP recipe's ``load_data``."""
    return evidence_data(None, paradigms, seed)[0][split]
