"""Fine-tuning machinery on a tiny random BERT: caching, metadata, force, reproducibility, atomic writes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerBase

from normxlogit import cli
from normxlogit.training import loop, recipes, sequence, store
from normxlogit.models import default_model_path

_WORDS = ["good", "great", "fine", "bad", "awful", "poor"]


def tiny_sentiment(split: str) -> Dataset:
    """40 two-word phrases; label 1 when the phrase holds a positive word."""
    rng = np.random.default_rng(0 if split == "train" else 1)
    idx = rng.integers(0, len(_WORDS), size=(40, 2))
    return Dataset.from_dict(
        {"sentence": [f"{_WORDS[a]} {_WORDS[b]}" for a, b in idx], "label": [int(a < 3) for a, _ in idx]}
    )


def tiny_similarity(split: str) -> Dataset:
    rng = np.random.default_rng(2 if split == "train" else 3)
    idx = rng.integers(0, len(_WORDS), size=(24, 2))
    return Dataset.from_dict(
        {
            "sentence1": [_WORDS[a] for a, _ in idx],
            "sentence2": [_WORDS[b] for _, b in idx],
            "score": [5.0 if a == b else float(abs(a - b)) for a, b in idx],
        }
    )


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> str:
    """A randomly initialised 2-layer BERT with the MiniLM vocabulary, saved like a checkpoint."""
    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def registry(tmp_path, monkeypatch, tiny_base):
    """A private recipe registry with tiny recipes, and a private cache folder."""
    monkeypatch.setenv("NORMXLOGIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(recipes, "_RECIPES", dict(recipes._RECIPES))
    # One thread: a tiny model gains nothing from two, and thread hand-offs dominate on a busy machine.
    monkeypatch.setattr(store, "available_cores", lambda: 1)
    small = {"base_model": tiny_base, "batch_size": 8, "max_length": 16, "lr": 1e-3, "warmup_ratio": 0.0}
    recipes.register_recipe(
        "tiny",
        recipes.Recipe(
            task="classification",
            num_labels=2,
            label_names=("neg", "pos"),
            load_data=tiny_sentiment,
            text_columns=("sentence",),
            label_column="label",
            metric="accuracy",
            epochs=2,
            **small,
        ),
    )
    recipes.register_recipe(
        "tiny-reg",
        recipes.Recipe(
            task="regression",
            num_labels=1,
            load_data=tiny_similarity,
            text_columns=("sentence1", "sentence2"),
            label_column="score",
            metric="pearson",
            label_scale=5.0,
            **small,
        ),
    )
    return tmp_path / "cache"


def _count_training(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = sequence.train_sequence_model

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "train_sequence_model", counting)
    return calls


def test_builtin_recipes():
    assert {"sst2", "stsb"} <= set(recipes.list_recipes())
    sst2, stsb = recipes.get_recipe("sst2"), recipes.get_recipe("stsb")
    assert (sst2.task, sst2.num_labels, sst2.metric) == ("classification", 2, "accuracy")
    assert (stsb.task, stsb.num_labels, stsb.metric) == ("regression", 1, "pearson")
    assert store.cached_path("sst2").name == f"sst2-{recipes.recipe_hash(sst2)}"


def test_trains_once_then_loads_from_cache(registry, monkeypatch):
    calls = _count_training(monkeypatch)
    model, tokenizer = store.pretrained("tiny")
    assert calls == [1] and not model.training
    assert isinstance(tokenizer, PreTrainedTokenizerBase)
    assert model.config.id2label == {0: "neg", 1: "pos"}
    path = store.cached_path("tiny")
    assert path.parent == registry and (path / store.METADATA_FILE).is_file() and (path / "config.json").is_file()
    assert [p.name for p in registry.iterdir() if p.is_dir()] == [path.name]  # no temp folder left behind

    info = store.pretrained_info("tiny")
    assert info["metric"] == "accuracy" and 0.0 <= info["metric_value"] <= 1.0
    assert info["metrics"]["accuracy"] == info["metric_value"] and info["eval_examples"] == 40
    assert info["seed"] == 0 and info["train"]["steps"] == 10  # 2 epochs of 5 batches
    assert info["recipe"]["load_data"].endswith("tiny_sentiment") and "torch" in info["versions"]

    def no_training(*args, **kwargs):
        raise AssertionError("a cached model must not be retrained")

    monkeypatch.setattr(store, "train_sequence_model", no_training)
    again, _ = store.pretrained("tiny")
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


def test_force_retrains_reproducibly(registry, monkeypatch):
    calls = _count_training(monkeypatch)
    first, _ = store.pretrained("tiny")
    second, _ = store.pretrained("tiny", force=True)
    assert len(calls) == 2
    # Seeded: the same recipe gives the same weights (and the head is trained, not left at its init).
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    assert len([p for p in registry.iterdir() if p.is_dir()]) == 1


def test_regression_recipe(registry):
    model, tokenizer = store.pretrained("tiny-reg")
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    info = store.pretrained_info("tiny-reg")
    assert info["metric"] == "pearson" and {"pearson", "spearman", "mse"} <= set(info["metrics"])
    # Trained on score / 5 with the bias started at the mean; the rescaled head speaks in score units again.
    train = tiny_similarity("train")
    with torch.no_grad():
        pred = model(
            **tokenizer(train["sentence1"][:], train["sentence2"][:], padding=True, return_tensors="pt")
        ).logits
    assert pred.shape == (len(train), 1)
    assert abs(pred.mean().item() - np.mean(train["score"][:])) < 1.0


def test_interrupted_run_leaves_no_cache(registry, monkeypatch):
    def broken_save(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", broken_save)
    with pytest.raises(OSError, match="disk full"):
        store.pretrained("tiny")
    assert not any(p.is_dir() for p in registry.iterdir())  # neither the entry nor a half-written temp folder
    with pytest.raises(FileNotFoundError, match="normxlogit finetune tiny"):
        store.pretrained_info("tiny")


def test_custom_train_and_eval_hooks(registry, monkeypatch):
    seen = []

    def train_fn(model, tokenizer, recipe, *, device):
        seen.append(recipe.options["steps"])
        return {"custom": True}

    def eval_fn(model, tokenizer, recipe, *, device):
        return {"blimp_accuracy": 0.5, "examples": 3}

    built = []

    def builder() -> recipes.Recipe:
        built.append(1)
        base = recipes.get_recipe("tiny")
        return dataclasses.replace(
            base, metric="blimp_accuracy", train_fn=train_fn, eval_fn=eval_fn, options={"steps": 3}
        )

    recipes.register_recipe("custom", builder)
    assert built == []  # builders run lazily
    store.pretrained("custom")
    info = store.pretrained_info("custom")
    assert seen == [3] and built == [1]
    assert info["train"] == {"custom": True} and info["metric_value"] == 0.5
    assert info["recipe"]["train_fn"].endswith("train_fn") and info["recipe"]["options"] == {"steps": 3}


def test_registry_errors_and_hash(registry):
    with pytest.raises(ValueError, match="already registered"):
        recipes.register_recipe("tiny", recipes.get_recipe("tiny"))
    with pytest.raises(ValueError, match="sst2"):
        recipes.get_recipe("nope")
    recipe = recipes.get_recipe("tiny")
    assert recipes.recipe_hash(recipe) == recipes.recipe_hash(dataclasses.replace(recipe))
    assert recipes.recipe_hash(recipe) != recipes.recipe_hash(dataclasses.replace(recipe, lr=2e-3))


def test_finetune_cli_prints_metric_and_path(registry, capsys):
    assert cli.main(["finetune", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "tiny: accuracy = " in out and str(store.cached_path("tiny")) in out
    assert store.pretrained_info("tiny")["name"] == "tiny"
    assert cli.main(["finetune", "unknown-model"]) == 2
    assert "unknown-model" in capsys.readouterr().err


def test_length_grouped_batches_cover_everything_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 60, size=1000)
    batches = loop.length_grouped_batches(lengths, 16, np.random.default_rng(1), group=10)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    # Grouping cuts padding: the padded size is far below that of random batches.
    padded = sum(len(b) * lengths[b].max() for b in batches)
    random = sum(len(b) * lengths[b].max() for b in np.array_split(rng.permutation(1000), len(batches)))
    assert padded < 0.8 * random
