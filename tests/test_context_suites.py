"""The generated context suites: seeded determinism, sources that are substrings of the prompt, the planted index,
the answer checks, and errors (on a small fabricated copy of SST-2 / STS-B, and on the shared copy when present)."""

from __future__ import annotations

import re

import pytest

from normxlogit.data import data_dirs
from normxlogit.data.context_suites import (PROMPT_TEMPLATE, TASKS, ContextExample, make_suite, sentence_pools)

SHARED = next((d for d in data_dirs() if (d / "sst2" / "validation.tsv").is_file()), None)
WORDS = ("amber basil cedar delta ember fable gamut haven ivory jolly karma lemon mango noble opera pixel quill "
         "radar salsa tempo ultra vivid waltz xenon yacht zesty").split()


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory):
    """SST-2 and STS-B files in the GLUE layout: 40 reviews (tokenised like SST-2) and 40 captions."""
    root = tmp_path_factory.mktemp("data")
    (root / "sst2").mkdir()
    (root / "stsb").mkdir()
    reviews = ["sentence\tlabel"]
    for i in range(40):
        words = [WORDS[(i * 7 + j) % len(WORDS)] + f"{'s' * (i // 26)}" for j in range(6)]
        # half the reviews open and close with words of their own (for the first- and last-word tasks)
        first, last = ("the", "really") if i < 20 else (f"{WORDS[i % 26]}ly", f"{WORDS[(i + 9) % 26]}ish")
        reviews.append(f"{first} {' '.join(words)} film is n't bad , {last} . \t{i % 2}")
    reviews.append("a bad -lrb- bracketed -rrb- review that is long enough . \t0")  # left out by the cleaner
    (root / "sst2" / "validation.tsv").write_text("\n".join(reviews) + "\n")
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    rows = [header] + [f"{i}\tmain-captions\tx\t2012\t{i}\tnone\tnone\tA man number {WORDS[i % 26]} is "
                       f"playing {WORDS[(i + 3) % 26]}{i}.\tA {('woman', 'girl', 'chef', 'boy')[i % 4]} is cooking the "
                       f"{WORDS[(i + 5) % 26]}{'x' * (i // 26)}.\t2.0"
                       for i in range(40)]
    (root / "stsb" / "validation.tsv").write_text("\n".join(rows) + "\n")
    return str(root)


def test_pools_are_cleaned(fake_data):
    pools = sentence_pools(fake_data)
    assert len(pools["negative"]) == len(pools["positive"]) == 20  # the bracketed review is left out
    first = pools["negative"][0]
    assert first.startswith("The ") and "isn't bad, really." in first and " ," not in first
    assert len(pools["captions"]) == 80


@pytest.mark.parametrize("task", list(TASKS))
def test_suite_is_seeded_and_well_formed(fake_data, task):
    suite = make_suite(task, n=12, seed=3, data_dir=fake_data)
    assert suite == make_suite(task, n=12, seed=3, data_dir=fake_data)  # the same seed, the same suite
    assert suite != make_suite(task, n=12, seed=4, data_dir=fake_data)
    assert len(suite) == 12
    for ex in suite:
        assert ex.prompt == PROMPT_TEMPLATE.format(context=ex.context, query=ex.query)
        spans = ex.source_spans
        assert len(spans) == len(ex.sources) == TASKS[task].sources
        for source, (start, end) in zip(ex.sources, spans):
            assert ex.prompt[start:end] == source  # each source is a substring of the prompt, in order
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
        assert ex.is_correct(ex.answer if ex.check != "choice" else f"Review {ex.answer}.")
        if TASKS[task].planted:
            assert 0 <= ex.planted < len(ex.sources)
        else:
            assert ex.planted is None


@pytest.mark.parametrize("task", [t for t, spec in TASKS.items() if spec.planted and t != "which_mentions"])
def test_planted_source_is_the_only_evidence(fake_data, task):
    """The answer's content (or the word the query names) occurs in the planted source and in no other."""
    for ex in make_suite(task, n=20, seed=0, data_dir=fake_data):
        named = re.search(r'"([^"]+)"', ex.query)
        key = (named.group(1) if named else ex.answer).lower()
        if task == "marker_word":
            key = f"@ {ex.answer}"
        if task in ("repeat_first", "repeat_last"):
            assert ex.planted == (0 if task == "repeat_first" else len(ex.sources) - 1)
            key = ex.sources[ex.planted].lower()
        holders = [i for i, s in enumerate(ex.sources) if key in s.lower()]
        assert holders == [ex.planted], (task, key, ex.sources)


def test_which_mentions_names_the_right_review(fake_data):
    for ex in make_suite("which_mentions", n=20, seed=1, data_dir=fake_data):
        word = re.search(r'"([^"]+)"', ex.query).group(1)
        assert [word in s.lower() for s in ex.sources] == [ex.planted == 0, ex.planted == 1]
        assert ex.answer == str(ex.planted + 1)
        assert f"Review {ex.planted + 1}: {ex.sources[ex.planted]}" in ex.context


def test_tasks_without_planted_text(fake_data):
    """The answer comes from the sources' own text: the first or last word, a reviewer's name, a caption's object."""
    for ex in make_suite("first_word", n=10, seed=0, data_dir=fake_data):
        assert ex.sources[0].split()[0] == ex.answer and ex.planted == 0
    for ex in make_suite("last_word", n=10, seed=0, data_dir=fake_data):
        assert ex.sources[-1].rstrip(".").split()[-1] == ex.answer and ex.planted == len(ex.sources) - 1
    for ex in make_suite("who_wrote", n=10, seed=0, data_dir=fake_data):
        word = re.search(r'"([^"]+)"', ex.query).group(1)
        assert ex.sources[ex.planted] == f"{ex.answer} wrote: " + ex.sources[ex.planted].split(": ", 1)[1]
        assert [word in s for s in ex.sources] == [i == ex.planted for i in range(3)] and len(set(ex.labels)) == 3
    for ex in make_suite("caption_object", n=10, seed=0, data_dir=fake_data):
        subject, verb = re.fullmatch(r"What is the (\w+) (\w+)\?", ex.query).groups()
        assert ex.sources[ex.planted].endswith(f"{subject} is {verb} the {ex.answer}.")
    for task, labels in (("sentiment_all", ("positive", "negative")), ("has_word", ("yes", "no"))):
        suite = make_suite(task, n=20, seed=0, data_dir=fake_data)
        assert {ex.answer for ex in suite} == set(labels) and all(ex.labels == labels for ex in suite)
    pools = sentence_pools(fake_data)
    for ex in make_suite("sentiment_all", n=10, seed=0, data_dir=fake_data):
        assert set(ex.sources) <= set(pools[ex.answer])
    for ex in make_suite("has_word", n=10, seed=0, data_dir=fake_data):
        word = re.search(r'"([^"]+)"', ex.query).group(1)
        assert (word in ex.context.lower()) == (ex.answer == "yes")


def test_answer_checks():
    copy = ContextExample("t", "A cat sat. A dog ran.", "q", ("A cat sat.", "A dog ran."), "A cat sat.", 0, "copy")
    assert copy.is_correct("a CAT sat")
    assert not copy.is_correct("A cat sat. A dog ran.")  # repeating everything is not picking the sentence
    assert not copy.is_correct("A cat.")
    choice = ContextExample("t", "c", "q", ("x", "y"), "2", 1, "choice", ("1", "2"))
    assert choice.is_correct("Review 2 is negative.") and choice.is_correct("2")
    assert not choice.is_correct("1 or 2") and not choice.is_correct("Review 12") and not choice.is_correct("none")
    word = ContextExample("t", "c", "q", ("x", "y"), "otter", 0, "word")
    assert word.is_correct('The password is "Otter".') and not word.is_correct("otters")


def test_errors(fake_data):
    with pytest.raises(ValueError, match="Unknown context task 'nope'; choose one of"):
        make_suite("nope", data_dir=fake_data)
    with pytest.raises(ValueError, match="positive int"):
        make_suite("repeat_first", n=0, data_dir=fake_data)
    with pytest.raises(ValueError, match="at least 2 sources"):
        make_suite("repeat_first", n=1, sources=1, data_dir=fake_data)
    with pytest.raises(ValueError, match="sentence pool has"):
        make_suite("repeat_first", n=1, sources=500, data_dir=fake_data)


@pytest.mark.skipif(SHARED is None, reason="no local SST-2 / STS-B copy")
def test_shared_suites_are_plain_sentences():
    """On the real data every source is one sentence ending in one period, so any sentence splitter finds them."""
    for task in TASKS:
        for ex in make_suite(task, n=10, seed=0):
            for source in ex.sources:
                assert source.endswith(".") and not re.search(r"[.!?]\s", source[:-1]), source


def test_usable_tasks_are_the_measured_ones():
    """USABLE_TASKS are the tasks data/context_suites_accuracy.json keeps: each measured on 50+ prompts at >= 80%."""
    from normxlogit.data.context_suites import USABLE_TASKS, load_accuracies

    tasks = load_accuracies()["tasks"]
    assert set(tasks) == set(TASKS)  # every task tried is reported
    assert USABLE_TASKS == tuple(t for t in TASKS if tasks[t]["kept"])
    for name, row in tasks.items():
        assert row["n"] >= 50 and row["correct"] == round(row["accuracy"] * row["n"])
        assert row["kept"] == (row["accuracy"] >= 0.8)
    assert "planted_instruction" in USABLE_TASKS
