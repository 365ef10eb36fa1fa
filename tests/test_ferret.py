"""NormXLogit, LogAt and norm as ferret explainers; ferret's faithfulness of NormXLogit against nx.evaluate."""

from __future__ import annotations

import numpy as np
import pytest

import normxlogit as nx

ferret = pytest.importorskip("ferret", reason="pip install 'normxlogit[ferret]' (see the README)")
from normxlogit.integrations.ferret import (FERRET_THRESHOLDS, LogAtExplainer, NormExplainer,  # noqa: E402
                                            NormXLogitExplainer, ferret_aopc, positive_ranks,
                                            round_trips)

EXPLAINERS = [NormXLogitExplainer, LogAtExplainer, NormExplainer]


@pytest.mark.parametrize("explainer", EXPLAINERS)
def test_explainers_score_ferrets_grid_with_the_packages_numbers(make_tiny, explainer):
    model, tok = make_tiny("bert", "classification")
    text = "a gripping , funny film ."
    e = explainer(model, tok)(text, target=2)
    ref = nx.explain(model, tok, text, method=explainer.method, target=2)
    assert e.tokens == tok.convert_ids_to_tokens(tok(text)["input_ids"]) == ref.tokens  # [CLS] ... [SEP]
    np.testing.assert_allclose(e.scores, ref.scores, atol=1e-6, rtol=0)
    assert (e.explainer, e.target) == (explainer.NAME, 2)
    named = explainer(model, tok)(text, target=model.config.id2label[2])  # ferret also passes label names
    np.testing.assert_allclose(named.scores, e.scores)
    with pytest.raises(ValueError, match="Unknown target label"):
        explainer(model, tok)(text, target="no such label")


def test_layer_option_reaches_the_method(make_tiny):
    model, tok = make_tiny("bert", "classification")
    e = LogAtExplainer(model, tok, layer=1)("dull .", target=0)
    np.testing.assert_allclose(e.scores, nx.explain(model, tok, "dull .", method="logat", layer=1, target=0).scores,
                               atol=1e-6)


def test_round_trips_detects_ferrets_text_round_trip(tokenizer):
    from ferret.explainers.explanation import Explanation

    def explanation(text, scores):
        tokens = tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"])
        return Explanation(text, tokens, np.array([0.0, *scores, 0.0]), "NormXLogit", 0)

    assert round_trips(tokenizer, explanation("dull and flat .", [3.0, 1.0, 2.0, 0.5]))  # whole words
    # "unflinchingly" is un ##fl ##in ##ching ##ly: keeping "##fl" alone decodes to "##fl", which tokenises as # # fl
    assert tokenizer.tokenize("unflinchingly bleak") == ["un", "##fl", "##in", "##ching", "##ly", "bleak"]
    assert not round_trips(tokenizer, explanation("unflinchingly bleak", [0.0, 5.0, 0.1, 0.2, 0.3, 0.4]))


@pytest.fixture(scope="module")
def sst2():
    model, tok = nx.pretrained("sst2")
    texts = list(nx.data.load_sst2("validation", limit=12)["sentence"])
    return model, tok, texts


def test_ferret_benchmark_agrees_with_nx_evaluate(sst2):
    """ferret's Benchmark on SST-2 with the fine-tuned MiniLM: its AOPC comprehensiveness and sufficiency of
    NormXLogit are nx.evaluate's (clean protocol, deletion, ferret's thresholds, aggregated as ferret does) wherever
    the two engines read the same inputs; each difference is pinned to its documented reason."""
    model, tok, texts = sst2
    result = nx.evaluate(model, tok, texts, "normxlogit", ratios=FERRET_THRESHOLDS, replacement="delete",
                         protocol="clean")
    mapped = ferret_aopc(result)
    bench = ferret.Benchmark(model, tok, explainers=[NormXLogitExplainer(model, tok)])
    ranked_scores, raw_scores, exact, has_negative = [], [], [], []
    for i, text in enumerate(texts):
        target = int(result.original_prediction[i])  # nx explains and measures the predicted class
        explanation = bench.explain(text, target=target, show_progress=False)[0]
        ranked, raw = bench.evaluate_explanations([positive_ranks(explanation), explanation], target=target,
                                                  show_progress=False)
        ranked_scores.append({e.name: e.score for e in ranked.evaluation_scores})
        raw_scores.append({e.name: e.score for e in raw.evaluation_scores})
        exact.append(round_trips(tok, explanation))
        has_negative.append(bool((explanation.scores[1:-1] <= 0).any()))
    for key in ("aopc_compr", "aopc_suff"):
        ferrets = np.array([s[key] for s in ranked_scores])
        # Difference 4 (text round trip): equal where ferret's decode-and-retokenise gives nx's ids back.
        np.testing.assert_allclose(ferrets[exact], mapped[key][np.array(exact)], atol=1e-5, rtol=0)
        # Difference 1 (only_pos): raw signed scores give ferret's default the same numbers unless a score <= 0.
        raw = np.array([s[key] for s in raw_scores])
        same = np.isclose(raw, ferrets, atol=1e-9)
        assert same[~np.array(has_negative)].all()
    assert sum(exact) >= 3  # several SST-2 sentences round-trip: the comparison is not vacuous
    # Difference 2 (aggregation): nx's AOPC (every ratio strictly between 0 and 1, averaged over examples) is not
    # ferret's mean (non-empty, distinct rationales, 100% included); the mapping is what makes them agree.
    headline = result.aopc
    assert abs(headline["comprehensiveness_cd"] - np.mean(mapped["aopc_compr"])) > 1e-4


def test_ferret_aopc_needs_the_matching_protocol(make_tiny):
    model, tok = make_tiny("bert", "classification")
    with pytest.raises(ValueError, match="replacement='delete'"):
        ferret_aopc(nx.evaluate(model, tok, ["dull ."], "normxlogit", ratios=FERRET_THRESHOLDS))
    with pytest.raises(ValueError, match="FERRET_THRESHOLDS"):
        ferret_aopc(nx.evaluate(model, tok, ["dull ."], "normxlogit", replacement="delete"))
