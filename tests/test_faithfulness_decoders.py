"""The AOPC engine on decoders: decoder sequence classifiers and causal LMs (next token or label word), against a
plain per-example loop; the default replacement per kind of model; errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import normxlogit as nx
from normxlogit.core.inputs import model_inputs
from normxlogit.evaluation.perturbation import DECODER_REPLACEMENT, DEFAULT_RATIOS

TEXTS = [
    "a gripping , funny and thoroughly entertaining film .",
    "dull .",
    "the plot holds together until the last act , when it collapses .",
    "not bad at all .",
]
LABELS = [1, 0, 0, 1]
WORDS = ["good", "bad", "fine"]


def _perturbed(enc: dict, drop: list[int], replacement: str, token_id: int | None) -> dict:
    e = {key: v.clone() for key, v in enc.items()}
    if replacement == "attention":
        e["attention_mask"][0, drop] = 0
    elif replacement == "delete":
        keep = [i for i in range(e["input_ids"].shape[1]) if i not in set(drop)]
        e = {key: v[:, keep] for key, v in e.items()}
    elif drop:
        e["input_ids"][0, drop] = token_id
    return e


def reference(model, tok, attrs, replacement, *, label_ids=None, labels=None, ratios=DEFAULT_RATIOS):
    """The clean protocol as a plain loop: one example, one ratio, one perturbed input, one forward pass at a time.

    Classifiers: p(y_hat) from the model's own (pooled) logits. Causal LMs: the probability over the whole vocabulary
    at the last position of the predicted next token, or of the predicted label word (the most probable of them).
    """
    token_id = {"pad": tok.pad_token_id, "unk": tok.unk_token_id}.get(replacement)

    def read(enc):
        with torch.no_grad():
            logits = model(**model_inputs(model, enc)).logits[0].float()
        if logits.dim() == 1:  # a sequence classifier
            return logits.softmax(-1), int(logits.argmax())
        last = logits[-1]
        guess = int(last.argmax()) if label_ids is None else int(last[label_ids].argmax())
        return last.softmax(-1), guess

    curves = {}
    for kind in ("comprehensiveness", "sufficiency"):
        outs, preds, origs = [], [], []
        for a in attrs:
            enc = tok(a.text, return_tensors="pt")
            assert enc["input_ids"][0].tolist() == a.input_ids
            candidates = [i for i in range(len(a)) if not a.special_tokens_mask[i]]
            ranking = sorted(candidates, key=lambda i: (-a.scores[i], i))
            probs, y_hat = read(enc)
            column = y_hat if label_ids is None else label_ids[y_hat]
            origs.append(float(probs[column]))
            row_out, row_pred = [], []
            for k in ratios:
                c = int(round(k * len(candidates), 6) // 1)
                drop = ranking[:c] if kind == "comprehensiveness" else ranking[c:]
                probs, guess = read(_perturbed(enc, drop, replacement, token_id))
                row_out.append(float(probs[column]))
                row_pred.append(guess)
            outs.append(row_out)
            preds.append(row_pred)
        outs, preds, origs = np.array(outs), np.array(preds), np.array(origs)
        curves[f"{kind}_cd"] = (origs[:, None] - outs).mean(0)
        if labels is not None:
            curves[f"{kind}_accuracy"] = (preds == np.asarray(labels)[:, None]).mean(0)
    return curves


def _check(result, expected):
    assert set(expected) == set(result.metrics)
    for metric, values in expected.items():
        np.testing.assert_allclose(result.curve(metric), values, atol=1e-5, err_msg=metric)


# --- decoder sequence classifiers ----------------------------------------------------------------------------------
@pytest.mark.parametrize("family,replacement", [("gpt2", None), ("llama", None), ("gpt2", "unk"),
                                                ("llama", "attention")])
def test_decoder_classifier_equals_a_plain_loop(make_tiny, family, replacement):
    model, tok = make_tiny(family, "classification")
    attrs = nx.explain(model, tok, TEXTS, method="normxlogit")
    result = nx.evaluate(model, tok, TEXTS, attrs, labels=LABELS, replacement=replacement, batch_tokens=40)
    used = DECODER_REPLACEMENT if replacement is None else replacement
    assert result.replacement == used and result.meta.get("replacement_default", False) == (replacement is None)
    _check(result, reference(model, tok, attrs, used, labels=LABELS))


# --- causal LMs ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family,replacement", [("llama", None), ("gpt2", None), ("llama", "unk"),
                                                ("gpt2", "attention")])
def test_causal_lm_label_words_equal_a_plain_loop(make_tiny, family, replacement):
    model, tok = make_tiny(family, "causal-lm")
    label_ids = tok.convert_tokens_to_ids(WORDS)
    result = nx.evaluate(model, tok, TEXTS, "logat", labels=[0, 1, 2, 1], label_words=WORDS,
                         replacement=replacement, batch_tokens=40)
    used = DECODER_REPLACEMENT if replacement is None else replacement
    assert result.replacement == used and result.task == "classification"
    assert result.meta["task"] == "causal-lm" and result.meta["label_words"] == WORDS
    # The attributions explain the predicted label word, read at the last position.
    first = [int(model(**tok(t, return_tensors="pt")).logits[0, -1, label_ids].argmax()) for t in TEXTS]
    assert result.original_prediction.tolist() == first
    attrs = nx.explain(model, tok, TEXTS, method="logat", target=[label_ids[p] for p in first])
    assert [a.position for a in attrs] == [len(a) - 1 for a in attrs]
    _check(result, reference(model, tok, attrs, used, label_ids=label_ids, labels=[0, 1, 2, 1]))
    again = nx.evaluate(model, tok, TEXTS, attrs, labels=[0, 1, 2, 1], label_words=label_ids,
                        replacement=replacement, batch_tokens=10_000)  # given attributions, ids, other batches
    np.testing.assert_allclose(again.curves.values, result.curves.values, atol=1e-6)


def test_evaluate_methods_explains_the_predicted_label_word(make_tiny, tmp_path):
    model, tok = make_tiny("llama", "causal-lm")
    options = {"label_words": WORDS, "labels": [0, 1, 2, 1], "batch_tokens": 64}
    (many,) = nx.evaluate_methods(model, tok, TEXTS, ["logat"], cache=tmp_path, **options)
    single = nx.evaluate(model, tok, TEXTS, "logat", **options)
    np.testing.assert_allclose(many.curves.values, single.curves.values, atol=1e-6)
    assert many.replacement == single.replacement == DECODER_REPLACEMENT


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_causal_lm_next_token_equals_a_plain_loop(make_tiny, family):
    model, tok = make_tiny(family, "causal-lm")
    result = nx.evaluate(model, tok, TEXTS, "normxlogit", batch_tokens=32)
    attrs = nx.explain(model, tok, TEXTS, method="normxlogit")  # explains the predicted next token
    assert result.original_prediction.tolist() == [a.prediction for a in attrs] == [a.target for a in attrs]
    assert result.replacement == DECODER_REPLACEMENT and result.meta["label_words"] is None
    assert result.metrics == ["comprehensiveness_cd", "sufficiency_cd"]
    _check(result, reference(model, tok, attrs, DECODER_REPLACEMENT))


# --- the default replacement ---------------------------------------------------------------------------------------
def test_encoders_keep_the_mask_by_default(make_tiny):
    model, tok = make_tiny("bert", "classification")
    default = nx.evaluate(model, tok, TEXTS, "random", labels=LABELS)
    mask = nx.evaluate(model, tok, TEXTS, "random", labels=LABELS, replacement="mask")
    assert default.replacement == mask.replacement == "mask" and default.meta["replacement_token"] == "[MASK]"
    np.testing.assert_array_equal(default.curves.values, mask.curves.values)
    assert default.meta["replacement_default"] and "replacement_default" not in mask.meta


def test_decoders_refuse_an_explicit_mask_without_a_mask_token(make_tiny):
    import transformers as tf

    model, _ = make_tiny("gpt2", "classification")
    tok = tf.AutoTokenizer.from_pretrained(nx.default_model_path())
    tok.mask_token = None
    with pytest.raises(ValueError, match="no mask token.*'delete'"):
        nx.evaluate(model, tok, TEXTS, "normxlogit", replacement="mask")
    r = nx.evaluate(model, tok, TEXTS, "normxlogit")
    assert r.replacement == "delete" and np.isfinite(r.curves.values).all()


@pytest.mark.parametrize("kwargs,match", [
    ({"label_words": ["good"]}, "at least two"),
    ({"label_words": "good"}, "at least two"),
    ({"label_words": ["good", "good"]}, "repeat"),
    ({"label_words": ["good", "normxlogit"]}, r"'normxlogit' is \d+ tokens"),
    ({"label_words": ["good", 10**7]}, "neither a string nor a token id"),
    ({"label_words": ["good", "bad"], "labels": [0, 1, 2, 1]}, "0..1"),
])
def test_causal_lm_bad_input(make_tiny, kwargs, match):
    model, tok = make_tiny("llama", "causal-lm")
    with pytest.raises(ValueError, match=match):
        nx.evaluate(model, tok, TEXTS, "random", **kwargs)


def test_label_words_need_a_causal_lm(make_tiny):
    model, tok = make_tiny("gpt2", "classification")
    with pytest.raises(ValueError, match="label_words are for causal LMs"):
        nx.evaluate(model, tok, TEXTS, "random", label_words=WORDS)
