"""Data loaders: local copies, overrides, the Hub fallback and the errors a user sees."""

from __future__ import annotations

import datasets
import pytest
from datasets import Dataset

from normxlogit import settings
from normxlogit.data import benchmarks as data

SHARED = next((d for d in data.data_dirs() if (d / "sst2" / "validation.tsv").is_file()), None)
needs_shared = pytest.mark.skipif(SHARED is None, reason="no local copy of shared/data")


@pytest.fixture
def no_local_data(tmp_path, monkeypatch):
    """Hide every default data location, so only explicit overrides (or the Hub) can be found."""
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    monkeypatch.setattr(settings, "project_root", lambda: tmp_path / "nowhere" / "project")


@pytest.fixture
def hub_fails(monkeypatch):
    """Make every Hub call fail as it does without internet."""

    def offline(*args, **kwargs):
        raise ConnectionError("no internet")

    monkeypatch.setattr(datasets, "load_dataset", offline)


def _write(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@needs_shared
def test_sst2_validation():
    ds = data.load_sst2()
    assert len(ds) == 872
    assert ds.column_names == ["sentence", "label"]
    assert set(ds["label"][:]) == {0, 1}
    assert all(isinstance(s, str) and s for s in ds["sentence"][:])


@needs_shared
def test_stsb_both_splits_header_or_not():
    val = data.load_stsb("validation")
    assert len(val) == 1500
    assert val.column_names == ["sentence1", "sentence2", "score"]
    scores = val["score"][:]
    assert min(scores) >= 0.0 and max(scores) <= 5.0
    # train.tsv has no header row: its first data row must not be swallowed as one.
    train = data.load_stsb("train")
    assert len(train) == 5748
    assert train[0] == {"sentence1": "A plane is taking off.", "sentence2": "An air plane is taking off.", "score": 5.0}


@needs_shared
def test_blimp_paradigm_and_limit():
    ds = data.load_blimp("anaphor_number_agreement")
    assert len(ds) == 1000
    assert {"sentence_good", "sentence_bad", "one_prefix_word_good", "UID", "pairID"} <= set(ds.column_names)
    assert ds[0]["pairID"] == "0"  # stays a string, as on the Hub
    assert len(data.load_blimp("causative", limit=7)) == 7
    assert len(data.load_sst2("train", limit=5)) == 5


@needs_shared
def test_paradigm_list_matches_local_copy():
    local = sorted(p.stem for p in (SHARED / "blimp").glob("*.jsonl"))
    assert sorted(data.list_blimp_paradigms()) == local
    assert set(data.BLIMP_PAPER_PARADIGMS) <= set(local)


def test_data_dir_and_env_override(tmp_path, monkeypatch, hub_fails):
    root = tmp_path / "mine"
    _write(root / "sst2" / "validation.tsv", 'sentence\tlabel\na "quoted fine film \t1\nnull\t0\n')
    ds = data.load_sst2(data_dir=root)
    assert ds["sentence"][:] == ['a "quoted fine film ', "null"]  # quotes and "null" kept verbatim
    assert ds["label"][:] == [1, 0]

    env = tmp_path / "env"
    _write(env / "stsb" / "train.tsv", "0\tg\tf\t2012\t1\tn\tn\tA b.\tC d.\t2.500\n")
    monkeypatch.setenv(data.DATA_ENV, str(env))
    assert data.data_dirs()[0] == env
    assert data.load_stsb("train")[:] == {"sentence1": ["A b."], "sentence2": ["C d."], "score": [2.5]}


def test_missing_data_error_says_where_and_how(no_local_data, hub_fails):
    with pytest.raises(data.DataNotFoundError) as info:
        data.load_sst2()
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert data.DATA_ENV in message and "data_dir" in message
    assert "shared/data" in message and "nyu-mll/glue" in message


def test_explicit_data_dir_never_falls_back(tmp_path, monkeypatch):
    def hub(*args, **kwargs):
        raise AssertionError("the Hub must not be tried when data_dir is given")

    monkeypatch.setattr(datasets, "load_dataset", hub)
    with pytest.raises(FileNotFoundError, match="data_dir"):
        data.load_blimp("causative", data_dir=tmp_path)


def test_hub_fallback_normalises_columns(no_local_data, monkeypatch):
    calls = []

    def fake_hub(path, name, split):
        calls.append((path, name, split))
        if name == "stsb":
            return Dataset.from_dict(
                {"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [1.0, 4.5], "idx": [0, 1]}
            )
        return Dataset.from_dict({"sentence": ["x", "y", "z"], "label": [0, 1, 1], "idx": [0, 1, 2]})

    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    assert data.load_stsb("validation").column_names == ["sentence1", "sentence2", "score"]
    sst2 = data.load_sst2("train", limit=2)
    assert sst2.column_names == ["sentence", "label"] and len(sst2) == 2
    assert calls == [("nyu-mll/glue", "stsb", "validation"), ("nyu-mll/glue", "sst2", "train")]


def test_unknown_split_and_paradigm():
    with pytest.raises(ValueError, match="train, validation"):
        data.load_sst2("test")
    with pytest.raises(ValueError, match="validation"):
        data.load_stsb("dev")
    with pytest.raises(ValueError, match="anaphor_number_agreement"):
        data.load_blimp("no_such_paradigm")
