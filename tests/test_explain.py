"""nx.explain: batching and padding invariance, input handling, and the Attribution object."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import normxlogit as nx

SHORT = "dull ."
TEXTS = [
    SHORT,
    "a gripping , funny and thoroughly entertaining film that never loses its nerve .",
    "the plot holds together until the last act , when it collapses .",
    "not bad at all .",
] * 10


@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2", "llama"])
def test_alone_equals_in_batch_with_longer_texts(make_tiny, family):
    model, tok = make_tiny(family, "classification")
    alone = nx.explain(model, tok, SHORT)
    batched = nx.explain(model, tok, TEXTS, batch_size=8)
    np.testing.assert_allclose(alone.scores, batched[0].scores, atol=1e-5)
    assert alone.tokens == batched[0].tokens


def test_batch_sizes_agree(minilm_classifier):
    model, tok = minilm_classifier
    runs = [nx.explain(model, tok, TEXTS, batch_size=b) for b in (1, 8, 32)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
            assert a.prediction == b.prediction


def test_pairs_and_output_order(minilm_classifier):
    model, tok = minilm_classifier
    pairs = [("a man is playing a flute .", "a man plays the flute ."), ("a cat .", "the stock market fell sharply .")]
    attrs = nx.explain(model, tok, pairs, batch_size=1)
    assert [a.text for a in attrs] == pairs
    assert attrs[0].tokens.count("[SEP]") == 2
    single = nx.explain(model, tok, pairs[1])
    np.testing.assert_allclose(single.scores, attrs[1].scores, atol=1e-5)


def test_targets(minilm_classifier):
    model, tok = minilm_classifier
    both = [nx.explain(model, tok, TEXTS[:3], method="logat", target=t) for t in (0, 1)]
    per_text = nx.explain(model, tok, TEXTS[:3], method="logat", target=[0, 1, 0])
    np.testing.assert_allclose(per_text[1].scores, both[1][1].scores)
    assert [a.target for a in per_text] == [0, 1, 0]
    pred = nx.explain(model, tok, TEXTS[:3], method="logat")
    assert all(a.target == a.prediction for a in pred)


@pytest.mark.parametrize(
    "texts,kwargs,error,match",
    [
        ("", {}, ValueError, "empty"),
        ("   \n", {}, ValueError, "empty"),
        (["fine .", ""], {}, ValueError, "Text 1 is empty"),
        ([], {}, ValueError, "No texts"),
        ([3], {}, TypeError, "expected a string"),
        ("fine .", {"target": 5}, ValueError, "out of range"),
        ("fine .", {"target": [0, 1]}, ValueError, "2 targets for 1 texts"),
        ("fine .", {"layer": 7}, ValueError, "layers 0..6"),
        ("fine .", {"layer": -8}, ValueError, "out of range"),
        ("fine .", {"method": "shap"}, ValueError, "Unknown method 'shap'; available"),
        ("fine .", {"norm_source": "pooler"}, ValueError, "norm_source"),
        ("fine .", {"batch_size": 0}, ValueError, "batch_size"),
        ("fine .", {"max_length": 100_000}, ValueError, "max_length"),
    ],
)
def test_bad_input_gets_clear_errors(minilm_classifier, texts, kwargs, error, match):
    model, tok = minilm_classifier
    with pytest.raises(error, match=match):
        nx.explain(model, tok, texts, **kwargs)


def test_overlong_text_is_truncated_with_a_warning(minilm_classifier):
    model, tok = minilm_classifier
    text = ("a gripping film " * 1500)[:20_000]
    with pytest.warns(UserWarning, match="truncated to 512"):
        a = nx.explain(model, tok, text)
    assert len(a) == 512 and a.tokens[-1] == "[SEP]"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a text that fits does not warn
        nx.explain(model, tok, "a gripping film .")


def test_masked_lm_needs_a_mask(make_tiny):
    model, tok = make_tiny("bert", "masked-lm")
    with pytest.raises(ValueError, match=r"no \[MASK\] token"):
        nx.explain(model, tok, "no mask here .")
    a = nx.explain(model, tok, "the cat [MASK] here .")
    assert a.tokens[a.position] == "[MASK]"
    assert a.meta["target_label"] == tok.convert_ids_to_tokens(a.target)


def test_regression_rejects_a_class_target(make_tiny):
    model, tok = make_tiny("bert", "regression")
    a = nx.explain(model, tok, "fine .")
    assert a.target is None and isinstance(a.prediction, float) and (a.scores >= 0).all()
    with pytest.raises(ValueError, match="one output"):
        nx.explain(model, tok, "fine .", target=1)


def test_attribution_round_trip_and_rendering(tmp_path, minilm_classifier):
    model, tok = minilm_classifier
    attrs = nx.explain(model, tok, TEXTS[:2])
    a = attrs[1]
    path = tmp_path / "a.json"
    a.save(path)
    b = nx.Attribution.load(path)
    assert b.tokens == a.tokens and b.target == a.target and b.meta == a.meta
    np.testing.assert_array_equal(a.scores, b.scores)
    nx.save_attributions(attrs, tmp_path / "all.json")
    assert [x.text for x in nx.load_attributions(tmp_path / "all.json")] == TEXTS[:2]
    json.loads(path.read_text())
    html = a.to_html()
    assert "gripping" in html and "<span" in html and "[CLS]" not in html
    assert a._repr_html_() == html
    text = str(a)
    assert "gripping" in text and "method=normxlogit" in text
    assert "\x1b[48;2;" in a.to_ansi()
    ranked = [a.tokens[i] for i in a.ranking()]
    assert "[CLS]" not in ranked and len(ranked) == len(a) - 2
    assert a.top(1)[0][1] == max(a.scores[1:-1])


def test_heatmap_colours_follow_the_sign_and_the_tokens_wrap():
    def attribution(scores, method):
        return nx.Attribution(tokens=["[CLS]", "good", "bad", "plain", "[SEP]"], input_ids=[101, 1, 2, 3, 102],
                              scores=np.array(scores), special_tokens_mask=[1, 0, 0, 0, 1], target=1, prediction=1,
                              method=method, meta={"task": "classification", "target_label": "positive"})

    signed = attribution([9.0, 2.0, -1.0, 0.0, 9.0], "normxlogit")
    page = signed.to_html()
    red, blue = "rgba(214, 39, 40, 1.0)", "rgba(31, 119, 180, 0.5)"  # scaled by max |score| = 2 (not [CLS]'s 9)
    assert signed.signed and red in page and blue in page and "rgba(214, 39, 40, 0.0)" in page
    assert "red = score above 0, for the target (positive)" in page and "blue = below 0" in page
    # wrapping: a flex row that wraps, inline-block tokens, no fixed widths
    assert "flex-wrap:wrap" in page and "display:inline-block" in page and "white-space:normal" in page
    assert "width:" not in page.replace("max-width:", "")
    # all-positive scores of a signed method stay red (for the target), never the "against" hue
    positive = attribution([1.0, 2.0, 1.0, 0.5, 1.0], "logat").to_html()
    assert "rgba(31, 119, 180" not in positive.split("<br>")[1].split("</div>", 1)[1]
    # unsigned methods and regression use one hue and say so
    for unsigned in (attribution([1.0, 2.0, 1.0, 0.5, 1.0], "norm"),
                     nx.Attribution(**{**signed.to_dict(), "meta": {"task": "regression"}})):
        assert not unsigned.signed and "no sign" in unsigned.to_html() and "rgba(117, 107, 177" in unsigned.to_html()
    assert signed.to_ansi().startswith("\x1b[48;2;214;39;40m")


def test_list_methods_and_registry():
    assert {"normxlogit", "logat", "norm"} <= set(nx.list_methods())
    assert nx.get_method("normxlogit").signed and not nx.get_method("norm").signed


def test_default_model_names_resolve_offline():
    from normxlogit.models import resolve_model_name

    path = str(nx.default_model_path())
    assert resolve_model_name("all-MiniLM-L6-v2") == path
    assert resolve_model_name("sentence-transformers/all-MiniLM-L6-v2") == path
    assert resolve_model_name("bert-base-uncased") == "bert-base-uncased"


def test_unknown_model_error_names_the_offline_default(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(nx.ModelLoadError, match="all-MiniLM-L6-v2"):
        nx.load_model("no-such-org/no-such-model-xyz", task="classification")
    with pytest.raises(ValueError, match="Unknown task"):
        nx.load_model("all-MiniLM-L6-v2", task="ner")
