"""Generated context suites for attributing a generation to its sources: seeded, offline, built from SST-2 and
STS-B sentences.

Each example is a context of a few sentences (the *sources*), a query about it, the answer a correct model gives,
and, for planted-evidence tasks, the index of the one source the answer provably depends on (the only place the
answer's content occurs). The prompt is ContextCite's template, ``"Context: {context}\\n\\nQuery: {query}"``, so that
ContextCite and our methods read the same text (meant for a chat model: wrap it in the chat template).

Which tasks a given model can do is measured, not assumed: ``bench/context_suites_accuracy.py`` scores
SmolLM2-135M-Instruct on every task (greedy decoding) and writes ``normxlogit/resources/context_suites_accuracy.json``; tasks below
80% are kept in :data:`TASKS` (so that their results can be reproduced) but are not in :data:`USABLE_TASKS`.

    from normxlogit.data.context_suites import make_suite
    suite = make_suite("repeat_word", n=50, seed=0)
    suite[0].prompt, suite[0].sources, suite[0].planted, suite[0].is_correct(generated_text)
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from .. import settings
from .benchmarks import load_sst2, load_stsb

__all__ = ["PROMPT_TEMPLATE", "TASKS", "USABLE_TASKS", "ContextExample", "SuiteTask", "load_accuracies",
           "make_suite", "sentence_pools"]

#: ContextCite's default prompt template (``context_cite.context_citer.DEFAULT_PROMPT_TEMPLATE``).
PROMPT_TEMPLATE = "Context: {context}\n\nQuery: {query}"
ACCURACY_FILE = "context_suites_accuracy.json"

# Concrete, unambiguous single-token-ish words for planted facts and instructions (never SST-2 vocabulary checks:
# each example also checks that its word occurs in no distractor).
_KEYWORDS = ("tangerine", "lighthouse", "violin", "pelican", "marble", "saffron", "glacier", "compass", "walnut",
             "harbor", "lantern", "meadow", "copper", "falcon", "orchid", "anchor", "velvet", "canyon", "pepper",
             "thimble", "cobalt", "juniper", "kettle", "otter", "quartz", "raven", "sapphire", "tulip", "walrus",
             "zeppelin", "biscuit", "cactus", "dolphin", "emerald", "feather", "giraffe", "hammock", "igloo",
             "jasmine", "koala")
_STOP = frozenset("""about above after again against because before being below between could doesn't during
every few further having itself might more most other ought ourselves should since than that their theirs them
themselves then there these they this those through under until very were what when where which while whom
would your yours film films movie movies story""".split())


@dataclass(frozen=True)
class ContextExample:
    """One generated prompt: its context, sources, query, expected answer and (if planted) the evidence's index."""

    task: str
    context: str
    query: str
    sources: tuple[str, ...]
    answer: str
    planted: int | None = None
    #: how :meth:`is_correct` reads an answer: ``copy`` (the planted source, and no other, is repeated), ``word``
    #: (``answer`` occurs as a word) or ``choice`` (the only label among ``labels`` that the answer names)
    check: str = "word"
    labels: tuple[str, ...] = field(default=())

    @property
    def prompt(self) -> str:
        """The user message: ContextCite's template filled with the context and the query."""
        return PROMPT_TEMPLATE.format(context=self.context, query=self.query)

    @property
    def source_spans(self) -> list[tuple[int, int]]:
        """Each source's character span ``(start, end)`` in :attr:`prompt`."""
        offset, spans, cursor = self.prompt.index(self.context), [], 0
        for source in self.sources:
            start = self.context.index(source, cursor)
            spans.append((offset + start, offset + start + len(source)))
            cursor = start + len(source)
        return spans

    def is_correct(self, generated: str) -> bool:
        """Whether a model's answer ``generated`` is right (case, punctuation and spacing ignored)."""
        said = _normal(generated)
        if self.check == "copy":
            others = [_normal(s) for i, s in enumerate(self.sources) if i != self.planted]
            return _normal(self.answer) in said and not any(o in said for o in others)
        if self.check == "choice":
            named = {label for label in self.labels if re.search(rf"\b{re.escape(_normal(label))}\b", said)}
            return named == {self.answer}
        return re.search(rf"\b{re.escape(_normal(self.answer))}\b", said) is not None

    def to_dict(self) -> dict:
        return {"task": self.task, "prompt": self.prompt, "context": self.context, "query": self.query,
                "sources": list(self.sources), "source_spans": self.source_spans, "answer": self.answer,
                "planted": self.planted, "check": self.check, "labels": list(self.labels)}


def _normal(text: str) -> str:
    """Lower case, punctuation dropped, spaces collapsed: the form answers are compared in."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


# --- the sentence pools ----------------------------------------------------------------------------------------
def _clean_sst2(text: str) -> str | None:
    """An SST-2 sentence in ordinary spelling ("it 's" -> "It's", a final period), or None if it is not one plain
    sentence of 6-22 words (inner sentence punctuation, PTB brackets and quotes are left out, so that a sentence
    splitter finds exactly the sources)."""
    text = text.strip()
    words = text.split()
    if not 6 <= len(words) <= 22 or re.search(r"-lrb-|-rrb-|`|''|--|[\\/*;:!?]|\.\s*\S|\.\.", text):
        return None
    text = re.sub(r" (n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", text)
    text = re.sub(r" ([,.])", r"\1", text).rstrip(" .") + "."
    return text[0].upper() + text[1:] if re.match(r"[a-z]", text) else None


@lru_cache(maxsize=4)
def _pools(data_dir: str | None) -> dict[str, tuple]:
    sst2 = load_sst2("validation", data_dir=data_dir)
    reviews = {0: [], 1: []}
    for text, label in zip(sst2["sentence"], sst2["label"]):
        clean = _clean_sst2(text)
        if clean is not None and clean not in reviews[label]:
            reviews[label].append(clean)
    stsb = load_stsb("validation", data_dir=data_dir)
    captions, seen = [], set()
    for text in list(stsb["sentence1"]) + list(stsb["sentence2"]):
        text = " ".join(text.split())
        words = text.split()
        # plain one-sentence captions: capitalised, one final period, 5-14 words
        if (5 <= len(words) <= 14 and re.fullmatch(r"[A-Z][A-Za-z0-9 ,'-]*\.", text) and text.lower() not in seen):
            seen.add(text.lower())
            captions.append(text)
    return {"negative": tuple(reviews[0]), "positive": tuple(reviews[1]), "captions": tuple(captions)}


def sentence_pools(data_dir: str | None = None) -> dict[str, tuple[str, ...]]:
    """The sentences suites draw from: ``negative`` and ``positive`` SST-2 reviews (validation split, cleaned) and
    STS-B ``captions`` (validation split, plain one-sentence ones)."""
    return _pools(None if data_dir is None else str(data_dir))


# --- the tasks -------------------------------------------------------------------------------------------------
def _draw(rng: np.random.Generator, pool: Sequence[str], k: int) -> list[str]:
    if len(pool) < k:
        raise ValueError(f"The sentence pool has {len(pool)} sentences; {k} are needed for one context.")
    return [pool[i] for i in rng.choice(len(pool), size=k, replace=False)]


def _unique_word(rng: np.random.Generator, sources: list[str], index: int, extra: str = "") -> str | None:
    """A content word (5+ letters) of ``sources[index]`` that occurs in no other source or in ``extra``."""
    others = " ".join(s for i, s in enumerate(sources) if i != index).lower() + " " + extra.lower()
    words = sorted({w for w in re.findall(r"[a-z]{5,}", sources[index].lower()) if w not in _STOP and w not in others})
    return str(words[rng.integers(len(words))]) if words else None


def _reviews(rng, pools, k):
    return _draw(rng, pools["negative"] + pools["positive"], k)


def _repeat_word(pool: str):
    def build(rng, pools, k):
        while True:
            sources = _draw(rng, pools["captions"] if pool == "captions" else pools["negative"] + pools["positive"], k)
            planted = int(rng.integers(k))
            word = _unique_word(rng, sources, planted)
            if word is not None:
                query = f'Repeat the sentence of the context that contains the word "{word}".'
                return sources, query, sources[planted], planted, "copy", ()
    return build


def _repeat_position(which: str):
    def build(rng, pools, k):
        sources = _draw(rng, pools["captions"], k)
        planted = 0 if which == "first" else k - 1
        return sources, f"Repeat the {which} sentence of the context.", sources[planted], planted, "copy", ()
    return build


def _keyword(rng, sources: list[str]) -> str:
    text = " ".join(sources).lower()
    return str(rng.choice([w for w in _KEYWORDS if w not in text]))


def _planted_fact(rng, pools, k):
    sources = _reviews(rng, pools, k - 1)
    word, planted = _keyword(rng, sources), int(rng.integers(k))
    sources.insert(planted, f"The secret password is {word}.")
    return sources, "What is the secret password? Answer with the password only.", word, planted, "word", ()


def _planted_fact_quoted(rng, pools, k):
    sources, query, word, planted, check, labels = _planted_fact(rng, pools, k)
    sources[planted] = f'The secret password is "{word}".'
    return sources, query, word, planted, check, labels


def _planted_instruction(rng, pools, k):
    sources = _reviews(rng, pools, k - 1)
    word, planted = _keyword(rng, sources), int(rng.integers(k))
    sources.insert(planted, f'When you are asked for the magic word, answer "{word}".')
    return sources, "What is the magic word?", word, planted, "word", ()


def _marker_word(rng, pools, k):
    sources, planted = _reviews(rng, pools, k), int(rng.integers(k))
    words = sources[planted].rstrip(".").split()
    # a plain word of 4+ letters that occurs once in the whole context, so that the answer is unambiguous
    text = " ".join(sources).lower()
    places = [i for i, w in enumerate(words) if i > 0 and re.fullmatch(r"[a-z]{4,}", w)
              and len(re.findall(rf"\b{w}\b", text)) == 1]
    if not places:
        return _marker_word(rng, pools, k)
    place = int(places[rng.integers(len(places))])
    word = words[place]
    words.insert(place, "@")
    sources[planted] = " ".join(words) + "."
    query = "Which word comes right after the @ sign in the context? Answer with that word only."
    return sources, query, word, planted, "word", ()


def _two_reviews(kind: str):
    def build(rng, pools, k):  # noqa: ARG001 - always two reviews
        if kind == "negative":
            pair, planted = [_draw(rng, pools["positive"], 1)[0], _draw(rng, pools["negative"], 1)[0]], 1
            if rng.random() < 0.5:
                pair, planted = pair[::-1], 0
            query = "Which review is negative? Answer 1 or 2."
        else:
            while True:
                pair, planted = _reviews(rng, pools, 2), int(rng.integers(2))
                word = _unique_word(rng, pair, planted)
                if word is not None:
                    break
            query = f'Which review contains the word "{word}"? Answer 1 or 2.'
        return pair, query, str(planted + 1), planted, "choice", ("1", "2")
    return build


def _attempts(limit: int = 10_000):
    """Draws a builder may try before it gives up on a pool that has no fitting context (a clear error, not a hang)."""
    yield from range(limit)
    raise ValueError(f"No fitting context in {limit} draws: the sentence pool lacks the sentences this task needs.")


def _first_word(rng, pools, k):
    """The context's first word (nothing planted: the first review supplies it, a word that no other source has)."""
    for _ in _attempts():
        sources = _reviews(rng, pools, k)
        word = sources[0].split()[0]
        rest = " ".join(sources).lower()[len(word):]
        if re.fullmatch(r"[A-Za-z]{4,}", word) and word.lower() not in _STOP and word.lower() not in rest:
            return sources, "What is the first word of the context? Answer with that word only.", word, 0, "word", ()


def _last_word(rng, pools, k):
    """The context's last word (nothing planted: the last review supplies it, a word that no other source has)."""
    for _ in _attempts():
        sources = _reviews(rng, pools, k)
        word = sources[-1].rstrip(".").split()[-1]
        rest = " ".join(sources).lower()[: -len(word) - 1]
        if re.fullmatch(r"[a-z]{4,}", word) and word not in _STOP and word not in rest:
            return sources, "What is the last word of the context? Answer with that word only.", word, k - 1, "word", ()


_NAMES = ("Anna", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Hugo")


def _who_wrote(rng, pools, k):
    """Reviews signed by names; which reviewer used a word that occurs in one review only."""
    for _ in _attempts():
        reviews, planted = _reviews(rng, pools, k), int(rng.integers(k))
        word = _unique_word(rng, reviews, planted, " ".join(_NAMES) + " wrote")
        if word is not None:
            break
    names = [str(n) for n in rng.choice(_NAMES, size=k, replace=False)]
    sources = [f"{name} wrote: {review}" for name, review in zip(names, reviews)]
    query = f'Who used the word "{word}"? Answer with the name only.'
    return sources, query, names[planted], planted, "choice", tuple(names)


def _sentiment_all(rng, pools, k):
    """Reviews that all share one polarity; is the context positive or negative (every source is evidence)."""
    label = "positive" if rng.random() < 0.5 else "negative"
    sources = _draw(rng, pools[label], k)
    return (sources, "Are these reviews positive or negative? Answer with one word.", label, None, "choice",
            ("positive", "negative"))


def _has_word(rng, pools, k):
    """Whether a quoted word occurs in the context (half the time it does, in one review; else it is in none)."""
    for _ in _attempts():
        sources, present = _reviews(rng, pools, k), bool(rng.random() < 0.5)
        holder = int(rng.integers(k))
        if present:
            word = _unique_word(rng, sources, holder)
        else:
            extra = _reviews(rng, pools, 1)
            word = _unique_word(rng, extra + sources, 0)
        if word is not None:
            break
    query = f'Does the context contain the word "{word}"? Answer yes or no.'
    return sources, query, "yes" if present else "no", None, "choice", ("yes", "no")


# "A woman is slicing a tomato.": a caption that a plain "What is the woman slicing?" asks about.
_ACTION = re.compile(r"(?:A|An|The) ([a-z]+) is ([a-z]+ing) (?:a|an|the|some|his|her) ([a-z]+)\.")


def _caption_object(rng, pools, k):
    """What a captioned person is doing it to, among captions that mention neither that person nor the object."""
    targets = [c for c in pools["captions"] if _ACTION.fullmatch(c)]
    if not targets:
        raise ValueError('No caption of the form "A <someone> is <verb>ing a <thing>." in the sentence pool.')
    for _ in _attempts():
        target = targets[rng.integers(len(targets))]
        subject, verb, thing = _ACTION.fullmatch(target).groups()
        others = [c for c in _draw(rng, pools["captions"], 4 * k)
                  if c != target and subject not in c.lower() and thing not in c.lower()][: k - 1]
        if len(others) == k - 1:
            break
    planted = int(rng.integers(k))
    return others[:planted] + [target] + others[planted:], f"What is the {subject} {verb}?", thing, planted, "word", ()


@dataclass(frozen=True)
class SuiteTask:
    """A task: how to build one example, how many sources by default, its answer budget and what it tests."""

    build: Callable
    sources: int
    max_new_tokens: int
    description: str
    planted: bool  # the answer provably depends on one source (the planted index is recorded)
    #: how the sources make the context: ``prose`` (joined by spaces), ``lines`` (one per line) or ``numbered``
    #: (``Review 1: ...``, one per line)
    layout: str = "prose"


#: Every task tried. ``planted=True``: the answer's content occurs in one source only (traceback accuracy).
TASKS: dict[str, SuiteTask] = {
    "repeat_word": SuiteTask(_repeat_word("reviews"), 5, 48, "repeat the review sentence that contains a given "
                             "word (SST-2 reviews)", True),
    "repeat_word_captions": SuiteTask(_repeat_word("captions"), 6, 32, "repeat the sentence that contains a given "
                                      "word (STS-B captions)", True),
    "repeat_first": SuiteTask(_repeat_position("first"), 6, 32, "repeat the first sentence (STS-B captions)", True),
    "repeat_last": SuiteTask(_repeat_position("last"), 6, 32, "repeat the last sentence (STS-B captions)", True),
    "planted_fact": SuiteTask(_planted_fact, 6, 12, "a planted fact (a secret password) among SST-2 reviews: "
                              "name it", True),
    "planted_fact_quoted": SuiteTask(_planted_fact_quoted, 6, 12, "the planted password in quotes", True),
    "planted_instruction": SuiteTask(_planted_instruction, 6, 12, "a planted instruction (which magic word to "
                                     "answer) among SST-2 reviews", True),
    "marker_word": SuiteTask(_marker_word, 5, 12, "answer with the word that follows an @ marker placed in one "
                             "review", True),
    "which_mentions": SuiteTask(_two_reviews("mentions"), 2, 12, "which of two reviews contains a given word "
                                "(answer 1 or 2)", True, "numbered"),
    "which_negative": SuiteTask(_two_reviews("negative"), 2, 12, "which of two reviews (one positive, one "
                                "negative) is negative (answer 1 or 2)", False, "numbered"),
    # Tasks where nothing is planted: the answer comes from the reviews' own text.
    "first_word": SuiteTask(_first_word, 5, 12, "the context's first word (a word no other review has; SST-2 "
                            "reviews, nothing planted)", True),
    "last_word": SuiteTask(_last_word, 5, 12, "the context's last word (a word no other review has; SST-2 reviews, "
                           "nothing planted)", True),
    "who_wrote": SuiteTask(_who_wrote, 3, 12, "which of three named reviewers used a word only their review has "
                           "(answer with the name)", True, "lines"),
    "sentiment_all": SuiteTask(_sentiment_all, 3, 12, "three reviews of one polarity: positive or negative? "
                               "(nothing planted; every review is evidence)", False),
    "caption_object": SuiteTask(_caption_object, 5, 12, 'what the one captioned person is doing something to ("What '
                                'is the woman slicing?"; STS-B captions, nothing planted)', True),
    "has_word": SuiteTask(_has_word, 4, 12, "whether a quoted word occurs in the context (yes or no; half the "
                          "time it is in one review, else in none)", False),
}


def make_suite(task: str, n: int = 50, seed: int = 0, *, sources: int | None = None,
               data_dir: str | Path | None = None) -> list[ContextExample]:
    """``n`` examples of ``task`` (see :data:`TASKS`), the same for the same ``seed`` (each task draws from its own
    stream, so suites do not depend on one another). ``sources``: sentences per context (the task's default)."""
    if task not in TASKS:
        raise ValueError(f"Unknown context task {task!r}; choose one of: {', '.join(TASKS)}.")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}.")
    spec = TASKS[task]
    k = spec.sources if sources is None else int(sources)
    if k < 2:
        raise ValueError(f"A context needs at least 2 sources to attribute between, got sources={sources!r}.")
    pools = sentence_pools(data_dir)
    rng = np.random.default_rng([seed, zlib.crc32(task.encode())])
    out = []
    for _ in range(n):
        srcs, query, answer, planted, check, labels = spec.build(rng, pools, k)
        context = ("\n".join(f"Review {i + 1}: {s}" for i, s in enumerate(srcs)) if spec.layout == "numbered"
                   else ("\n" if spec.layout == "lines" else " ").join(srcs))
        out.append(ContextExample(task, context, query, tuple(srcs), answer, planted if spec.planted else None,
                                  check, labels))
    return out


def load_accuracies(path: str | Path | None = None) -> dict:
    """The measured accuracies (``normxlogit/resources/context_suites_accuracy.json``: model, decoding, and per task its accuracy,
    interval and whether it is kept)."""
    path = Path(path) if path is not None else settings.resource(ACCURACY_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"No accuracy file at {path}; measure it with `python bench/context_suites_accuracy.py`.")
    return json.loads(path.read_text())


def _usable() -> tuple[str, ...]:
    try:
        tasks = load_accuracies()["tasks"]
    except (FileNotFoundError, KeyError, ValueError):
        return ()
    return tuple(name for name in TASKS if tasks.get(name, {}).get("kept"))


#: The tasks the measured model does well (>= 80% in ``normxlogit/resources/context_suites_accuracy.json``), in :data:`TASKS` order.
USABLE_TASKS: tuple[str, ...] = _usable()
