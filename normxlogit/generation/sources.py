"""Sources of a prompt (the sentences or passages an answer may cite) and their prompt tokens.

A source is a character span of the prompt (the text the caller passed; with ``chat=True`` the user's message
inside the chat template). ``sources`` is given as

- ``"sentences"``: the prompt split into sentences by :func:`sentence_spans` (a regular expression: nothing to
  download, and the same split everywhere);
- a list of strings, each found in the prompt (searched in the order given, each from the end of the previous one,
  so a repeated sentence is found twice);
- a list of ``(start, end)`` character spans.

Sources must be non-empty and must not overlap. They map to prompt tokens by character offsets (the
``offset_mapping`` of a fast tokenizer): a token belongs to the source its characters overlap (to the one it
overlaps most when it straddles a boundary). Removing a source deletes those tokens (:mod:`.ablation`).

Token scores become source scores by an aggregation over the source's tokens (:func:`aggregate_sources`,
``source_aggregation`` in :func:`~normxlogit.explain_generation` and :func:`~normxlogit.evaluate_generation`):

- ``"sum"`` (the default): an additive reading of the scores predicts the effect of deleting a source as the sum of
  its tokens' effects, and that is what the faithfulness measures test (top-k drop deletes whole sources; the LDS
  predicts a set of kept sources by the sum of their scores). A sum also does not depend on how finely the tokenizer
  cuts a source, and does not rank a one-token source with one strong token above a sentence whose every token
  matters. The price: scores that are positive everywhere (norms, gradient norms, and NormXLogit and LogAt when
  the head gives the answer a positive logit on every position) grow with a source's length, so the sum ranks long
  sources first whatever they say.
- ``"mean"``: the average over the source's tokens (the sum divided by the number of tokens). It corrects that
  length bias (a short instruction among long reviews can come first), at the price of the additive reading: a mean
  no longer predicts what deleting the whole source does.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
from transformers import PreTrainedTokenizerBase

from .prompts import prompt_text

__all__ = ["SOURCE_AGGREGATIONS", "PromptSources", "Sources", "aggregate_sources", "answer_offsets", "attach_sources",
           "check_aggregation", "locate_sources", "sentence_spans", "source_spans"]

#: ``"sentences"``, a list of strings found in the prompt, or a list of (start, end) character spans.
Sources = Union[str, Sequence[str], Sequence[tuple[int, int]]]
#: How token scores become a source's score: the sum over its tokens (the default) or their mean.
SOURCE_AGGREGATIONS = ("sum", "mean")

# A sentence ends at ., ! ? or … (closing quotes and brackets included) followed by white space, or at a line break.
_END = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s|$)|\n")


def sentence_spans(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """The sentences of ``text[start:end]`` as (start, end) character spans of ``text``, white space trimmed.

    A regular-expression splitter: a sentence ends at ``.``, ``!``, ``?`` or ``…`` followed by white space, or at a
    line break. It needs no download; it also splits after abbreviations such as "e.g. " (pass spans or strings
    where that matters).
    """
    end = len(text) if end is None else end
    spans: list[tuple[int, int]] = []

    def add(a: int, b: int) -> None:
        piece = text[a:b]
        a, b = a + len(piece) - len(piece.lstrip()), b - (len(piece) - len(piece.rstrip()))
        if a < b:
            spans.append((a, b))

    pos = start
    for match in _END.finditer(text, start, end):
        add(pos, match.start() if match.group() == "\n" else match.end())
        pos = match.end()
    add(pos, end)
    return spans


def source_spans(text: str, sources: Sources) -> list[tuple[int, int]]:
    """``sources`` as (start, end) character spans of ``text``; clear errors for a string not in the text, an
    empty source, a span out of range and overlapping sources."""
    if isinstance(sources, str):
        if sources != "sentences":
            raise ValueError(f"sources must be 'sentences', a list of strings found in the prompt or a list of "
                             f"(start, end) character spans, not the string {sources!r}.")
        spans = sentence_spans(text)
        if not spans:
            raise ValueError("The prompt has no sentences to use as sources.")
        return spans
    items = list(sources)
    if not items:
        raise ValueError("sources is empty; pass 'sentences', a list of strings found in the prompt or a list of "
                         "(start, end) spans.")
    if all(isinstance(s, str) for s in items):
        spans = []
        cursor = 0
        for i, s in enumerate(items):
            if not s.strip():
                raise ValueError(f"source {i} is empty or white space only; every source needs some text.")
            at = text.find(s, cursor)
            if at < 0:
                at = text.find(s)
            if at < 0:
                raise ValueError(f"source {i} ({s[:60]!r}) is not in the prompt; sources must be copied exactly from "
                                 "it (or given as (start, end) character spans).")
            spans.append((at, at + len(s)))
            cursor = at + len(s)
    elif all(_is_span(s) for s in items):
        spans = [(int(a), int(b)) for a, b in items]
        for i, (a, b) in enumerate(spans):
            if not 0 <= a < b <= len(text):
                raise ValueError(f"source span {i} ({a}, {b}) is not a non-empty span of the prompt's {len(text)} "
                                 "characters (0 <= start < end <= len(prompt)).")
            if not text[a:b].strip():
                raise ValueError(f"source span {i} ({a}, {b}) is white space only; every source needs some text.")
    else:
        raise TypeError("sources must be 'sentences', a list of strings or a list of (start, end) int pairs "
                        f"(not a mix); got {items[:3]!r}.")
    order = sorted(range(len(spans)), key=lambda j: spans[j])
    for a, b in zip(order, order[1:]):
        if spans[b][0] < spans[a][1]:
            raise ValueError(f"sources {a} {spans[a]} and {b} {spans[b]} overlap; sources must be disjoint.")
    return spans


def _is_span(item: object) -> bool:
    return (isinstance(item, (tuple, list)) and len(item) == 2
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in item))


@dataclass
class PromptSources:
    """Sources located in a prompt: their text, character spans (of the prompt as given) and token positions."""

    texts: list[str]
    spans: list[tuple[int, int]]
    positions: list[list[int]]
    prompt_length: int

    def membership(self, length: int | None = None) -> np.ndarray:
        """(S, length) 0/1 matrix: row j marks source j's token positions (``length`` defaults to the prompt's)."""
        out = np.zeros((len(self.texts), self.prompt_length if length is None else length))
        for j, pos in enumerate(self.positions):
            out[j, pos] = 1.0
        return out


def locate_sources(tokenizer: PreTrainedTokenizerBase, prompt: str, sources: Sources, ids: Sequence[int], *,
                   chat: bool = False, system_prompt: str | None = None) -> PromptSources:
    """Find ``sources`` in ``prompt`` and the prompt tokens ``ids`` (as :func:`~.prompts.prompt_ids` made them)
    each one covers, from the fast tokenizer's character offsets."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"sources need character offsets, which only a fast tokenizer gives; this "
                         f"{type(tokenizer).__name__} is not one. Load it with use_fast=True.")
    text = prompt_text(tokenizer, prompt, chat=chat, system_prompt=system_prompt)
    spans = source_spans(prompt, sources)
    base = 0
    if chat:
        base = text.rfind(prompt)  # the user's turn comes last (after any system prompt)
        if base < 0:
            raise ValueError("The chat template changes the prompt's text, so the sources cannot be found in it; "
                             "use chat=False and write the template into the prompt yourself.")
    encoding = tokenizer(text, add_special_tokens=not chat, return_offsets_mapping=True)
    if list(encoding["input_ids"]) != list(ids):
        raise ValueError("Tokenising the prompt with offsets gave other tokens than the prompt's; sources cannot be "
                         "located for this tokenizer.")
    offsets = np.asarray(encoding["offset_mapping"], dtype=np.int64).reshape(-1, 2) - base
    starts, ends = offsets[:, 0], offsets[:, 1]
    bounds = np.asarray(spans, dtype=np.int64)
    overlap = np.minimum(ends[None, :], bounds[:, 1:2]) - np.maximum(starts[None, :], bounds[:, 0:1])  # (S, P)
    overlap = np.where(ends[None, :] > starts[None, :], np.clip(overlap, 0, None), 0)
    owner = np.where(overlap.max(0) > 0, overlap.argmax(0), -1)
    positions = [np.flatnonzero(owner == j).tolist() for j in range(len(spans))]
    empty = [j for j, p in enumerate(positions) if not p]
    if empty:
        j = empty[0]
        raise ValueError(f"source {j} ({prompt[spans[j][0]:spans[j][1]][:60]!r}) covers no token of its own (its "
                         "characters are inside tokens shared with a neighbouring source); give larger sources.")
    return PromptSources([prompt[a:b] for a, b in spans], spans, positions, len(ids))


def check_aggregation(aggregation: str) -> str:
    """``aggregation`` if it is one of :data:`SOURCE_AGGREGATIONS`; a clear error otherwise."""
    if not isinstance(aggregation, str) or aggregation not in SOURCE_AGGREGATIONS:
        raise ValueError(f"source_aggregation must be one of {', '.join(map(repr, SOURCE_AGGREGATIONS))} (the sum or "
                         f"the mean over a source's tokens), not {aggregation!r}.")
    return aggregation


def aggregate_sources(scores: np.ndarray, located: PromptSources, aggregation: str = "sum") -> np.ndarray:
    """Token scores (G, T) aggregated over each source's tokens: (G, S), their ``"sum"`` or ``"mean"`` (the sum
    divided by the source's token count; see the module docstring). NaN where a source token has no score."""
    check_aggregation(aggregation)
    scores = np.asarray(scores, dtype=np.float64)
    members = located.membership(scores.shape[1]).astype(bool)
    if not len(members):
        return scores[:, :0]
    reduce = np.sum if aggregation == "sum" else np.mean
    return np.stack([reduce(scores[:, m], axis=1) for m in members], axis=1)


def answer_offsets(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], text: str) -> list[tuple[int, int]]:
    """Each generated token's (start, end) characters in ``text`` (the decoded answer), from decoding prefixes."""
    ids = list(ids)
    prefixes = tokenizer.batch_decode([ids[: t + 1] for t in range(len(ids))], clean_up_tokenization_spaces=False)
    ends = np.minimum(np.maximum.accumulate([len(p) for p in prefixes]), len(text))
    starts = np.concatenate([[0], ends[:-1]])
    return [(int(a), int(b)) for a, b in zip(starts, ends)]


def attach_sources(result: Any, located: PromptSources, tokenizer: PreTrainedTokenizerBase,
                   aggregation: str = "sum") -> Any:
    """Give a :class:`~.result.GenerationAttribution` its sources, their scores (:func:`aggregate_sources` with
    ``aggregation``, recorded as ``source_aggregation``) and the answer's character offsets; returns the same
    object."""
    result.sources = list(located.texts)
    result.source_spans = list(located.spans)
    result.source_positions = [list(p) for p in located.positions]
    result.source_scores = aggregate_sources(result.scores, located, aggregation)
    result.source_aggregation = aggregation
    result.answer_offsets = answer_offsets(tokenizer, result.generated_ids, result.generated_text)
    return result
