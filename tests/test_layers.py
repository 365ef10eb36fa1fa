"""Layer-wise head read-outs and rank comparisons: agreement with explain(), invariances, known properties."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import normxlogit as nx
from normxlogit.core.attribution import Attribution
from normxlogit.evaluation.stats import bootstrap_mean

TEXTS = ["a gripping , funny film .", "dull .", "the plot holds together until the last act , then it falls .",
         "not bad at all , but not good either ."]


@pytest.mark.parametrize("family,task", [("bert", "classification"), ("distilbert", "classification"),
                                         ("gpt2", "classification"), ("llama", "classification"),
                                         ("bert", "regression"), ("gpt2", "regression")])
def test_readouts_equal_explain_logat_at_every_layer(make_tiny, family, task):
    model, tok = make_tiny(family, task)
    readouts = nx.layer_readouts(model, tok, TEXTS, batch_size=3)
    num_layers = model.config.num_hidden_layers
    assert sorted(readouts.layer.unique()) == list(range(num_layers + 1))
    for layer in range(num_layers + 1):
        attrs = nx.explain(model, tok, TEXTS, method="logat", layer=layer)
        expected = np.concatenate([a.scores[a.content_mask] for a in attrs])
        got = readouts[readouts.layer == layer].sort_values(["text_id", "position"]).logat.to_numpy()
        np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_last_layer_agreement_equals_explain(make_tiny, task):
    model, tok = make_tiny("bert", task)
    table = nx.layer_agreement(model, tok, TEXTS, n_boot=200)
    assert list(table.layer) == list(range(model.config.num_hidden_layers + 1))
    attrs = nx.explain(model, tok, TEXTS, method="logat")
    scores = np.concatenate([a.scores[a.content_mask] for a in attrs])
    last = table.iloc[-1]
    assert last.tokens == len(scores)
    np.testing.assert_allclose(last.logat_mean, scores.mean(), atol=1e-5)
    np.testing.assert_allclose(last.logat_negative, (scores < 0).mean())
    assert last.logat_low <= last.logat_mean <= last.logat_high
    if task == "regression":
        assert table.agree.isna().all() and (scores >= 0).all()
    else:
        # the share agreeing, from the head read on each token directly
        readouts = nx.layer_readouts(model, tok, TEXTS)
        at_last = readouts[readouts.layer == table.layer.max()]
        agree = np.mean(at_last.readout.to_numpy() == at_last.prediction.to_numpy())
        np.testing.assert_allclose(last.agree, agree)
        assert last.agree_low <= last.agree <= last.agree_high


@pytest.mark.parametrize("family,task", [("bert", "classification"), ("gpt2", "classification"),
                                         ("roberta", "regression")])
def test_pooled_token_agrees_with_the_model_at_the_last_layer(make_tiny, family, task):
    # The head reads the pooled token's final state normally: its read-out is the model's output.
    model, tok = make_tiny(family, task)
    readouts = nx.layer_readouts(model, tok, TEXTS, include_special=True)
    last = readouts[readouts.layer == readouts.layer.max()]
    lengths = last.groupby("text_id").position.max()
    pooled_position = 0 if family != "gpt2" else last.text_id.map(lengths)
    pooled = last[last.position == pooled_position]
    assert len(pooled) == len(TEXTS)
    if task == "regression":
        np.testing.assert_allclose(pooled.logat, 0, atol=1e-5)
    else:
        assert pooled.agree.all()


def test_readouts_are_batch_invariant(make_tiny):
    model, tok = make_tiny("roberta", "classification")
    a = nx.layer_readouts(model, tok, TEXTS * 2, batch_size=1)
    b = nx.layer_readouts(model, tok, TEXTS * 2, batch_size=8)
    pd.testing.assert_frame_equal(a[["text_id", "position", "layer", "token"]], b[["text_id", "position", "layer", "token"]])
    np.testing.assert_allclose(a.logat, b.logat, atol=1e-5)
    assert (a.agree == b.agree).all()


def test_agreement_from_given_readouts(make_tiny):
    model, tok = make_tiny("bert", "classification")
    readouts = nx.layer_readouts(model, tok, TEXTS)
    pd.testing.assert_frame_equal(nx.layer_agreement(model, tok, TEXTS), nx.layer_agreement(None, None, readouts=readouts))
    with pytest.raises(ValueError, match="Pass texts"):
        nx.layer_agreement(model, tok)


def _attr(scores, special=None, ids=None) -> Attribution:
    n = len(scores)
    special = special if special is not None else [1] + [0] * (n - 2) + [1]
    return Attribution(tokens=[f"t{i}" for i in range(n)], input_ids=ids or list(range(n)), scores=np.asarray(scores),
                       special_tokens_mask=special, target=0, prediction=0, method="x")


def test_rank_correlations_known_values():
    a = [_attr([9, 1, 2, 3, 4, -9]), _attr([0, 1, 2, 3, 0]), _attr([0, 5, 1, 2, 0]), _attr([0, 1, 1, 1, 0]), _attr([0, 5, 1, 0])]
    same = nx.rank_correlations(a, a)
    np.testing.assert_allclose(same.rho[:3], 1.0)
    assert np.isnan(same.rho[3])  # a constant score has no ranking
    assert np.isnan(same.rho[4])  # two tokens are under min_tokens=3
    flipped = [_attr(-x.scores) for x in a]
    np.testing.assert_allclose(nx.rank_correlations(a, flipped).rho[:3], -1.0)
    monotone = [_attr(np.exp(x.scores)) for x in a]
    np.testing.assert_allclose(nx.rank_correlations(a, monotone).rho[:3], 1.0)
    # special tokens are left out: only 1, 2, 3, 4 are ranked
    assert list(same.n_tokens) == [4, 3, 3, 3, 2]
    assert np.isnan(nx.rank_correlations(a, a, min_tokens=4).rho[1])


def test_rank_correlations_errors():
    a = [_attr([0, 1, 2, 0])]
    with pytest.raises(ValueError, match="1 and 2 attributions"):
        nx.rank_correlations(a, a * 2)
    with pytest.raises(ValueError, match="different tokens"):
        nx.rank_correlations(a, [_attr([0, 1, 2, 0], ids=[5, 6, 7, 8])])


def test_correlation_summary_and_bootstrap():
    rng = np.random.default_rng(0)
    ref = [_attr(rng.normal(size=8)) for _ in range(50)]
    noisy = [_attr(r.scores + 0.1 * rng.normal(size=8)) for r in ref]
    table = nx.correlation_summary(ref, {"self": ref, "noisy": noisy, "anti": [_attr(-r.scores) for r in ref]},
                                   n_boot=300)
    t = table.set_index("method")
    assert t.loc["self", "mean_rho"] == 1 and t.loc["self", "low"] == 1 and t.loc["anti", "mean_rho"] == -1
    assert 0.8 < t.loc["noisy", "low"] <= t.loc["noisy", "mean_rho"] <= t.loc["noisy", "high"] <= 1
    assert (table.texts == 50).all() and t.loc["noisy", "positive"] == 1
    const = bootstrap_mean([2.0, 2.0, np.nan, 2.0])
    assert const == {"mean": 2.0, "low": 2.0, "high": 2.0, "n": 3}
    assert bootstrap_mean([1.0, 2.0, 3.0], seed=1) == bootstrap_mean([1.0, 2.0, 3.0], seed=1)


def test_token_table(make_tiny):
    model, tok = make_tiny("bert", "classification")
    named = {m: nx.explain(model, tok, TEXTS, method=m) for m in ("logat", "norm")}
    table = nx.token_table(named)
    assert len(table) == sum(int(a.content_mask.sum()) for a in named["logat"])
    assert list(table.columns) == ["text_id", "position", "token", "special", "logat", "norm"]
    full = nx.token_table(named, include_special=True)
    assert len(full) == sum(len(a) for a in named["logat"]) and full.special.sum() == 2 * len(TEXTS)


def test_layer_correlations(make_tiny):
    model, tok = make_tiny("bert", "classification")
    loo = nx.explain(model, tok, TEXTS, method="leave_one_out")
    table = nx.layer_correlations(model, tok, TEXTS, loo, n_boot=100)
    assert list(table.columns[:2]) == ["layer", "method"] and len(table) == 2 * (model.config.num_hidden_layers + 1)
    last = table[table.layer == model.config.num_hidden_layers].set_index("method")
    direct = nx.correlation_summary(loo, {m: nx.explain(model, tok, TEXTS, method=m) for m in ("logat", "normxlogit")},
                                    n_boot=100).set_index("method")
    pd.testing.assert_frame_equal(last.drop(columns="layer"), direct)
    with pytest.raises(ValueError, match="norm do"):
        nx.layer_correlations(model, tok, TEXTS, loo, methods=["norm"])
