"""evaluate_generation: the answer scorer and every metric against a plain per-ablation loop, LDS = 1 where the
true effects are linear, shared ablations across methods, the attention baseline, and ContextCite offline with our
sources."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy import stats

import normxlogit as nx
from normxlogit.generation.ablation import AnswerScorer, keep_without_sources
from normxlogit.generation.faithfulness import PromptCase, lds_masks, measure, method_scores, prepare_cases

torch.set_num_threads(1)

PROMPTS = ["The cat sat on the mat. It was warm! The dog barked. Where is the cat?",
           "Paris is in France. Rome is in Italy. Which city is in Italy?"]
RATIOS = (0.0, 0.25, 0.5, 0.75, 1.0)


@pytest.fixture(params=["llama", "gpt2"])
def lm(request, make_tiny):
    return make_tiny(request.param, "causal-lm")


def _logprob(model, context: list[int], answer: list[int]) -> float:
    """log p(answer | context), one unbatched forward pass: the reference."""
    with torch.no_grad():
        logp = model(torch.tensor([context + answer])).logits[0].log_softmax(-1)
    return float(sum(logp[len(context) - 1 + t, a] for t, a in enumerate(answer)))


def _case(model, tok, prompt=PROMPTS[0], continuation="it is on the mat", **kw) -> PromptCase:
    return prepare_cases(model, tok, [prompt], [continuation], "sentences", chat=False, system_prompt=None,
                         max_new_tokens=4, batch_tokens=kw.get("batch_tokens", 64))[0]


# --- the scorer ----------------------------------------------------------------------------------------------------
def test_scorer_equals_plain_loop_and_runs_each_input_once(lm):
    model, tok = lm
    case = _case(model, tok)
    scorer, P = case.scorer, len(case.prompt_ids)
    rng = np.random.default_rng(0)
    keep = rng.random((12, P)) < 0.6
    keep[0], keep[1], keep[5] = True, False, keep[4]
    got = scorer.logprobs(np.concatenate([keep, keep[:3]]))
    assert scorer.computed == len({row.tobytes() for row in keep})  # duplicates, in and across calls, run once
    for n, row in enumerate(keep):
        context = list(np.asarray(case.prompt_ids)[row]) or scorer.empty_context
        assert got[n] == pytest.approx(_logprob(model, context, case.answer_ids), abs=2e-4)
    before = scorer.computed
    scorer.logprobs(keep[::-1])
    assert scorer.computed == before
    with pytest.raises(ValueError, match="keep must be"):
        scorer.logprobs(np.ones((2, P + 1), dtype=bool))


def test_batch_size_changes_nothing(make_tiny):
    model, tok = make_tiny("gpt2", "causal-lm")
    keep = np.random.default_rng(1).random((9, len(_case(model, tok).prompt_ids))) < 0.5
    small = _case(model, tok, batch_tokens=20).scorer.token_logprobs(keep)
    large = _case(model, tok, batch_tokens=4096).scorer.token_logprobs(keep)
    np.testing.assert_allclose(small, large, atol=1e-5)


def test_keep_without_sources():
    keep = keep_without_sources(np.array([[True, False], [False, False]]), [[1, 2], [4]], 6)
    np.testing.assert_array_equal(keep, [[1, 1, 1, 1, 0, 1], [1, 0, 0, 1, 0, 1]])


# --- the metrics against a plain per-ablation loop -----------------------------------------------------------------
def test_metrics_equal_plain_per_ablation_loop(lm):
    model, tok = lm
    case = _case(model, tok)
    S, P = len(case.sources.texts), len(case.prompt_ids)
    ids = np.asarray(case.prompt_ids)
    rng = np.random.default_rng(3)
    s, u = rng.normal(size=S), rng.normal(size=P)
    masks = lds_masks(case, 10, seed=0)
    got, curves = measure(case, s, u, ks=(1, 2, 0.5, 9), masks=masks, ratios=RATIOS)

    def f(drop_tokens) -> float:
        keep = np.ones(P, dtype=bool)
        keep[list(drop_tokens)] = False
        return _logprob(model, list(ids[keep]) or case.scorer.empty_context, case.answer_ids)

    base = f([])
    assert got["logprob"] == pytest.approx(base, abs=2e-4)
    order = np.argsort(-s)
    for k, n in ((1, 1), (2, 2), (0.5, 2)):  # 0.5 of 4 sources = 2
        drop = [p for j in order[:n] for p in case.sources.positions[j]]
        assert got[f"top_k_drop_{k:g}"] == pytest.approx(base - f(drop), abs=3e-4)
    assert np.isnan(got["top_k_drop_9"])  # fewer sources than k
    measured = [f([p for j in range(S) if not m[j] for p in case.sources.positions[j]]) for m in masks]
    assert got["lds"] == pytest.approx(stats.spearmanr(masks @ s, measured).statistic, abs=1e-6)
    units = sorted(p for pos in case.sources.positions for p in pos)
    ranked = [units[i] for i in np.argsort(-u[units], kind="stable")]
    comp, suff = [], []
    for r in RATIOS:
        c = int(np.floor(r * len(ranked) + 1e-9))
        comp.append(base - f(ranked[:c]))
        suff.append(base - f(ranked[c:]))
    inner = [i for i, r in enumerate(RATIOS) if 0 < r < 1]
    assert got["comprehensiveness"] == pytest.approx(np.mean([comp[i] for i in inner]), abs=3e-4)
    assert got["sufficiency"] == pytest.approx(np.mean([suff[i] for i in inner]), abs=3e-4)
    table = {(c["measure"], c["ratio"]): c["drop"] for c in curves}
    assert table["comprehensiveness", 0.0] == pytest.approx(0, abs=1e-9)
    assert table["sufficiency", 1.0] == pytest.approx(0, abs=1e-9)


class LinearScorer(AnswerScorer):
    """A stand-in model whose answer log-probability is exactly linear in which sources are kept."""

    def __init__(self, case: PromptCase, weights: np.ndarray, bias: float = -7.0):
        super().__init__(case.scorer.model, case.scorer.tokenizer, case.prompt_ids, case.answer_ids)
        self.weights, self.bias, self.positions = weights, bias, case.sources.positions

    def token_logprobs(self, keep):
        kept = np.stack([np.asarray(keep)[:, pos].all(1) for pos in self.positions], axis=1)
        total = self.bias + kept @ self.weights
        return np.stack([total, np.zeros_like(total)], axis=1)  # two "tokens"; their sum is the log-probability


def test_lds_is_one_when_the_effects_are_linear(make_tiny):
    model, tok = make_tiny("llama", "causal-lm")
    case = _case(model, tok)
    w = np.array([2.0, -0.5, 0.7, 1.3])
    case.scorer = LinearScorer(case, w)
    masks = lds_masks(case, 32, seed=0)
    # Leave-one-out recovers the true effects exactly, so its predictions are the truth up to a constant.
    s, u = method_scores(model, tok, case, "leave_one_out", {}, seed=0, chat=False, system_prompt=None)
    np.testing.assert_allclose(s, w)
    got, _ = measure(case, s, u, ks=(1, 2), masks=masks, ratios=RATIOS)
    assert got["lds"] == pytest.approx(1.0)
    assert got["top_k_drop_1"] == pytest.approx(2.0) and got["top_k_drop_2"] == pytest.approx(3.3)
    reversed_, _ = measure(case, -w, u, ks=(1,), masks=masks, ratios=RATIOS)
    assert reversed_["lds"] == pytest.approx(-1.0) and reversed_["top_k_drop_1"] == pytest.approx(-0.5)


# --- several methods on the same ablations -------------------------------------------------------------------------
def test_evaluate_generation_methods_share_answers_and_ablations(make_tiny):
    model, tok = make_tiny("llama", "causal-lm")
    methods = ["random", "normxlogit", "leave_one_out", "attention"]
    report = nx.evaluate_generation_methods(model, tok, PROMPTS, methods=methods, k=(1, 2, 3), n_ablations=8,
                                            ratios=RATIOS, max_new_tokens=3)
    assert report.methods == methods and report.meta["prompts"] == 2
    answers = {tuple(r.per_example["answer"]) for r in report}
    assert len(answers) == 1  # one greedy answer per prompt, shared
    single = nx.evaluate_generation(model, tok, PROMPTS, method="normxlogit", n_ablations=8, ratios=RATIOS,
                                    max_new_tokens=3)
    assert isinstance(single, nx.GenerationFaithfulness) and single.method == single.name == "normxlogit"
    cols = ["top_k_drop_1", "top_k_drop_2", "top_k_drop_3", "lds", "comprehensiveness", "sufficiency", "logprob"]
    np.testing.assert_allclose(single.per_example[cols].to_numpy(float),
                               report["normxlogit"].per_example[cols].to_numpy(float), atol=1e-9)
    assert set(single.top_k_drop) == {1, 2, 3}
    assert single.top_k_drop[1] == pytest.approx(single.per_example["top_k_drop_1"].mean())
    assert single.lds == pytest.approx(single.per_example["lds"].mean())
    table = report.table(n_boot=200)
    assert list(table.index) == methods and {"lds", "lds_low", "lds_high", "seconds"} <= set(table.columns)
    assert (table["lds_low"] <= table["lds"] + 1e-12).all() and (table["lds"] <= table["lds_high"] + 1e-12).all()
    paired = report.paired("random", n_boot=200)
    assert set(paired["method"]) == set(methods) - {"random"} and (paired["n"] == 2).all()
    row = paired[(paired["method"] == "normxlogit") & (paired["metric"] == "lds")].iloc[0]
    assert row["diff"] == pytest.approx(report["normxlogit"].lds - report["random"].lds)
    with pytest.raises(ValueError, match="reference"):
        report.paired("nope")


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_report_scores_both_aggregations_side_by_side(make_tiny, family):
    """"normxlogit (mean)" beside "normxlogit": the same answers, ablations and token scores; the mean variant's
    source scores are each source's summed score over its token count, and its metrics follow from them."""
    model, tok = make_tiny(family, "causal-lm")
    methods = ["random", "normxlogit", "normxlogit (mean)", "logat (mean)"]
    report = nx.evaluate_generation_methods(model, tok, PROMPTS, methods=methods, k=(1, 2), n_ablations=8,
                                            ratios=RATIOS, max_new_tokens=3)
    assert report.methods == methods and list(report.table(n_boot=50).index) == methods
    summed, mean = report["normxlogit"], report["normxlogit (mean)"]
    assert mean.method == "normxlogit (mean)" and mean.meta["base_method"] == "normxlogit"
    assert (mean.meta["source_aggregation"], summed.meta["source_aggregation"]) == ("mean", "sum")
    assert set(report["random"].per_example["method"]) == {"random"} and report["random"].meta["source_aggregation"] is None
    cases = prepare_cases(model, tok, PROMPTS, None, "sentences", chat=False, system_prompt=None, max_new_tokens=3,
                          batch_tokens=None)  # the same greedy answers
    for case, s_sum, s_mean in zip(cases, summed.per_example["source_scores"], mean.per_example["source_scores"]):
        counts = np.array([len(p) for p in case.sources.positions])
        np.testing.assert_allclose(s_mean, np.asarray(s_sum) / counts, rtol=1e-9)
        values, _ = measure(case, np.asarray(s_mean), np.zeros(len(case.prompt_ids)), ks=(1, 2),
                            masks=lds_masks(case, 8, 0), ratios=RATIOS)
        row = mean.per_example.set_index("example").loc[case.index]
        for metric in ("top_k_drop_1", "top_k_drop_2", "lds"):
            assert row[metric] == pytest.approx(values[metric], nan_ok=True, abs=1e-9)
    # comprehensiveness and sufficiency rank tokens: the same for both aggregations; one shared attribution
    for column in ("comprehensiveness", "sufficiency", "logprob", "seconds"):
        np.testing.assert_allclose(mean.per_example[column], summed.per_example[column])
    single = nx.evaluate_generation(model, tok, PROMPTS, method="normxlogit", source_aggregation="mean", k=(1, 2),
                                    n_ablations=8, ratios=RATIOS, max_new_tokens=3)
    np.testing.assert_allclose(single.per_example["lds"], mean.per_example["lds"], atol=1e-9)
    for a, b in zip(single.per_example["source_scores"], mean.per_example["source_scores"]):
        np.testing.assert_allclose(a, b, rtol=1e-9)


@pytest.mark.parametrize("kwargs,match", [
    ({"methods": ["leave_one_out (mean)"]}, "scores sources directly"),
    ({"methods": ["normxlogit (median)"]}, "methods must be"),
    ({"methods": ["normxlogit", "normxlogit (sum)"]}, "same method and aggregation twice"),
    ({"source_aggregation": "median"}, "source_aggregation must be one of"),
    ({"methods": ["normxlogit (mean)"], "method_options": {"logat": {}}}, "method_options"),
    ({"methods": ["nope"]}, "methods must be"),
    ({"methods": ["random", "random"]}, "methods must be"),
    ({"n_ablations": 1}, "n_ablations"),
    ({"k": (0,)}, "k must"),
    ({"k": (1.5,)}, "k must"),
    ({"ratios": (1.2,)}, "ratios"),
    ({"continuations": ["a"]}, "one continuation per prompt"),
    ({"sources": [["The cat sat on the mat."]]}, "one list of sources per prompt"),
    ({"method_options": {"logat": {}}, "methods": ["random"]}, "method_options"),
])
def test_bad_evaluation_input(make_tiny, kwargs, match):
    model, tok = make_tiny("llama", "causal-lm")
    args = {"methods": ["random"]} | kwargs
    with pytest.raises(ValueError, match=match):
        nx.evaluate_generation_methods(model, tok, PROMPTS, max_new_tokens=2, **args)


# --- the attention baseline ----------------------------------------------------------------------------------------
def test_attention_baseline_equals_eager_loop(lm):
    model, tok = lm
    before = model.config._attn_implementation
    r = nx.explain_generation(model, tok, PROMPTS[0], continuation="it is here", method="attention",
                              sources="sentences")
    assert model.config._attn_implementation == before  # restored
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        att = eager(torch.tensor([r.source_ids]), output_attentions=True).attentions
    mean = torch.stack([a[0].mean(0) for a in att]).mean(0).numpy()  # (T, T)
    P = r.prompt_length
    for t in range(len(r)):
        np.testing.assert_allclose(r.scores[t, : P + t], mean[P + t - 1, : P + t], atol=1e-6)
    assert (r.source_scores >= 0).all()


# --- ContextCite, offline, with our sources ------------------------------------------------------------------------
def test_contextcite_runs_offline_with_our_partitioner(make_tiny, monkeypatch):
    pytest.importorskip("context_cite", reason="the contextcite extra is not installed")
    from sklearn.linear_model import Lasso
    from sklearn.preprocessing import StandardScaler

    import nltk
    downloads = []
    monkeypatch.setattr(nltk, "download", lambda *a, **k: downloads.append(a) or False)
    from normxlogit.generation.contextcite import contextcite_scores, load_contextcite

    load_contextcite()
    model, tok = make_tiny("llama", "causal-lm")
    case = _case(model, tok)
    S = len(case.sources.texts)
    scores = contextcite_scores(model, tok, case.prompt, case.sources, case.scorer, n_ablations=24)
    assert scores.shape == (S,) and np.isfinite(scores).all() and not downloads
    # The same fit by hand: ContextCite's masks, our deletion, its logit-probability target and its LASSO.
    masks = np.stack([np.random.RandomState(i).choice([False, True], size=S, p=[0.5, 0.5]) for i in range(24)])
    logp = case.scorer.logprobs(keep_without_sources(masks, case.sources.positions, len(case.prompt_ids)))
    target = (logp - np.log1p(-np.exp(logp))) / len(case.answer_ids)
    scaler = StandardScaler().fit(masks.astype(np.float32))
    lasso = Lasso(alpha=0.01, random_state=0).fit(scaler.transform(masks.astype(np.float32)), target)
    np.testing.assert_allclose(scores, lasso.coef_ / scaler.scale_ * len(case.answer_ids), rtol=2e-3, atol=2e-4)
    report = nx.evaluate_generation_methods(model, tok, PROMPTS[:1], ["it is on the mat"],
                                            methods=["contextcite", "random"], n_ablations=8, ratios=RATIOS)
    assert len(report["contextcite"].per_example["source_scores"][0]) == S
    assert report["contextcite"].meta["options"] == {"n_ablations": 8}


def test_contextcite_missing_gives_install_hint(monkeypatch):
    import importlib

    from normxlogit.generation import contextcite

    real = importlib.import_module

    def fake(name, *a, **k):
        if name == "context_cite":
            raise ImportError("No module named 'context_cite'")
        return real(name, *a, **k)

    monkeypatch.setattr(contextcite.importlib, "import_module", fake)
    with pytest.raises(ImportError, match=r"pip install 'normxlogit\[contextcite\]'"):
        contextcite.load_contextcite()
