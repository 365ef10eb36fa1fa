"""Chapter 6's decoder study (normxlogit.studies.finetuned_decoder) on a tiny random Llama classifier."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import transformers as tf

import normxlogit as nx
from normxlogit.studies import finetuned_decoder as fd
from conftest import tiny_config

TEXTS = ["a good movie with great acting", "awful and poor", "fine, I guess", "bad plot but great music"]
LABELS = [1, 0, 1, 0]


@pytest.fixture(scope="module")
def two_class(tokenizer):
    torch.manual_seed(0)
    model = tf.LlamaForSequenceClassification(tiny_config("llama", len(tokenizer), num_labels=2)).eval()
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def test_each_method_scored_under_each_replacement_like_evaluate(two_class, tmp_path, monkeypatch):
    model, tok = two_class
    methods = ["random", "normxlogit", "gradient_norm"]
    out = fd.faithfulness_by_replacement(model, tok, TEXTS, methods, labels=LABELS, cache=tmp_path)
    assert set(out) == {"delete", "attention"} and all(list(r) == methods for r in out.values())
    for replacement, results in out.items():
        for method, result in results.items():
            plain = nx.evaluate(model, tok, TEXTS, method, labels=LABELS, replacement=replacement)
            assert result.replacement == replacement and result.method == method
            for metric in fd.CLASSIFICATION_METRICS:
                assert result.aopc[metric] == pytest.approx(plain.aopc[metric], abs=1e-9)
    # A second call reads every result from the cache: no attribution is computed.
    monkeypatch.setattr(fd, "attribute", lambda *a, **k: pytest.fail("recomputed a cached result"))
    again = fd.faithfulness_by_replacement(model, tok, TEXTS, methods, labels=LABELS, cache=tmp_path)
    assert again["attention"]["normxlogit"].aopc == out["attention"]["normxlogit"].aopc


def test_interval_table_is_the_paired_difference(two_class):
    model, tok = two_class
    results = fd.faithfulness_by_replacement(model, tok, TEXTS, ["random", "normxlogit", "logat"], labels=LABELS,
                                             replacements=("delete",))["delete"]
    table = fd.interval_table(results, ["comprehensiveness_cd"], n_boot=200)
    diff, low, high = nx.evaluation.results.paired_difference(
        results["normxlogit"], results["random"], "comprehensiveness_cd", n_boot=200)
    assert table.loc["random", "comprehensiveness_cd diff"] == pytest.approx(diff)
    assert (table.loc["random", "comprehensiveness_cd low"], table.loc["random", "comprehensiveness_cd high"]) == (
        pytest.approx(low), pytest.approx(high))
    assert np.isnan(table.loc["normxlogit", "comprehensiveness_cd diff"])
    with pytest.raises(ValueError, match="reference method"):
        fd.interval_table({"random": results["random"]}, ["comprehensiveness_cd"])


def test_ranks_keep_ties():
    values = pd.Series({"a": 0.341, "b": 0.3412, "c": 0.256, "d": 0.299})
    assert fd.ranks(values, higher_is_better=True).tolist() == [1, 1, 4, 3]
    assert fd.ranks(values, higher_is_better=False).tolist() == [3, 3, 1, 2]


def test_logat_anatomy_against_a_plain_computation(two_class):
    model, tok = two_class
    table = fd.logat_anatomy(model, tok, TEXTS)
    logat = nx.explain(model, tok, TEXTS, method="logat")
    other = nx.explain(model, tok, TEXTS, method="logat", target=[1 - a.target for a in logat])
    for i, (a, b) in enumerate(zip(logat, other)):
        keep = np.asarray(a.special_tokens_mask) == 0
        row = a.scores[keep]
        assert table.common_share[i] == pytest.approx(row.mean() ** 2 / (row ** 2).mean())
        contrast = row - b.scores[keep]
        assert table.common_share_contrast[i] == pytest.approx(contrast.mean() ** 2 / (contrast ** 2).mean())
    assert ((table.common_share >= 0) & (table.common_share <= 1)).all()


def test_paper_ranks_beside_the_llama2_column(two_class):
    model, tok = two_class
    results = fd.faithfulness_by_replacement(model, tok, TEXTS, ["random", "normxlogit", "leave_one_out"],
                                             labels=LABELS, replacements=("delete",))["delete"]
    side = fd.paper_ranks(results, "sst2")
    assert list(side.index) == ["random", "normxlogit"]  # the paper has no leave-one-out
    assert side["paper llama2"].tolist() == [0.256, 0.341]
    assert side["paper llama2 rank"].tolist() == [2, 1]
