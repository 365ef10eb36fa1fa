"""BLiMP cue annotation: contractions, rules against the hand-checked gold sample, coverage, token mapping, halves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from normxlogit.data import blimp, evidence
from normxlogit.data.benchmarks import DataNotFoundError, data_dirs
from normxlogit.data.blimp import BlimpExample, SkippedPair

GOLD_PATH = Path(__file__).parent.parent / "normxlogit" / "resources" / "blimp_gold.jsonl"  # shipped: chapter 5 reads it


def _blimp_root() -> Path | None:
    return next((d for d in data_dirs() if (d / "blimp" / f"{blimp.PAPER_PARADIGMS[0]}.jsonl").is_file()), None)


needs_data = pytest.mark.skipif(_blimp_root() is None, reason="no local BLiMP copy (set NORMXLOGIT_DATA)")


def _record(good: str, bad: str, pair_id: str = "x") -> dict:
    return {"sentence_good": good, "sentence_bad": bad, "pairID": pair_id}


# --------------------------------------------------------------------------------------------------- text handling
@pytest.mark.parametrize(
    "text, expected",
    [
        ("Renee hasn't hurt herself.", "Renee has not hurt herself."),
        ("They aren't, weren't and don't.", "They are not, were not and do not."),
        ("It doesn't; it isn't; it wasn't.", "It does not; it is not; it was not."),
        ("Marla won't go. Bo can't go.", "Marla will not go. Bo can not go."),
        ("Won't he? Can't she? Don't!", "Will not he? Can not she? Do not!"),
        ("He shan't, she couldn't, they wouldn't, we shouldn't, I hadn't.",
         "He shall not, she could not, they would not, we should not, I had not."),
        ("They're sure we've seen what I'm sure you'll see.",
         "They are sure we have seen what I am sure you will see."),
        ("Joseph's teacher isn\u2019t here.", "Joseph's teacher is not here."),
    ],
)
def test_expand_contractions(text: str, expected: str) -> None:
    assert blimp.expand_contractions(text) == expected


def test_split_words_keeps_possessives_and_splits_punctuation() -> None:
    assert blimp.split_words("Joseph's plumbers like the Borgias' dog.") == [
        "Joseph's", "plumbers", "like", "the", "Borgias'", "dog", ".",
    ]


# --------------------------------------------------------------------------------------------------- rules
@pytest.mark.parametrize(
    "paradigm, good, bad, target, cues, span",
    [
        # The distractor inside "of ..." / "about ..." and inside a relative clause is never the cue.
        ("distractor_agreement_relational_noun", "The sisters of a lot of boys aren't here.",
         "The sisters of a lot of boys isn't here.", "are", ["sisters"], ["The", "sisters"]),
        ("distractor_agreement_relative_clause", "A lot of boys that the girl likes were leaving.",
         "A lot of boys that the girl likes was leaving.", "were", ["boys"], ["A", "lot", "of", "boys"]),
        ("regular_plural_subject_verb_agreement_1", "Harvard University hasn't left.",
         "Harvard University haven't left.", "has", ["University"], ["Harvard", "University"]),
        ("regular_plural_subject_verb_agreement_2", "The men like Helen.", "The man like Helen.", "men", ["like"],
         ["like"]),
        ("determiner_noun_agreement_1", "Kim fled these out in the open art galleries.",
         "Kim fled these out in the open art gallery.", "galleries", ["these"], ["these"]),
        ("determiner_noun_agreement_with_adj_2", "That boy saw that out in the open art gallery.",
         "That boy saw those out in the open art gallery.", "that", ["gallery"],
         ["out", "in", "the", "open", "art", "gallery"]),
        # "like" is a preposition after a verb, the verb itself after a subject.
        ("anaphor_number_agreement", "The girls can't sound like themselves.", "The girls can't sound like herself.",
         "themselves", ["girls"], ["The", "girls"]),
        ("anaphor_number_agreement", "These guys wouldn't like themselves.", "These guys wouldn't like himself.",
         "themselves", ["guys"], ["These", "guys"]),
        ("anaphor_gender_agreement", "Every dancer appreciates herself.", "Every dancer appreciates himself.",
         "herself", ["dancer"], ["Every", "dancer"]),
    ],
)
def test_rules_on_constructed_pairs(paradigm, good, bad, target, cues, span) -> None:
    example = blimp.annotate_pair(_record(good, bad), paradigm)
    assert isinstance(example, BlimpExample), example
    assert example.target_word == target
    assert example.cue_words == cues
    assert [example.words[i] for i in example.cue_span_indices] == span


@pytest.mark.parametrize(
    "good, bad, reason",
    [
        ("Kim likes herself.", "Kim likes herself.", "identical_sentences"),
        ("Kim likes herself.", "Kim liked themselves.", "several_differing_words"),
        ("Kim likes herself.", "Kim does like herself.", "different_word_counts"),
        ("Kim likes herself.", "Kim likes themselves herself.", "different_word_counts"),
    ],
)
def test_pairs_without_a_single_target_are_skipped_with_a_reason(good, bad, reason) -> None:
    result = blimp.annotate_pair(_record(good, bad, "7"), "anaphor_number_agreement")
    assert result == SkippedPair("anaphor_number_agreement", "7", reason)


def test_rule_failure_is_a_skip_not_a_guess() -> None:
    result = blimp.annotate_pair(_record("Kim saw the cat.", "Kim saw a cat."), "determiner_noun_agreement_2")
    assert isinstance(result, SkippedPair) and result.reason == "target_not_a_determiner"


def test_unsupported_paradigm_is_refused() -> None:
    with pytest.raises(ValueError, match="No cue rules"):
        blimp.annotate_pair(_record("a b.", "a c."), "wh_island")
    assert set(blimp.PAPER_PARADIGMS) <= set(blimp.AGREEMENT_PARADIGMS)
    assert set(blimp.SHORT_NAMES) == set(blimp.PAPER_PARADIGMS)


# --------------------------------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def records() -> dict[str, dict[str, dict]]:
    """All records of every supported paradigm, by paradigm and pair id (read once)."""
    if _blimp_root() is None:
        pytest.skip("no local BLiMP copy")
    return {p: {r["pairID"]: r for r in blimp.load_records(p, None)} for p in blimp.AGREEMENT_PARADIGMS}


def _gold() -> list[dict]:
    return [json.loads(line) for line in GOLD_PATH.read_text().splitlines() if line.strip()]


def test_gold_sample_has_25_varied_pairs_per_paper_paradigm() -> None:
    gold = _gold()
    for paradigm in blimp.PAPER_PARADIGMS:
        rows = [g for g in gold if g["paradigm"] == paradigm]
        assert len(rows) >= 25, paradigm
        assert len({g["pair_id"] for g in rows}) == len(rows), paradigm
        assert len({len(g["cue_indices"]) and g["cue_indices"][0] for g in rows}) > 1, paradigm  # cue positions vary


@needs_data
def test_annotator_agrees_with_every_gold_pair(records) -> None:
    disagreements = []
    for gold in _gold():
        record = records[gold["paradigm"]][gold["pair_id"]]
        words = blimp.split_words(blimp.expand_contractions(record["sentence_good"]))
        # The gold file itself must be consistent: its indices point at its words.
        assert words[gold["target_index"]] == gold["target_word"], gold
        assert [words[i] for i in gold["cue_indices"]] == gold["cue_words"], gold
        example = blimp.annotate_pair(record, gold["paradigm"])
        got = (example.target_index, list(example.cue_indices)) if isinstance(example, BlimpExample) else example
        if got != (gold["target_index"], gold["cue_indices"]):
            disagreements.append((gold, got))
    assert not disagreements


@needs_data
@pytest.mark.parametrize("paradigm", blimp.AGREEMENT_PARADIGMS)
def test_coverage_is_at_least_95_percent(records, paradigm) -> None:
    results = [blimp.annotate_pair(r, paradigm) for r in records[paradigm].values()]
    annotated = [r for r in results if isinstance(r, BlimpExample)]
    assert len(annotated) / len(results) >= 0.95
    for example in annotated:  # cues are real words, never the target or punctuation
        assert example.cue_indices and example.target_index not in example.cue_indices
        assert all(example.words[i][0].isalnum() for i in example.cue_indices)
        assert set(example.cue_indices) <= set(example.cue_span_indices)


@needs_data
def test_annotate_paradigm_reports_coverage() -> None:
    examples, coverage = blimp.annotate_paradigm("regular_plural_subject_verb_agreement_2")
    assert coverage["pairs"] == 1000
    assert coverage["annotated"] == len(examples) == 1000 - sum(coverage["skipped"].values())
    assert coverage["coverage"] == pytest.approx(len(examples) / 1000)


def test_missing_data_dir_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(DataNotFoundError):
        blimp.annotate_paradigm("anaphor_number_agreement", data_dir=tmp_path)


# --------------------------------------------------------------------------------------------------- tokenization
@pytest.fixture(scope="module")
def minilm():
    from transformers import AutoTokenizer

    from normxlogit.models import default_model_path

    return AutoTokenizer.from_pretrained(default_model_path())


@pytest.fixture(scope="module")
def bpe():
    """A RoBERTa-style byte-level BPE tokenizer with a leading-space marker, trained here on a small vocabulary so
    that names and rarer words split into several pieces."""
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import PreTrainedTokenizerFast

    if _blimp_root() is None:
        pytest.skip("no local BLiMP copy")
    texts = [
        blimp.expand_contractions(r[key])
        for p in blimp.PAPER_PARADIGMS
        for r in blimp.load_records(p, None)
        for key in ("sentence_good", "sentence_bad")
    ]
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    raw = ByteLevelBPETokenizer(add_prefix_space=True)
    raw.train_from_iterator(texts, vocab_size=600, min_frequency=2, special_tokens=special, show_progress=False)
    raw.post_processor = processors.RobertaProcessing(
        ("</s>", raw.token_to_id("</s>")), ("<s>", raw.token_to_id("<s>"))
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        mask_token="<mask>", cls_token="<s>", sep_token="</s>", add_prefix_space=True,
    )


def _example(paradigm: str, good: str, bad: str) -> BlimpExample:
    example = blimp.annotate_pair(_record(good, bad), paradigm)
    assert isinstance(example, BlimpExample)
    return example


def _check_mapping(tokenized, tokenizer) -> None:
    """Mask at the target's place, special tokens flagged, every cue piece decoding back to the cue words."""
    example = tokenized.example
    ids = tokenized.input_ids
    assert ids[tokenized.mask_position] == tokenizer.mask_token_id
    assert ids.count(tokenizer.mask_token_id) == 1
    special = tokenizer.get_special_tokens_mask(ids, already_has_special_tokens=True)
    special[tokenized.mask_position] = 0  # the target's place is not a special token (it is dropped by position)
    assert tokenized.special_tokens_mask == special
    assert tokenized.mask_position not in tokenized.cue_positions
    cue_text = tokenizer.decode([ids[k] for k in tokenized.cue_positions]).strip()
    assert cue_text.lower() == " ".join(example.cue_words).lower()
    assert tokenizer.decode([tokenized.target_id]).strip().lower() == example.target_word.lower()
    assert tokenizer.decode([tokenized.foil_id]).strip().lower() == example.foil_word.lower()
    assert set(tokenized.cue_positions) <= set(tokenized.cue_span_positions)


def test_token_positions_with_wordpiece(minilm) -> None:
    example = _example(
        "distractor_agreement_relational_noun",
        "The newspaper articles about Galileo aren't boring Kyrgyzstan's plumbers.",
        "The newspaper articles about Galileo isn't boring Kyrgyzstan's plumbers.",
    )
    tokenized = evidence.to_token_positions(example, minilm)
    assert not isinstance(tokenized, SkippedPair)
    _check_mapping(tokenized, minilm)
    assert tokenized.target_id == minilm.convert_tokens_to_ids("are")
    assert tokenized.foil_id == minilm.convert_tokens_to_ids("is")
    assert [minilm.convert_ids_to_tokens(tokenized.input_ids[k]) for k in tokenized.cue_positions] == ["articles"]
    span = minilm.decode([tokenized.input_ids[k] for k in tokenized.cue_span_positions])
    assert span == "the newspaper articles"
    # Every token of a word maps back to it; special tokens map to no word.
    assert tokenized.token_word_ids[0] is None and tokenized.token_word_ids[-1] is None


def test_multi_piece_cue_gives_all_its_pieces(minilm) -> None:
    example = _example(
        "regular_plural_subject_verb_agreement_1", "Kyrgyzstanis aren't leaving.", "Kyrgyzstanis isn't leaving."
    )
    tokenized = evidence.to_token_positions(example, minilm)
    assert len(tokenized.cue_positions) > 1
    assert tokenized.cue_positions == list(range(1, 1 + len(tokenized.cue_positions)))
    _check_mapping(tokenized, minilm)


@pytest.mark.parametrize(
    "good, bad, reason",
    [
        ("Kim flees from those sarcophagi.", "Kim flees from that sarcophagi.", None),
        ("Kim flees from those sarcophagi.", "Kim flees from those sarcophagus.", "target_not_single_token"),
        ("Kim flees from those dogs.", "Kim flees from those sarcophagus.", "foil_not_single_token"),
    ],
)
def test_target_and_foil_must_be_single_tokens(minilm, good, bad, reason) -> None:
    paradigm = "determiner_noun_agreement_2" if reason is None else "determiner_noun_agreement_1"
    tokenized = evidence.to_token_positions(_example(paradigm, good, bad), minilm)
    if reason is None:
        _check_mapping(tokenized, minilm)
    else:
        assert isinstance(tokenized, SkippedPair) and tokenized.reason == reason


def test_token_positions_with_byte_level_bpe(bpe) -> None:
    examples = [
        blimp.annotate_pair(r, p)
        for p in blimp.PAPER_PARADIGMS
        for r in blimp.load_records(p, None)[:150]
    ]
    results = [evidence.to_token_positions(e, bpe) for e in examples if isinstance(e, BlimpExample)]
    kept = [r for r in results if not isinstance(r, SkippedPair)]
    assert len(kept) > 300
    split_cues = 0
    for tokenized in kept:
        _check_mapping(tokenized, bpe)
        # A mid-sentence target is the space-marked token ("Ġherself"), as a RoBERTa model would see it.
        assert bpe.convert_ids_to_tokens(tokenized.target_id).startswith("\u0120")
        split_cues += len(tokenized.cue_positions) > 1
    assert split_cues > 20  # the small vocabulary does split cue words: the piece mapping is exercised


def test_slow_or_maskless_tokenizers_are_refused(minilm) -> None:
    from transformers import BertTokenizer, PreTrainedTokenizerFast

    from normxlogit.models import default_model_path

    example = _example("anaphor_number_agreement", "Kim likes herself.", "Kim likes themselves.")
    with pytest.raises(TypeError, match="fast tokenizer"):
        evidence.to_token_positions(example, BertTokenizer.from_pretrained(default_model_path()))
    no_mask = PreTrainedTokenizerFast(tokenizer_object=minilm.backend_tokenizer)  # like GPT-2: no mask token
    with pytest.raises(ValueError, match="no mask token"):
        evidence.to_token_positions(example, no_mask)


# --------------------------------------------------------------------------------------------------- dataset, halves
@pytest.fixture(scope="module")
def small_data_dir(tmp_path_factory):
    """A data root holding the first 120 pairs of each paper paradigm, to keep the dataset tests quick."""
    root = _blimp_root()
    if root is None:
        pytest.skip("no local BLiMP copy")
    out = tmp_path_factory.mktemp("data")
    (out / "blimp").mkdir()
    for paradigm in blimp.PAPER_PARADIGMS:
        lines = (root / "blimp" / f"{paradigm}.jsonl").read_text().splitlines()[:120]
        (out / "blimp" / f"{paradigm}.jsonl").write_text("\n".join(lines) + "\n")
    return out


@pytest.fixture(scope="module")
def dataset(minilm, small_data_dir):
    return evidence.build_dataset(blimp.PAPER_PARADIGMS, minilm, data_dir=small_data_dir)


def test_build_dataset_rows_and_stats(dataset, minilm) -> None:
    ds, stats = dataset
    assert set(stats) == set(blimp.PAPER_PARADIGMS)
    for paradigm, s in stats.items():
        assert s["pairs"] == 120
        assert s["kept"] + sum(s["dropped"].values()) == s["pairs"]
        assert s["kept"] == sum(p == paradigm for p in ds["paradigm"])
        assert set(s["dropped"]) <= {"target_not_single_token", "foil_not_single_token", "target_and_foil_same_token"}
    assert stats["anaphor_number_agreement"]["kept"] == 120  # every reflexive is one WordPiece
    for row in ds.select(range(0, len(ds), 7)):
        assert row["input_ids"][row["mask_position"]] == minilm.mask_token_id
        assert len(row["input_ids"]) == len(row["attention_mask"]) == len(row["special_tokens_mask"])
        cue_words = [row["words"][i] for i in row["cue_indices"]]
        assert minilm.decode([row["input_ids"][k] for k in row["cue_positions"]]) == " ".join(cue_words).lower()
        assert row["words"][row["target_index"]] == row["target_word"]


def test_split_halves_is_deterministic_and_disjoint(dataset) -> None:
    ds, _ = dataset
    halves = evidence.split_halves(ds, seed=42)
    again = evidence.split_halves(ds, seed=42)
    keys = {name: [(r["paradigm"], r["pair_id"]) for r in part] for name, part in halves.items()}
    assert keys == {name: [(r["paradigm"], r["pair_id"]) for r in part] for name, part in again.items()}
    finetune, evaluation = set(keys["finetune"]), set(keys["eval"])
    assert not finetune & evaluation
    assert finetune | evaluation == set(zip(ds["paradigm"], ds["pair_id"], strict=True))
    for paradigm in blimp.PAPER_PARADIGMS:
        n_fine = sum(p == paradigm for p, _ in finetune)
        n_eval = sum(p == paradigm for p, _ in evaluation)
        assert n_eval - n_fine in (0, 1)
    other = evidence.split_halves(ds, seed=0)
    assert {(r["paradigm"], r["pair_id"]) for r in other["finetune"]} != finetune
