"""Never a silent wrong number: the self-check, decoder pooling, the caller's objects left alone, and clear errors
for bad input (issue 11's defects, each with the case that used to go wrong)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers as tf

import normxlogit as nx
from normxlogit.cli import main as cli
from normxlogit.core.heads import HeadMismatchError
from normxlogit.core.inputs import model_max_length

TEXTS = ["a gripping , funny film .", "dull ."]


# --- the self-check -------------------------------------------------------------------------------------------------
def test_a_wrong_head_is_refused_not_scored(make_tiny):
    model, tok = make_tiny("bert", "classification")
    with pytest.raises(HeadMismatchError, match="model's own output"):
        nx.explain(model, tok, TEXTS, head=lambda h: model.classifier(h))  # skips BERT's pooler
    # switched off only explicitly
    scores = nx.explain(model, tok, TEXTS, head=lambda h: model.classifier(h), check_head=False)
    assert len(scores) == 2


def test_head_escape_hatch_with_last_token_pooling(make_tiny):
    model, tok = make_tiny("gpt2", "classification")
    a = nx.explain(model, tok, TEXTS, head=lambda h: model.score(h), pooling="last")
    with torch.no_grad():
        enc = tok(TEXTS[0], return_tensors="pt")
        own = model(**enc).logits[0]
    assert a[0].position == enc["input_ids"].shape[1] - 1
    np.testing.assert_allclose(nx.explain(model, tok, TEXTS[0], method="logat", head=lambda h: model.score(h),
                                          pooling="last").scores[a[0].position], own[a[0].target].item(), rtol=1e-4)
    # the same head read at position 0 does not reproduce the model, and is refused
    with pytest.raises(HeadMismatchError):
        nx.explain(model, tok, TEXTS, head=lambda h: model.score(h), pooling="first")
    with pytest.raises(ValueError, match="pooling"):
        nx.explain(model, tok, TEXTS, head=lambda h: model.score(h), pooling="middle")


# --- decoder classifiers pool as transformers does -------------------------------------------------------------------
def test_decoder_classifier_explains_the_token_the_model_pools_when_the_text_ends_in_eos(make_tiny):
    model, tok = make_tiny("llama", "classification")
    eos = tok.sep_token_id  # the MiniLM tokenizer stands in; make its [SEP] the model's pad/EOS id
    tok = tok.__class__.from_pretrained(nx.default_model_path())
    tok.pad_token = tok.sep_token  # pad = EOS, as prepare_tokenizer does for decoders
    original = model.config.pad_token_id
    model.config.pad_token_id = eos
    try:
        _pools_before_eos(model, tok, eos)
    finally:
        model.config.pad_token_id = original


def _pools_before_eos(model, tok, eos):
    text = "a gripping film ."  # the MiniLM tokenizer ends every text with [SEP] = the model's pad id
    a = nx.explain(model, tok, text, method="logat")
    ids = tok(text)["input_ids"]
    assert ids[-1] == eos and a.position == len(ids) - 2  # the last token that is not the pad id
    with torch.no_grad():
        own = model(input_ids=torch.tensor([ids])).logits[0]
    assert a.scores[a.position] == pytest.approx(own[a.target].item(), rel=1e-4)
    # beside a longer text the explained class and scores do not change
    both = nx.explain(model, tok, [text, "the plot holds together until the last act , when it collapses ."],
                      method="logat")
    np.testing.assert_allclose(both[0].scores, a.scores, atol=1e-5)
    assert both[0].target == a.target


def test_pad_id_disagreement_warns_and_follows_the_model(make_tiny):
    model, tok = make_tiny("gpt2", "classification")
    model.config.pad_token_id = 5  # the model pools by 5; the tokenizer pads with 0
    try:
        with pytest.warns(UserWarning, match="pad_token_id"):
            alone = nx.explain(model, tok, "dull .", method="logat")
        with pytest.warns(UserWarning):
            beside = nx.explain(model, tok, ["dull .", "a gripping , funny and thoroughly entertaining film ."],
                                method="logat")
    finally:
        model.config.pad_token_id = 0
    assert beside[0].target == alone.target
    np.testing.assert_allclose(beside[0].scores, alone.scores, atol=1e-5)


def test_explain_leaves_the_callers_tokenizer_and_config_alone(make_tiny):
    model, _ = make_tiny("gpt2", "classification")
    tok = tf.AutoTokenizer.from_pretrained(nx.default_model_path())
    tok.padding_side = "left"
    before = (tok.padding_side, tok.pad_token, model.config.pad_token_id)
    model.config.pad_token_id = None
    try:
        nx.explain(model, tok, TEXTS)
        assert (tok.padding_side, tok.pad_token, model.config.pad_token_id) == ("left", before[1], None)
    finally:
        model.config.pad_token_id = before[2]


# --- clear errors -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("texts,error,match", [
    (None, TypeError, "texts must be"), (3, TypeError, "texts must be"), ({"a": 1}, TypeError, "dict"),
    ("\u200b\u200b", ValueError, "zero-width"), ("\x00\x01", ValueError, "control"),
    ("[CLS] [SEP]", ValueError, "special tokens only"), ("", ValueError, "empty"),
])
def test_bad_texts(make_tiny, texts, error, match):
    model, tok = make_tiny("bert", "classification")
    with pytest.raises(error, match=match):
        nx.explain(model, tok, texts)


@pytest.mark.parametrize("options,error,match", [
    ({"target": 1.5}, TypeError, "int"), ({"target": True}, TypeError, "bool"), ({"target": "1"}, TypeError, "int"),
    ({"target": torch.tensor([1, 2])}, ValueError, "2 targets for 1 texts"), ({"layer": 1.5}, TypeError, "layer"),
    ({"layer": "2"}, TypeError, "layer"), ({"batch_size": 2.5}, TypeError, "batch_size"),
    ({"batch_size": None}, TypeError, "batch_size"), ({"batch_size": 0}, ValueError, "batch_size"),
    ({"max_length": 5.5}, TypeError, "max_length"), ({"task": "foo"}, ValueError, "Unknown task"),
    ({"task": "regression"}, ValueError, "does not fit"), ({"task": "masked-lm"}, ValueError, "does not fit"),
])
def test_bad_options(make_tiny, options, error, match):
    model, tok = make_tiny("bert", "classification")
    with pytest.raises(error, match=match):
        nx.explain(model, tok, "a fine film .", **options)


def test_integer_like_targets_are_accepted(make_tiny):
    model, tok = make_tiny("bert", "classification")
    plain = nx.explain(model, tok, "a fine film .", target=1)
    for target in (np.int64(1), torch.tensor(1)):
        np.testing.assert_array_equal(nx.explain(model, tok, "a fine film .", target=target).scores, plain.scores)


def test_a_literal_special_token_is_not_ranked_as_a_word(make_tiny):
    model, tok = make_tiny("bert", "classification")
    a = nx.explain(model, tok, "a [SEP] fine film")
    assert a.tokens.count("[SEP]") == 2 and all(a.special_tokens_mask[i] for i, t in enumerate(a.tokens) if t == "[SEP]")


def test_masked_lm_read_of_a_classifier_is_refused(make_tiny):
    mlm, tok = make_tiny("bert", "masked-lm")
    with pytest.raises(ValueError, match="does not fit"):
        nx.explain(mlm, tok, "a [MASK] film", task="classification")


def test_max_position_embeddings_of_minus_one_means_no_limit(make_tiny):
    model, tok = make_tiny("bert", "classification")
    original = model.config.max_position_embeddings
    model.config.max_position_embeddings = -1  # as XLNet's config says
    try:
        assert model_max_length(model, tok) == tok.model_max_length
    finally:
        model.config.max_position_embeddings = original


def test_load_model_regression_on_a_k_class_checkpoint(tmp_path, make_tiny):
    model, tok = make_tiny("bert", "classification")  # 3 classes
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(nx.ModelLoadError, match="ignore_mismatched_sizes"):
        nx.load_model(tmp_path, task="regression")
    assert cli(["explain", "fine .", "--model", str(tmp_path), "--task", "regression"]) == 2


# --- files -------------------------------------------------------------------------------------------------------------
def test_attribution_with_nan_saves_strict_json(tmp_path, make_tiny):
    model, tok = make_tiny("bert", "classification")
    a = nx.explain(model, tok, "a fine film .")
    a.scores[1] = np.nan
    a.save(tmp_path / "a.json")
    json.loads((tmp_path / "a.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    back = nx.Attribution.load(tmp_path / "a.json")
    assert np.isnan(back.scores[1]) and back.scores[2] == pytest.approx(a.scores[2])


def test_a_truncated_cache_file_is_recomputed(tmp_path, make_tiny):
    model, tok = make_tiny("bert", "classification")
    first = nx.evaluate_methods(model, tok, TEXTS, ["random"], cache=tmp_path)
    [path] = list(tmp_path.glob("*.json"))
    path.write_text(path.read_text()[:50])  # a crash half-way through a write
    with pytest.warns(UserWarning, match="unreadable"):
        again = nx.evaluate_methods(model, tok, TEXTS, ["random"], cache=tmp_path)
    np.testing.assert_array_equal(first[0].curves.values, again[0].curves.values)
    json.loads(path.read_text())  # rewritten whole


def test_repr_without_an_inner_ratio(make_tiny):
    model, tok = make_tiny("bert", "classification")
    r = nx.evaluate(model, tok, TEXTS, "random", ratios=(0.0, 1.0))
    assert "no ratio strictly inside" in repr(r) and "curves" in r._repr_html_()


def test_cli_output_to_a_directory_is_a_clear_error(tmp_path, capsys, make_tiny):
    model, tok = make_tiny("bert", "classification")
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    assert cli(["explain", "fine .", "--model", str(tmp_path / "m"), "--num-labels", "3", "-o", str(tmp_path)]) == 2
    assert "cannot write" in capsys.readouterr().err
