"""Decoder recipes (``sst2-smollm2``, ``stsb-smollm2``) on a tiny random Llama with a SmolLM2-like tokenizer: pad
token and side, what is trained (top blocks, LoRA merged back), BOS-separated pairs, and the self-check on the
trained model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizerFast

import normxlogit as nx
from normxlogit.training import decoder, recipes, store
from normxlogit.training.zoo import DECODER_TRAIN
from test_finetune import _WORDS, tiny_sentiment, tiny_similarity

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def llama_like_tokenizer() -> LlamaTokenizerFast:
    """A word-level tokenizer with SmolLM2's special tokens: <|endoftext|> (unk) 0, <|im_start|> (BOS) 1,
    <|im_end|> (EOS and pad, as SmolLM2 ships it) 2."""
    vocab = {t: i for i, t in enumerate(SPECIALS + _WORDS + ["movie", "."])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens(SPECIALS)
    return LlamaTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                              pad_token="<|im_end|>", unk_token="<|endoftext|>", add_bos_token=False,
                              padding_side="left")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tiny-llama")
    tok = llama_like_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture
def registry(tmp_path, monkeypatch, tiny_llama):
    monkeypatch.setenv("NORMXLOGIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(recipes, "_RECIPES", dict(recipes._RECIPES))
    monkeypatch.setattr(store, "available_cores", lambda: 1)
    small = {"base_model": tiny_llama, "batch_size": 8, "max_length": 16, "lr": 3e-3, "warmup_ratio": 0.0,
             "epochs": 2, "train_fn": DECODER_TRAIN}
    for trainable in ("top1", "lora", "full"):
        recipes.register_recipe(f"tiny-llama-{trainable}", recipes.Recipe(
            task="classification", num_labels=2, label_names=("neg", "pos"), load_data=tiny_sentiment,
            text_columns=("sentence",), label_column="label", metric="accuracy",
            options={"trainable": trainable}, **small))
    recipes.register_recipe("tiny-llama-reg", recipes.Recipe(
        task="regression", num_labels=1, load_data=tiny_similarity, text_columns=("sentence1", "sentence2"),
        label_column="score", metric="pearson", label_scale=5.0,
        options={"trainable": "top1", "add_bos_token": True}, **small))
    return tmp_path / "cache"


def test_builtin_decoder_recipes():
    sst2, stsb = recipes.get_recipe("sst2-smollm2"), recipes.get_recipe("stsb-smollm2")
    assert sst2.base_model == stsb.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (sst2.task, sst2.num_labels, sst2.metric) == ("classification", 2, "accuracy")
    assert (stsb.task, stsb.num_labels, stsb.metric) == ("regression", 1, "pearson")
    assert sst2.train_fn.identifier == stsb.train_fn.identifier == "normxlogit.training.decoder.train_decoder_sequence"


def test_pad_token_never_ends_a_text_and_pads_right(registry, tiny_llama):
    model, tok = store.pretrained("tiny-llama-top1")
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == model.config.pad_token_id == 0
    assert tok.pad_token_id != tok.eos_token_id and tok.padding_side == "right"
    # A text that ends with the EOS (a closed chat turn): the model pools that EOS, and so does the package's read.
    texts = ["good movie <|im_end|>", "awful", "poor fine great ."]
    attrs = nx.explain(model, tok, texts, method="logat")
    with torch.no_grad():
        own = model(**tok(texts, padding=True, return_tensors="pt")).logits
    for a, row in zip(attrs, own):
        assert a.position == len(a.tokens) - 1 and a.tokens[-1] != "<|endoftext|>"
        assert a.scores[a.position] == pytest.approx(float(row[a.target]), rel=1e-4, abs=1e-5)


def test_top_blocks_train_and_the_rest_stays(registry, tiny_llama):
    base, _ = nx.load_model(tiny_llama, "classification", 2)
    model, _ = store.pretrained("tiny-llama-top1")
    info = store.pretrained_info("tiny-llama-top1")
    assert info["train"]["trainable"] == "top1" and info["train"]["pad_token"] == "<|endoftext|>"
    before, after = dict(base.named_parameters()), dict(model.named_parameters())
    for name, value in after.items():
        moved = not torch.equal(value, before[name]) if not name.startswith("score") else True
        should = name.startswith(("model.layers.2.", "model.norm", "score"))
        assert moved == should, name


def test_apply_trainable_freezes_by_name(tiny_llama):
    model, _ = nx.load_model(tiny_llama, "classification", 2)
    decoder.apply_trainable(model, "head")
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["score.weight"]
    with pytest.raises(ValueError, match="top<k>"):
        decoder.apply_trainable(model, "bottom3")


def test_lora_is_merged_into_a_plain_model(registry, tiny_llama):
    pytest.importorskip("peft")
    base, _ = nx.load_model(tiny_llama, "classification", 2)
    model, tok = store.pretrained("tiny-llama-lora")
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert not any("lora" in n for n, _ in model.named_parameters())
    moved = [n for n, p in model.named_parameters() if not n.startswith("score")
             and not torch.equal(p, dict(base.named_parameters())[n])]
    assert any("q_proj" in n for n in moved) and not any("embed_tokens" in n for n in moved)
    nx.explain(model, tok, ["good movie", "bad"])  # the self-check holds on the merged model


def test_regressor_pairs_are_bos_separated_and_explained(registry):
    model, tok = store.pretrained("tiny-llama-reg")
    ids = tok("good movie", "bad .")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["<|im_start|>", "good", "movie", "<|im_start|>", "bad", "."]
    attrs = nx.explain(model, tok, [("good movie", "bad ."), ("fine", "poor")], method="normxlogit")
    for a in attrs:
        ranked = [t for t, m in zip(a.tokens, a.special_tokens_mask) if not m]
        assert "<|im_start|>" not in ranked  # the separator is a special token: never ranked
    with torch.no_grad():
        pred = model(**tok(["good movie"], ["bad ."], return_tensors="pt")).logits[0, 0]
    assert attrs[0].prediction == pytest.approx(float(pred), rel=1e-4)
    info = store.pretrained_info("tiny-llama-reg")
    assert np.isfinite(info["metric_value"])


def test_lora_regressor_keeps_units_and_records_its_learning_curve(registry, tiny_llama):
    """LoRA wraps the head (peft's modules_to_save); the rescale to label units and the curve must still apply."""
    pytest.importorskip("peft")
    recipes.register_recipe("tiny-llama-reg-lora", recipes.Recipe(
        task="regression", num_labels=1, load_data=tiny_similarity, text_columns=("sentence1", "sentence2"),
        label_column="score", metric="pearson", label_scale=5.0, base_model=tiny_llama, batch_size=8,
        max_length=16, lr=3e-3, warmup_ratio=0.0, epochs=2, train_fn=DECODER_TRAIN,
        options={"trainable": "lora", "add_bos_token": True, "curve_every": 2, "curve_size": 8}))
    model, tok = store.pretrained("tiny-llama-reg-lora")
    assert not any("lora" in n or "modules_to_save" in n for n, _ in model.named_parameters())
    data = tiny_similarity("validation")
    with torch.no_grad():
        pred = model(**tok(list(data["sentence1"]), list(data["sentence2"]), padding=True,
                           return_tensors="pt")).logits[:, 0].numpy()
    gold = np.asarray(data["score"], dtype=float)
    # in label units (0-5), not in units of label / 5: the mean prediction is near the mean label
    assert abs(pred.mean() - gold.mean()) < 0.5 * gold.std() + 0.5
    info = store.pretrained_info("tiny-llama-reg-lora")
    curve = info["train"]["learning_curve"]
    assert [p["step"] for p in curve] == list(range(2, 2 * len(curve) + 1, 2)) and len(curve) >= 2
    assert all(np.isfinite(p["pearson"]) and p["examples"] == 8 * p["step"] for p in curve)
