"""Shared fixtures: the MiniLM tokenizer and tiny randomly initialised models of every supported family."""

from __future__ import annotations

import os

import pytest
import torch
import transformers as tf

import normxlogit as nx

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Example notebooks under tests/data are inputs of tests (e.g. the student-notebook command), not chapters to run.
collect_ignore_glob = ["data/*.ipynb"]

FAMILIES = ["bert", "roberta", "distilbert", "albert", "electra", "deberta-v2", "gpt2", "llama"]
ENCODERS = ["bert", "roberta", "distilbert", "albert", "electra", "deberta-v2"]
DECODERS = ["gpt2", "llama"]


def tiny_config(family: str, vocab_size: int, **extra) -> tf.PretrainedConfig:
    """A two-layer, 32-wide configuration of ``family``; built locally, nothing downloaded."""
    common = dict(vocab_size=vocab_size, pad_token_id=0, **extra)
    h, heads, inter, layers = 32, 4, 64, 2
    if family == "bert":
        return tf.BertConfig(hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads,
                             intermediate_size=inter, **common)
    if family == "roberta":
        return tf.RobertaConfig(hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads,
                                intermediate_size=inter, max_position_embeddings=130, **common)
    if family == "distilbert":
        return tf.DistilBertConfig(dim=h, n_layers=layers, n_heads=heads, hidden_dim=inter, **common)
    if family == "albert":
        return tf.AlbertConfig(embedding_size=16, hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads,
                               intermediate_size=inter, **common)
    if family == "electra":
        return tf.ElectraConfig(embedding_size=16, hidden_size=h, num_hidden_layers=layers,
                                num_attention_heads=heads, intermediate_size=inter, **common)
    if family == "deberta-v2":
        return tf.DebertaV2Config(hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads,
                                  intermediate_size=inter, relative_attention=True, position_buckets=16,
                                  pos_att_type=["p2c", "c2p"], max_relative_positions=64, **common)
    if family == "gpt2":
        return tf.GPT2Config(n_embd=h, n_layer=layers, n_head=heads, n_inner=inter, n_positions=128, **common)
    if family == "llama":
        return tf.LlamaConfig(hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads,
                              num_key_value_heads=2, intermediate_size=inter, max_position_embeddings=128, **common)
    raise KeyError(family)


_CLASSES = {
    "classification": tf.AutoModelForSequenceClassification,
    "regression": tf.AutoModelForSequenceClassification,
    "masked-lm": tf.AutoModelForMaskedLM,
    "causal-lm": tf.AutoModelForCausalLM,
}


@pytest.fixture(scope="session")
def tokenizer():
    tok = tf.AutoTokenizer.from_pretrained(nx.default_model_path())
    return tok


@pytest.fixture(scope="session")
def make_tiny(tokenizer):
    """``make_tiny(family, task)``: a seeded tiny model in eval mode and the shared tokenizer."""
    cache: dict = {}

    def make(family: str, task: str):
        if (family, task) not in cache:
            torch.manual_seed(0)
            extra = {"num_labels": 1, "problem_type": "regression"} if task == "regression" else {"num_labels": 3}
            config = tiny_config(family, len(tokenizer), **extra)
            model = _CLASSES[task].from_config(config).eval()
            cache[family, task] = model
        return cache[family, task], tokenizer

    return make


@pytest.fixture(scope="session")
def minilm_classifier():
    """The real MiniLM with a seeded, untrained two-class head (behaviour claims use fine-tuned models)."""
    torch.manual_seed(0)
    return nx.load_model("all-MiniLM-L6-v2", task="classification", num_labels=2, allow_untrained_head=True)

# Unit tests run torch on one thread: tiny models gain nothing from more, and on a loaded 2-core machine thread
# hand-offs made tests/test_heads.py take 146 s instead of 9 s.
torch.set_num_threads(1)
