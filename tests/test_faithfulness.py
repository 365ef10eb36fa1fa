"""The AOPC engine: equality with a plain per-example loop, protocols, replacements, the result object, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import normxlogit as nx
from normxlogit.core.inputs import model_inputs
from normxlogit.evaluation.perturbation import DEFAULT_RATIOS, perturb, ranked_positions, top_count
from normxlogit.evaluation.results import METRICS, FaithfulnessResult, paired_difference

TEXTS = [
    "a gripping , funny and thoroughly entertaining film .",
    "dull .",
    "the plot holds together until the last act , when it collapses .",
    "not bad at all .",
    "good film .",
]
LABELS = [1, 0, 0, 1, 1]
PAIRS = [("a man plays a flute .", "a man is playing the flute ."), ("a cat sleeps .", "the market fell sharply .")]


def reference(model, tok, attrs, ratios, protocol, replacement, labels=None, regression=False):
    """The protocol written as a plain loop: one example, one ratio, one perturbation, one forward pass at a time."""
    token_id = {"mask": tok.mask_token_id, "pad": tok.pad_token_id, "unk": tok.unk_token_id}.get(replacement)
    curves = {}
    for kind in ("comprehensiveness", "sufficiency"):
        outs, preds, origs, orig_preds = [], [], [], []
        for a in attrs:
            enc = tok(*((a.text,) if isinstance(a.text, str) else a.text), return_tensors="pt")
            assert enc["input_ids"][0].tolist() == a.input_ids
            special = np.asarray(a.special_tokens_mask, bool)
            if protocol == "clean":
                candidates = [i for i in range(len(a)) if not special[i]]
                n = len(candidates)
            else:
                candidates = list(range(1, len(a)))
                n = len(a)
            ranking = sorted(candidates, key=lambda i: (-a.scores[i], i))
            with torch.no_grad():
                logits0 = model(**model_inputs(model, enc)).logits[0]
            y_hat = int(logits0.argmax())
            origs.append(float(logits0[0]) if regression else float(torch.softmax(logits0, -1)[y_hat]))
            orig_preds.append(y_hat)
            row_out, row_pred = [], []
            for k in ratios:
                c = int(k * n) if protocol == "paper" else int(round(k * n, 6) // 1)
                drop = ranking[:c] if kind == "comprehensiveness" else ranking[c:]
                e = {key: v.clone() for key, v in enc.items()}
                if replacement == "attention":
                    e["attention_mask"][0, drop] = 0
                elif replacement == "delete":
                    keep = [i for i in range(len(a)) if i not in set(drop)]
                    e = {key: v[:, keep] for key, v in e.items()}
                else:
                    e["input_ids"][0, drop] = token_id
                with torch.no_grad():
                    logits = model(**model_inputs(model, e)).logits[0]
                row_out.append(float(logits[0]) if regression else float(torch.softmax(logits, -1)[y_hat]))
                row_pred.append(int(logits.argmax()))
            outs.append(row_out)
            preds.append(row_pred)
        outs, preds, origs = np.array(outs), np.array(preds), np.array(origs)
        if regression:
            curves[f"{kind}_abs_change"] = np.abs(outs - origs[:, None]).mean(0)
            if labels is not None:
                curves[f"{kind}_pearson"] = np.array([np.corrcoef(outs[:, j], labels)[0, 1] for j in range(len(ratios))])
        else:
            curves[f"{kind}_cd"] = (origs[:, None] - outs).mean(0)
            if labels is not None:
                curves[f"{kind}_accuracy"] = (preds == np.asarray(labels)[:, None]).mean(0)
    return curves


# Every protocol and replacement on a tiny BERT; the real MiniLM once.
ENGINE_CASES = [("bert", p, r) for p in ("clean", "paper") for r in ("mask", "attention", "delete")]
ENGINE_CASES += [("minilm", "clean", "mask")]


@pytest.mark.parametrize("family,protocol,replacement", ENGINE_CASES)
def test_batched_engine_equals_a_plain_loop(make_tiny, minilm_classifier, family, protocol, replacement):
    model, tok = minilm_classifier if family == "minilm" else make_tiny(family, "classification")
    attrs = nx.explain(model, tok, TEXTS, method="normxlogit")
    result = nx.evaluate(model, tok, TEXTS, attrs, labels=LABELS, protocol=protocol, replacement=replacement,
                         batch_tokens=64)
    expected = reference(model, tok, attrs, DEFAULT_RATIOS, protocol, replacement, LABELS)
    assert set(expected) == set(result.metrics)
    for metric, values in expected.items():
        np.testing.assert_allclose(result.curve(metric), values, atol=1e-5, err_msg=metric)
    assert result.meta["forward_inputs"] < result.meta["perturbed_inputs"]  # duplicates ran once


def test_regression_engine_equals_a_plain_loop(make_tiny):
    model, tok = make_tiny("bert", "regression")
    gold = [4.2, 0.5]
    result = nx.evaluate(model, tok, PAIRS, "gradient_norm", labels=gold, ratios=(0, 0.25, 0.5, 1))
    attrs = nx.explain(model, tok, PAIRS, method="gradient_norm")
    expected = reference(model, tok, attrs, (0, 0.25, 0.5, 1), "clean", "mask", gold, regression=True)
    for metric, values in expected.items():
        np.testing.assert_allclose(result.curve(metric), values, atol=1e-5, err_msg=metric)
    assert set(result.metrics) == {m for m in METRICS if METRICS[m].task == "regression"}


def test_endpoints_and_method_name(make_tiny):
    model, tok = make_tiny("bert", "classification")
    r = nx.evaluate(model, tok, TEXTS, "random", labels=LABELS)
    curves = r.curves
    assert curves.loc[0.0, "comprehensiveness_cd"] == 0 and curves.loc[1.0, "sufficiency_cd"] == 0
    # Removing everything (comprehensiveness at 100%) is keeping nothing (sufficiency at 0%).
    assert curves.loc[1.0, "comprehensiveness_cd"] == curves.loc[0.0, "sufficiency_cd"]
    assert r.method == "random" and r.replacement == "mask" and r.protocol == "clean"
    assert r.meta["replacement_token"] == "[MASK]"
    # AOPC against the plain loop's curve, averaged over 10%..90% by hand.
    attrs = nx.explain(model, tok, TEXTS, method="random")
    expected = reference(model, tok, attrs, DEFAULT_RATIOS, "clean", "mask", LABELS)
    for metric in ("comprehensiveness_cd", "sufficiency_cd", "comprehensiveness_accuracy"):
        inner = [value for k, value in zip(DEFAULT_RATIOS, expected[metric]) if k not in (0.0, 1.0)]
        assert len(inner) == 9 and r.aopc[metric] == pytest.approx(sum(inner) / 9, abs=1e-5)


def test_rankings_and_counts():
    a = nx.Attribution(tokens=["[CLS]", "a", "b", "c", "[SEP]"], input_ids=[101, 1, 2, 3, 102],
                       scores=np.array([9.0, 1.0, 3.0, 1.0, 5.0]), special_tokens_mask=[1, 0, 0, 0, 1],
                       target=0, prediction=0, method="m")
    ranking, n = ranked_positions(a, "clean")
    assert ranking.tolist() == [2, 1, 3] and n == 3  # specials never ranked; ties keep text order
    ranking, n = ranked_positions(a, "paper")
    assert ranking.tolist() == [4, 2, 1, 3] and n == 5  # the paper ranks [SEP] too and counts specials
    assert top_count(0.7, 90, "paper") == 62 and top_count(0.7, 90, "clean") == 63  # float rounding, kept in "paper"
    assert [top_count(k, 3) for k in DEFAULT_RATIOS] == [math.floor(k * 3 + 1e-9) for k in DEFAULT_RATIOS]
    row = {"input_ids": np.array([101, 1, 2, 3, 102]), "attention_mask": np.ones(5, int)}
    assert perturb(row, np.array([2]), "mask", 103, 0)["input_ids"].tolist() == [101, 1, 103, 3, 102]
    assert perturb(row, np.array([2]), "attention", None, 0)["attention_mask"].tolist() == [1, 1, 0, 1, 1]
    assert perturb(row, np.array([1, 2]), "delete", None, 0)["input_ids"].tolist() == [101, 3, 102]
    assert row["input_ids"].tolist() == [101, 1, 2, 3, 102]  # the original is never modified


def test_special_tokens_are_never_replaced_in_the_clean_protocol(make_tiny):
    model, tok = make_tiny("bert", "classification")
    seen = []
    handle = model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["input_ids"].clone()),
                                             with_kwargs=True)
    try:
        attrs = [nx.Attribution(**{**a.to_dict(), "scores": np.where(a.special_tokens_mask, 1e9, a.scores)})
                 for a in nx.explain(model, tok, TEXTS[:2])]  # specials scored highest: they must still stay
        seen.clear()
        nx.evaluate(model, tok, TEXTS[:2], attrs)
    finally:
        handle.remove()
    ids = torch.cat([s.flatten() for s in seen])
    assert (ids == tok.cls_token_id).sum() == (ids == tok.sep_token_id).sum() == len(ids[ids == tok.cls_token_id]) > 0
    for batch in seen:
        assert (batch[:, 0] == tok.cls_token_id).all()
        assert ((batch == tok.sep_token_id).sum(-1) == 1).all()


def test_pairs_and_attributions_without_texts(make_tiny):
    model, tok = make_tiny("bert", "classification")
    attrs = nx.explain(model, tok, PAIRS)
    a = nx.evaluate(model, tok, None, attrs)
    b = nx.evaluate(model, tok, PAIRS, "normxlogit")
    np.testing.assert_allclose(a.curve("comprehensiveness_cd"), b.curve("comprehensiveness_cd"))
    assert a.metrics == ["comprehensiveness_cd", "sufficiency_cd"]  # no labels: no accuracy


def test_result_round_trip_dataframe_and_plot(tmp_path, make_tiny):
    model, tok = make_tiny("bert", "classification")
    r = nx.evaluate(model, tok, TEXTS, "logat", labels=LABELS, replacement="unk")
    path = tmp_path / "r.json"
    r.save(path)
    s = FaithfulnessResult.load(path)
    assert s.replacement == "unk" and s.meta == r.meta and s.ratios == r.ratios
    for metric in r.metrics:
        np.testing.assert_allclose(s.curve(metric), r.curve(metric), atol=1e-6)
    df = r.to_dataframe()
    assert len(df) == len(r.ratios) * 4 and set(df.columns) >= {"method", "metric", "ratio", "value", "kind"}
    table = nx.aopc_table([r, s])
    assert table.shape == (2, 4) and table.index.tolist() == ["logat", "logat"]
    assert "AOPC" in r._repr_html_() and "logat" in repr(r)
    low, high = r.interval("comprehensiveness_cd", n_boot=200)
    assert low <= r.aopc["comprehensiveness_cd"] <= high
    diff, lo, hi = paired_difference(r, s, "comprehensiveness_cd", n_boot=50)
    assert diff == 0 and lo == hi == 0
    fig = r.plot()
    assert len(fig.axes) == 4 and fig.axes[0].get_xlabel().startswith("%")


def test_random_ratios_and_batching_do_not_change_results(make_tiny):
    model, tok = make_tiny("bert", "classification")
    a = nx.evaluate(model, tok, TEXTS, "random", labels=LABELS, batch_tokens=10_000)
    b = nx.evaluate(model, tok, TEXTS, "random", labels=LABELS, batch_tokens=16)
    np.testing.assert_allclose(a.curves.values, b.curves.values, atol=1e-5)
    c = nx.evaluate(model, tok, TEXTS, "random", labels=LABELS, seed=3)
    assert not np.allclose(a.curves.values, c.curves.values)


def test_decoders_need_another_replacement(make_tiny):
    import transformers as tf

    model, _ = make_tiny("gpt2", "classification")
    tok = tf.AutoTokenizer.from_pretrained(nx.default_model_path())
    tok.mask_token = None
    with pytest.raises(ValueError, match="no mask token.*'delete'"):
        nx.evaluate(model, tok, TEXTS, "normxlogit", replacement="mask")
    r = nx.evaluate(model, tok, TEXTS, "normxlogit")  # decoders default to deleting tokens
    assert r.replacement == "delete" and np.isfinite(r.curves.values).all()


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"protocol": "authors"}, ValueError, "protocol"),
        ({"replacement": "zero"}, ValueError, "replacement"),
        ({"ratios": (0, 1.5)}, ValueError, "ratios"),
        ({"labels": [1, 0]}, ValueError, "2 labels for 5 texts"),
        ({"labels": [0, 1, 3, 0, 1]}, ValueError, "0..2"),
        ({"method_or_attributions": "shap"}, ValueError, "Unknown method"),
        ({"batch_tokens": 0}, ValueError, "batch_tokens"),
    ],
)
def test_bad_input_gets_clear_errors(make_tiny, kwargs, error, match):
    model, tok = make_tiny("bert", "classification")
    kwargs = {"method_or_attributions": "random", **kwargs}
    with pytest.raises(error, match=match):
        nx.evaluate(model, tok, TEXTS, **kwargs)


def test_mismatched_attributions_and_lm_models(make_tiny):
    model, tok = make_tiny("bert", "classification")
    attrs = nx.explain(model, tok, TEXTS[:2])
    with pytest.raises(ValueError, match="other tokens"):
        nx.evaluate(model, tok, TEXTS[2:4], attrs)
    with pytest.raises(ValueError, match="2 attributions for 3 texts"):
        nx.evaluate(model, tok, TEXTS[:3], attrs)
    with pytest.raises(TypeError, match="go to nx.explain"):
        nx.evaluate(model, tok, TEXTS[:2], attrs, n_steps=5)
    mlm, tok = make_tiny("bert", "masked-lm")
    with pytest.raises(ValueError, match="classifiers and regressors"):
        nx.evaluate(mlm, tok, ["the [MASK] ."], "normxlogit")


def test_evaluate_methods_matches_evaluate_and_caches(tmp_path, make_tiny, monkeypatch):
    model, tok = make_tiny("bert", "classification")
    results = nx.evaluate_methods(model, tok, TEXTS, ["random", "gradient_norm"], labels=LABELS,
                                  protocols=("clean", "paper"), cache=tmp_path)
    assert [(r.method, r.protocol) for r in results] == [
        ("random", "clean"), ("random", "paper"), ("gradient_norm", "clean"), ("gradient_norm", "paper")]
    single = nx.evaluate(model, tok, TEXTS, "gradient_norm", labels=LABELS, protocol="paper")
    np.testing.assert_allclose(results[3].curves.values, single.curves.values, atol=1e-6)
    assert len(list(tmp_path.glob("*.json"))) == 4

    def fail(*args, **kwargs):
        raise AssertionError("cached results must not be recomputed")

    monkeypatch.setattr("normxlogit.evaluation.faithfulness.attribute", fail)
    again = nx.evaluate_methods(model, tok, TEXTS, ["random", "gradient_norm"], labels=LABELS,
                                protocols=("clean", "paper"), cache=tmp_path)
    for a, b in zip(results, again):
        np.testing.assert_array_equal(a.curves.values, b.curves.values)
    with pytest.raises(ValueError, match="not evaluated"):
        nx.evaluate_methods(model, tok, TEXTS, ["random"], method_options={"normxlogit": {}})


def test_paper_comparison_and_special_tokens_ranked_first(make_tiny):
    from normxlogit.studies.paper import PAPER_COMPREHENSIVENESS, paper_comparison

    model, tok = make_tiny("bert", "classification")
    attrs = [nx.Attribution(**{**a.to_dict(), "scores": np.where(np.arange(len(a)) == len(a) - 1, 1e9, a.scores)})
             for a in nx.explain(model, tok, TEXTS)]  # [SEP] scored highest
    paper = nx.evaluate(model, tok, TEXTS, attrs, protocol="paper")
    clean = nx.evaluate(model, tok, TEXTS, attrs, protocol="clean")
    assert paper.meta["special_ranked_first"] == 1 and clean.meta["special_ranked_first"] == 0
    for r in (paper, clean):
        r.method = "normxlogit"
    table = paper_comparison([clean, paper], "sst2")
    assert table.loc["normxlogit", "paper bert"] == PAPER_COMPREHENSIVENESS["sst2"]["normxlogit"]["bert"]
    assert table.loc["normxlogit", "ours (paper)"] == paper.aopc["comprehensiveness_cd"]
    with pytest.raises(ValueError, match="dataset"):
        paper_comparison([clean], "mnli")


def test_paper_comparison_ranks_ties_as_ties_over_the_papers_methods():
    from types import SimpleNamespace

    from normxlogit.studies.paper import PAPER_COMPREHENSIVENESS, paper_comparison

    paper = PAPER_COMPREHENSIVENESS["sst2"]
    ours = {m: 0.1 + 0.01 * i for i, m in enumerate(paper)}  # distinct, increasing
    ours["logat"], ours["normxlogit"] = 0.9001, 0.9004  # equal to three decimals: a tie for first
    results = [SimpleNamespace(method=m, protocol="clean", aopc={"comprehensiveness_cd": v})
               for m, v in {**ours, "leave_one_out": 0.95, "integrated_gradients_signed": 0.97}.items()]
    table = paper_comparison(results, "sst2")
    assert list(table.index) == list(paper)  # methods the paper does not have are left out
    assert table.loc[["logat", "normxlogit"], "ours (clean) rank"].tolist() == [1, 1]
    assert table["ours (clean) rank"].max() == len(paper)  # the next method is third, not 2.5
    # The paper's LLaMA-2 column ties LogAt and NormXLogit at .341 for first: both rank 1, none 1.5.
    llama = table["paper llama2 rank"]
    assert llama["logat"] == llama["normxlogit"] == 1 and set(llama.dropna()) <= set(range(1, 9))
    assert llama.isna().sum() == 1 and np.isnan(llama["decompx"])  # DecompX was run on BERT only
    with pytest.raises(ValueError, match="none of the methods"):
        paper_comparison(results[-1:], "sst2")


def test_perturbation_table_shows_what_the_model_sees():
    from normxlogit.evaluation.perturbation import perturbation_table
    import transformers as tf

    tok = tf.AutoTokenizer.from_pretrained(nx.default_model_path())
    a = nx.Attribution(tokens=["[CLS]", "a", "fine", "film", "[SEP]"], input_ids=tok("a fine film")["input_ids"],
                       scores=np.array([0.0, 1.0, 3.0, 2.0, 9.0]), special_tokens_mask=[1, 0, 0, 0, 1],
                       target=0, prediction=0, method="m")
    table = perturbation_table(a, tok, ratios=(0.34, 0.67))
    assert table["input the model sees"].tolist() == [
        "[CLS] a [MASK] film [SEP]", "[CLS] a [MASK] [MASK] [SEP]",  # comprehensiveness: top 1, top 2 removed
        "[CLS] [MASK] fine [MASK] [SEP]", "[CLS] [MASK] fine film [SEP]",  # sufficiency: top 1, top 2 kept
    ]
    paper = perturbation_table(a, tok, ratios=(0.2,), protocol="paper")
    assert paper["input the model sees"][0] == "[CLS] a fine film [MASK]"  # the paper's ranking lets [SEP] go first
