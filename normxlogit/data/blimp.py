"""BLiMP evidence (cue) annotation for the layer-wise evidence-alignment experiment.

Each BLiMP minimal pair differs in one word, the **target** (its good form; the bad form is the **foil**). The
**cues** are the words that decide the target's form. The paper derived them with a dependency parser and a
coreference model; BLiMP is generated from templates, so here small rules over its regular structure do the same
for the agreement paradigms, validated on a hand-checked gold sample (``normxlogit/resources/blimp_gold.jsonl``, read with ``nx.resource``).

Annotation choices (the same for every paradigm, so the families stay comparable):

- Contractions are expanded first (``hasn't`` -> ``has not``, ``won't`` -> ``will not``, ``can't`` -> ``can not``:
  always "<word> not", so the number-marked auxiliary stays a word of its own); words are split on spaces with
  punctuation separated, a possessive (``Joseph's``, ``Borgias'``) stays one word.
- ``cue_indices`` holds the **head word** only: the noun that carries the number (or gender) the target agrees
  with, or, when the target is that noun, the determiner or verb agreeing with it. A multi-word noun or name
  (``art gallery``, ``Harvard University``) is headed by its last word; a quantifier ``a lot of N`` is headed by
  ``N``; determiners are not cues. In ``anaphor_*`` the antecedent is the subject, so the cue is the subject's head.
- ``cue_span_indices`` holds the cue's whole phrase up to the head, for a wider reading of "evidence": a noun
  cue's noun phrase (determiners, quantifiers, adjectives, compound parts; never the target, never a post-nominal
  ``of ...``/``about ...`` phrase or relative clause, which is where the distractor nouns live); for a determiner
  or verb cue, the word itself.

Rules live in one table, :data:`CUE_RULES` (paradigm -> rule); paradigms outside it are refused.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple


from .benchmarks import BLIMP_PAPER_PARADIGMS as PAPER_PARADIGMS
from .benchmarks import load_blimp

__all__ = [
    "AGREEMENT_PARADIGMS", "CUE_RULES", "PAPER_PARADIGMS", "SHORT_NAMES",
    "BlimpExample", "Cue", "CueRule", "SkippedPair", "TokenizedExample",
    "annotate_pair", "annotate_paradigm", "annotation_coverage", "expand_contractions", "render_words",
    "split_words",
    # the rules of CUE_RULES, to reuse for another paradigm
    "antecedent_of_reflexive", "determiner_of_noun", "noun_of_determiner", "subject_of_verb", "verb_of_subject",
]

# The paper's abbreviations, for plot labels.
SHORT_NAMES: dict[str, str] = {
    "anaphor_number_agreement": "ana",
    "determiner_noun_agreement_2": "dna",
    "determiner_noun_agreement_with_adj_2": "dnaa",
    "distractor_agreement_relational_noun": "darn",
    "regular_plural_subject_verb_agreement_1": "rpsv",
}

# ---------------------------------------------------------------------------------------------------------------
# Closed word classes. Open classes (nouns, verbs, adjectives) are never listed: the rules find them by position.
# ---------------------------------------------------------------------------------------------------------------
_DEMONSTRATIVES = frozenset({"this", "that", "these", "those"})
_DETERMINERS = _DEMONSTRATIVES | frozenset(
    "the a an some all most many every each no few several any both another".split()
)
_QUANTIFIER_PHRASES = (("a", "lot", "of"), ("lots", "of"))
_AUXILIARIES = frozenset(
    "not is are was were be been being am has have had do does did can could will would shall should may might must"
    .split()
)
_PREPOSITIONS = frozenset(
    "about with from at to for on in into like of around through over upon after by against toward towards near"
    " behind under without".split()
)
_RELATIVIZERS = frozenset("that who whom which whose".split())
# A noun's pre-head part ends where a post-nominal modifier starts ("The sisters OF ...", "The boys WHO ...").
# "like" is left out: after a subject it is the verb ("The men like chicken").
_POSTMODIFIER_STARTS = (_PREPOSITIONS - {"like"}) | _RELATIVIZERS

_NEGATIVE_IRREGULAR = {"can't": "can not", "won't": "will not", "shan't": "shall not"}
_NEGATIVE = re.compile(r"\b(\w+)n't\b", re.IGNORECASE)
_CLITICS = {"'re": " are", "'ve": " have", "'ll": " will", "'m": " am"}  # 's and 'd are ambiguous: left alone
_CLITIC = re.compile(r"(?<=\w)('re|'ve|'ll|'m)\b", re.IGNORECASE)
_WORD = re.compile(r"\w+(?:'\w*)*|[^\w\s]")
NO_SPACE_BEFORE = frozenset(".,;:!?)")


def expand_contractions(text: str) -> str:
    """Expand negative and unambiguous contractions: ``hasn't`` -> ``has not``, ``won't`` -> ``will not``.

    ``can't`` becomes ``can not`` (not ``cannot``) so every negation is "<auxiliary> not". The capital of a
    sentence-initial word is kept. ``'s`` and ``'d`` (is/has/possessive, had/would) are left as written.
    """
    text = text.replace("\u2019", "'")

    def negative(match: re.Match) -> str:
        word = match.group(0)
        expanded = _NEGATIVE_IRREGULAR.get(word.lower(), f"{match.group(1)} not")
        return expanded[0].upper() + expanded[1:] if word[0].isupper() else expanded

    text = _NEGATIVE.sub(negative, text)
    return _CLITIC.sub(lambda m: _CLITICS[m.group(1).lower()], text)


def split_words(text: str) -> list[str]:
    """Words of ``text`` with punctuation split off; possessives (``Joseph's``, ``Borgias'``) stay one word."""
    return _WORD.findall(text)


def _is_punct(word: str) -> bool:
    return not any(ch.isalnum() for ch in word)


# ---------------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------------
def render_words(words: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """Join words into natural text (no space before punctuation); returns the text and each word's char span."""
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    for i, word in enumerate(words):
        if i and word not in NO_SPACE_BEFORE:
            parts.append(" ")
            pos += 1
        spans.append((pos, pos + len(word)))
        parts.append(word)
        pos += len(word)
    return "".join(parts), spans



@dataclass(frozen=True)
class BlimpExample:
    """One annotated pair: the good sentence's words, the target (good word) and foil (bad word), the cues."""

    paradigm: str
    pair_id: str
    words: tuple[str, ...]
    target_index: int
    target_word: str
    foil_word: str
    cue_indices: tuple[int, ...]
    cue_span_indices: tuple[int, ...]

    @property
    def cue_words(self) -> list[str]:
        """The cue (head) words."""
        return [self.words[i] for i in self.cue_indices]

    @property
    def bad_words(self) -> list[str]:
        """The bad sentence's words (the foil in the target's place)."""
        return [*self.words[: self.target_index], self.foil_word, *self.words[self.target_index + 1 :]]

    @property
    def sentence(self) -> str:
        """The good sentence, contractions expanded."""
        return render_words(self.words)[0]

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (lists, not tuples) for JSON or a Dataset row."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class SkippedPair:
    """A pair left out, and why (e.g. ``several_differing_words``, ``target_not_single_token``)."""

    paradigm: str
    pair_id: str
    reason: str


@dataclass(frozen=True)
class TokenizedExample:
    """A :class:`BlimpExample` as model input: the target replaced by the mask token, cues as token positions."""

    example: BlimpExample
    input_ids: list[int]
    attention_mask: list[int]
    special_tokens_mask: list[int]  # 1 at [CLS]/[SEP]-like tokens; 0 at mask_position (drop it by position)
    token_word_ids: list[int | None]  # word index of each token; None for special tokens
    mask_position: int
    target_id: int
    foil_id: int
    cue_positions: list[int]  # every piece of every cue word
    cue_span_positions: list[int]


# ---------------------------------------------------------------------------------------------------------------
# Cue rules: (words, target index) -> Cue, or a string saying why no cue was found.
# ---------------------------------------------------------------------------------------------------------------
class Cue(NamedTuple):
    """What a rule returns: the cue head word indices and the cue's phrase (word indices)."""

    heads: list[int]
    span: list[int]


CueRule = Callable[[Sequence[str], int], "Cue | str"]


def _skip_determiners(words: Sequence[str], start: int, end: int) -> int:
    """Index of the first word after the leading determiners, quantifiers (``a lot of``) and possessors."""
    i = start
    while i < end:
        lowered = tuple(w.lower() for w in words[i : i + 3])
        phrase = next((q for q in _QUANTIFIER_PHRASES if lowered[: len(q)] == q), None)
        if phrase is not None:
            i += len(phrase)
        elif words[i].lower() in _DETERMINERS or words[i].endswith("'s") or words[i].endswith("'"):
            i += 1
        else:
            break
    return i


def _noun_phrase_head(words: Sequence[str], start: int, end: int) -> Cue | str:
    """Head of the noun phrase that starts at ``start`` (and ends by ``end``): the last word before any post-nominal
    modifier (a preposition or relativizer), after the determiners. The span runs from ``start`` to the head."""
    nominal = _skip_determiners(words, start, end)
    stop = nominal
    while stop < end and words[stop].lower() not in _POSTMODIFIER_STARTS and not _is_punct(words[stop]):
        stop += 1
    if stop == nominal:
        return "no_noun_in_noun_phrase"
    if any(w.lower() in _AUXILIARIES for w in words[nominal:stop]):
        return "unrecognised_noun_phrase"
    return Cue([stop - 1], list(range(start, stop)))


def subject_of_verb(words: Sequence[str], target: int) -> Cue | str:
    """Target = the finite verb; cue = the head of the subject, which is everything before the verb.

    The head stops before ``of``/``about`` phrases and relative clauses, so distractor nouns are never cues.
    """
    if target == 0:
        return "no_subject_before_verb"
    return _noun_phrase_head(words, 0, target)


def verb_of_subject(words: Sequence[str], target: int) -> Cue | str:
    """Target = the subject's head noun; cue = the finite verb (or auxiliary) right after it."""
    verb = target + 1
    if verb >= len(words) or _is_punct(words[verb]):
        return "no_verb_after_subject"
    if words[verb].lower() in _POSTMODIFIER_STARTS:
        return "subject_has_postmodifier"
    return Cue([verb], [verb])


def noun_of_determiner(words: Sequence[str], target: int) -> Cue | str:
    """Target = a demonstrative; cue = the head of its noun phrase (the last word before the phrase ends)."""
    if words[target].lower() not in _DEMONSTRATIVES:
        return "target_not_a_determiner"
    end = target + 1
    # Pre-nominal adjectives may hold prepositions ("this out in the open library"), so only a clause or sentence
    # boundary ends the phrase.
    while end < len(words) and not _is_punct(words[end]) and words[end].lower() not in _RELATIVIZERS | _AUXILIARIES:
        end += 1
    if end == target + 1:
        return "no_noun_after_determiner"
    return Cue([end - 1], list(range(target + 1, end)))


def determiner_of_noun(words: Sequence[str], target: int) -> Cue | str:
    """Target = a noun; cue = the demonstrative of its noun phrase (the nearest one before it, in the phrase)."""
    for i in range(target - 1, -1, -1):
        word = words[i].lower()
        if word in _DEMONSTRATIVES:
            return Cue([i], [i])
        if word in _AUXILIARIES or _is_punct(word):
            break
    return "no_determiner_before_noun"


def antecedent_of_reflexive(words: Sequence[str], target: int) -> Cue | str:
    """Target = a reflexive (``herself``, ``themselves``); cue = the head of the subject, its antecedent.

    Reading backwards: an optional preposition (``about herself``), the main verb, the auxiliaries and ``not``,
    then the subject. ``like`` is a verb or a preposition, so the prepositional reading is tried first and dropped
    when it leaves no well-formed subject ("The Impressionists like themselves").
    """
    readings = (True, False) if target > 0 and words[target - 1].lower() in _PREPOSITIONS else (False,)
    for skip_preposition in readings:
        verb = target - 1
        while skip_preposition and verb >= 0 and words[verb].lower() in _PREPOSITIONS:
            verb -= 1
        if verb <= 0 or words[verb].lower() in _AUXILIARIES | _DETERMINERS:
            continue
        end = verb
        while end > 0 and words[end - 1].lower() in _AUXILIARIES:
            end -= 1
        cue = _noun_phrase_head(words, 0, end) if end > 0 else "no_subject"
        if isinstance(cue, Cue) and cue.heads[0] == end - 1:  # the subject must run right up to the verb group
            return cue
    return "no_antecedent_found"


# Paradigm -> rule. The agreement paradigms fall in five families; anything else is refused, not guessed.
CUE_RULES: dict[str, CueRule] = {
    "anaphor_number_agreement": antecedent_of_reflexive,
    "anaphor_gender_agreement": antecedent_of_reflexive,
    "determiner_noun_agreement_2": noun_of_determiner,
    "determiner_noun_agreement_irregular_2": noun_of_determiner,
    "determiner_noun_agreement_with_adj_2": noun_of_determiner,
    "determiner_noun_agreement_with_adj_irregular_2": noun_of_determiner,
    "determiner_noun_agreement_1": determiner_of_noun,
    "determiner_noun_agreement_irregular_1": determiner_of_noun,
    "determiner_noun_agreement_with_adjective_1": determiner_of_noun,
    "determiner_noun_agreement_with_adj_irregular_1": determiner_of_noun,
    "regular_plural_subject_verb_agreement_1": subject_of_verb,
    "irregular_plural_subject_verb_agreement_1": subject_of_verb,
    "distractor_agreement_relational_noun": subject_of_verb,
    "distractor_agreement_relative_clause": subject_of_verb,
    "regular_plural_subject_verb_agreement_2": verb_of_subject,
    "irregular_plural_subject_verb_agreement_2": verb_of_subject,
}

AGREEMENT_PARADIGMS: tuple[str, ...] = tuple(CUE_RULES)


# ---------------------------------------------------------------------------------------------------------------
# Annotation
# ---------------------------------------------------------------------------------------------------------------
def _rule_for(paradigm: str) -> CueRule:
    try:
        return CUE_RULES[paradigm]
    except KeyError:
        raise ValueError(
            f"No cue rules for BLiMP paradigm {paradigm!r}; supported: {', '.join(AGREEMENT_PARADIGMS)}."
        ) from None


def annotate_pair(record: Mapping[str, Any], paradigm: str | None = None) -> BlimpExample | SkippedPair:
    """Annotate one BLiMP record (``sentence_good``, ``sentence_bad``, ``pairID``; paradigm from ``UID`` if None).

    Returns a :class:`BlimpExample`, or a :class:`SkippedPair` saying why the pair has no single target or no cue.
    """
    paradigm = paradigm or str(record["UID"])
    rule = _rule_for(paradigm)
    pair_id = str(record.get("pairID", ""))
    good = split_words(expand_contractions(record["sentence_good"]))
    bad = split_words(expand_contractions(record["sentence_bad"]))
    if len(good) != len(bad):
        return SkippedPair(paradigm, pair_id, "different_word_counts")
    differing = [i for i, (g, b) in enumerate(zip(good, bad, strict=True)) if g != b]
    if len(differing) != 1:
        return SkippedPair(paradigm, pair_id, "identical_sentences" if not differing else "several_differing_words")
    target = differing[0]
    cue = rule(good, target)
    if isinstance(cue, str):
        return SkippedPair(paradigm, pair_id, cue)
    return BlimpExample(
        paradigm=paradigm,
        pair_id=pair_id,
        words=tuple(good),
        target_index=target,
        target_word=good[target],
        foil_word=bad[target],
        cue_indices=tuple(cue.heads),
        cue_span_indices=tuple(i for i in cue.span if i != target),
    )


def load_records(paradigm: str, data_dir: str | os.PathLike | None) -> list[dict[str, Any]]:
    return load_blimp(paradigm, data_dir=data_dir).to_list()  # the local copy first, then the Hub


def annotate_paradigm(
    paradigm: str, data_dir: str | os.PathLike | None = None
) -> tuple[list[BlimpExample], dict[str, Any]]:
    """Annotate every pair of one paradigm; returns the annotated examples and a coverage summary.

    Coverage: ``{"paradigm", "pairs", "annotated", "coverage" (fraction), "skipped": {reason: count}}``.
    """
    _rule_for(paradigm)  # fail before loading data
    examples: list[BlimpExample] = []
    skipped: Counter[str] = Counter()
    records = load_records(paradigm, data_dir)
    for record in records:
        result = annotate_pair(record, paradigm)
        if isinstance(result, SkippedPair):
            skipped[result.reason] += 1
        else:
            examples.append(result)
    coverage = {
        "paradigm": paradigm,
        "pairs": len(records),
        "annotated": len(examples),
        "coverage": len(examples) / len(records) if records else 0.0,
        "skipped": dict(skipped),
    }
    return examples, coverage


def annotation_coverage(
    paradigms: Iterable[str] = AGREEMENT_PARADIGMS, data_dir: str | os.PathLike | None = None
) -> list[dict[str, Any]]:
    """The coverage summary of :func:`annotate_paradigm` for each paradigm (a table for the book)."""
    return [annotate_paradigm(p, data_dir)[1] for p in paradigms]
