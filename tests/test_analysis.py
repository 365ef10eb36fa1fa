"""The embedding-norm analysis tools (book chapter 2), on tiny random models: nothing is downloaded."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import transformers as tf
from scipy import stats

import normxlogit.studies.norms as na
import normxlogit.studies.pretraining as npre
from normxlogit.evaluation import stats as nstats
from normxlogit.evaluation.stats import spearman_with_ci


@pytest.fixture(scope="module")
def tiny_bert(tokenizer):
    torch.manual_seed(0)
    config = tf.BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=64)
    return tf.BertModel(config).eval()


def test_vocabulary_norms_equals_a_loop(tiny_bert, tokenizer):
    df = na.vocabulary_norms(tiny_bert, tokenizer)
    weight = tiny_bert.get_input_embeddings().weight.detach()
    assert len(df) == weight.shape[0] and (df.token_id.to_numpy() == np.arange(len(df))).all()
    for i in [0, 101, 1996, 2307, 29612]:
        assert df.norm[i] == pytest.approx(float(torch.sqrt((weight[i] ** 2).sum())), rel=1e-5)
        assert df.token[i] == tokenizer.convert_ids_to_tokens(i)


def test_whole_word_flag(tiny_bert, tokenizer):
    df = na.vocabulary_norms(tiny_bert, tokenizer).set_index("token")
    for word in ["the", "film", "beautiful", "a"]:
        assert df.is_word[word], word
    for piece in ["##ing", "[CLS]", "[SEP]", "[MASK]", "[unused0]", ",", "1990", "ß"]:
        assert not df.is_word[piece], piece
    assert df.word_class["the"] == "function" and df.word_class["film"] == "content"
    assert pd.isna(df.word_class["##ing"])


def test_join_frequencies_flags_unknown_words():
    df = pd.DataFrame({"word": ["the", "qzxvwq", "##s"], "is_word": [True, True, False]})
    out = na.join_frequencies(df)
    assert out.zipf[0] > 6 and out.zipf[1] == 0 and np.isnan(out.zipf[2])
    assert out.known_frequency.tolist() == [True, False, False]


def test_spearman_on_monotone_data_is_one():
    x = np.arange(50.0)
    res = spearman_with_ci(x, x**3, n_boot=200)
    assert res["rho"] == pytest.approx(1.0) and res["low"] == pytest.approx(1.0) and res["high"] == pytest.approx(1.0)
    assert res["n"] == 50
    assert spearman_with_ci(x, -x, n_boot=50)["rho"] == pytest.approx(-1.0)


def test_spearman_ci_covers_the_true_value():
    rng = np.random.default_rng(3)
    r = 0.6  # bivariate normal: population Spearman = 6/pi * arcsin(r/2)
    z = rng.multivariate_normal([0, 0], [[1, r], [r, 1]], size=2000)
    true = 6 / np.pi * np.arcsin(r / 2)
    res = spearman_with_ci(z[:, 0], z[:, 1], n_boot=500, seed=1)
    assert res["low"] < true < res["high"] and res["low"] < res["rho"] < res["high"]
    assert res["high"] - res["low"] < 0.1
    # NaN pairs are dropped
    x = np.r_[z[:, 0], np.nan]
    assert spearman_with_ci(x, np.r_[z[:, 1], 0.0], n_boot=10)["n"] == 2000


def test_resampled_spearman_equals_ranking_each_resample():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 15, 300).astype(float)  # many ties
    y = x + rng.normal(0, 4, 300)
    idx = rng.integers(0, 300, (25, 300))
    ref = [stats.spearmanr(x[i], y[i]).statistic for i in idx]
    np.testing.assert_allclose(nstats._resampled_spearman(x, y, idx), ref, atol=1e-12)


def test_word_class():
    for w in ["the", "The", "she", "of", "because", "would", "must", "those"]:
        assert na.word_class(w) == "function", w
    for w in ["film", "beautiful", "run", "quickly", "not"]:
        assert na.word_class(w) == "content", w
    assert set(na.FUNCTION_WORDS) == {"determiners", "pronouns", "prepositions", "conjunctions", "auxiliaries"}
    assert "and" in na.FUNCTION_WORDS["conjunctions"] and "with" in na.FUNCTION_WORDS["prepositions"]


def test_norm_sources_match_direct_computation(tiny_bert, tokenizer):
    texts = ["a gripping film .", "dull , lifeless and far too long for what it has to say ."]
    df = na.norm_sources(tiny_bert, tokenizer, texts)
    weight = tiny_bert.get_input_embeddings().weight.detach()
    for t, text in enumerate(texts):
        enc = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            h0 = tiny_bert(**enc, output_hidden_states=True).hidden_states[0][0]
        rows = df[df.text_id == t]
        assert rows.position.tolist() == list(range(enc.input_ids.shape[1]))
        assert rows.token_id.tolist() == enc.input_ids[0].tolist()
        np.testing.assert_allclose(rows.embedding_output_norm, torch.linalg.norm(h0, dim=-1), rtol=1e-5)
        np.testing.assert_allclose(rows.word_norm, torch.linalg.norm(weight[enc.input_ids[0]], dim=-1), rtol=1e-5)
    assert df.is_special.sum() == 4 and set(df.token[df.is_special]) == {"[CLS]", "[SEP]"}
    first = df[df.text_id == 0].set_index("token")
    assert first.word_class["a"] == "function" and first.word_class["film"] == "content" and not first.is_word["."]


def test_norm_sources_are_padding_invariant(tiny_bert, tokenizer):
    short = "a gripping film ."
    alone = na.norm_sources(tiny_bert, tokenizer, [short])
    padded = na.norm_sources(tiny_bert, tokenizer, [short, "a much longer sentence " * 5], batch_size=2)
    padded = padded[padded.text_id == 0].reset_index(drop=True)
    assert len(alone) == len(padded)
    for col in ["word_norm", "embedding_output_norm"]:
        np.testing.assert_allclose(alone[col], padded[col], atol=1e-5)


def test_source_rank_correlation(tiny_bert, tokenizer):
    texts = ["a gripping , moving film about love .", "dull and far too long .", "ok"]
    df = na.norm_sources(tiny_bert, tokenizer, texts)
    res = na.source_rank_correlation(df)
    assert res.text_id.tolist() == [0, 1, 2]
    for t in [0, 1]:
        rows = df[(df.text_id == t) & ~df.is_special]
        assert res.n_tokens[t] == len(rows)
        expected = stats.spearmanr(rows.word_norm, rows.embedding_output_norm).statistic
        assert res.rho[t] == pytest.approx(expected)
    assert np.isnan(res.rho[2])  # one token: no ranking to compare


def test_pretrain_small_mlm_is_reproducible(tokenizer, tmp_path):
    texts = ["a gripping film .", "dull and far too long .", "the best movie of the year", "it is not funny"] * 3
    kwargs = dict(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, steps=4, batch_size=4,
                  checkpoint_every=2, tokenizer=tokenizer, max_length=16, progress=False, num_threads=1)
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    a = npre.pretrain_small_mlm(texts, seed=0, cache=tmp_path, **kwargs)
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG and threads are left alone
    assert torch.get_num_threads() == threads
    assert len(list(tmp_path.glob("*.npz"))) == 1
    b = npre.pretrain_small_mlm(texts, seed=0, **kwargs)
    c = npre.pretrain_small_mlm(texts, seed=1, **kwargs)
    assert [ck.step for ck in a] == [0, 2, 4]
    assert [ck.loss for ck in a] == [ck.loss for ck in b] and [ck.loss for ck in a] != [ck.loss for ck in c]
    assert all(np.array_equal(x.norms, y.norms) for x, y in zip(a, b, strict=True))
    assert a[0].norms.shape == (len(tokenizer),) and a[0].loss == pytest.approx(np.log(len(tokenizer)), rel=0.05)
    assert not np.array_equal(a[0].norms, a[-1].norms)  # training moved the embeddings

    again = npre.pretrain_small_mlm(texts, seed=0, cache=tmp_path, **kwargs)  # loaded, not trained
    assert [ck.loss for ck in again] == [ck.loss for ck in a]
    assert all(np.array_equal(x.norms, y.norms) for x, y in zip(a, again, strict=True))

    curve = npre.norm_frequency_curve(a, tokenizer, n_boot=20)
    assert curve.columns.tolist() == ["step", "loss", "seconds", "rho", "low", "high", "n"]
    assert curve.step.tolist() == [0, 2, 4] and (curve.n > 10_000).all()
    assert ((curve.low <= curve.rho) & (curve.rho <= curve.high)).all()
    counts = na.token_counts(texts, tokenizer)
    assert counts.shape == (len(tokenizer),) and counts[tokenizer.cls_token_id] == len(texts)
    assert counts[tokenizer.convert_tokens_to_ids("film")] == 3
    by_counts = npre.norm_frequency_curve(a, tokenizer, counts=counts, n_boot=20)
    assert (by_counts.n == 17).all()  # the distinct whole words of the texts, "." excluded


@pytest.mark.parametrize("shift", [0.0, -0.1])
def test_word_class_gap_separates_class_from_frequency(shift):
    # norms fall with frequency in the range where the function words sit, and the function words are the more
    # frequent: a naive comparison finds a gap even without a class effect; the matches must not
    rng = np.random.default_rng(1)
    cz = rng.uniform(3.0, 7.0, 4000)
    fz = rng.uniform(5.0, 7.0, 300)
    curve = lambda z: 1.5 - 0.2 * np.abs(z - 4.5)  # noqa: E731 - rises, then falls
    words = pd.DataFrame({
        "zipf": np.r_[fz, cz],
        "norm": np.r_[curve(fz) + shift, curve(cz)] + rng.normal(0, 0.05, len(fz) + len(cz)),
        "word_class": ["function"] * len(fz) + ["content"] * len(cz),
    })
    naive = words[words.word_class == "function"].norm.mean() - words[words.word_class == "content"].norm.mean()
    assert naive < shift - 0.05  # confounded by frequency
    table = na.word_class_gap(words, n_boot=200, bin_width=0.25)
    assert list(table.index) == ["bins", "nearest", "regression"]
    assert (table.low <= table.gap).all() and (table.gap <= table.high).all()
    for match in ("nearest", "regression"):
        assert table.loc[match, "low"] <= shift <= table.loc[match, "high"], table
        assert abs(table.loc[match, "gap"] - shift) < 0.02, table
    assert abs(table.loc["nearest", "zipf_gap"]) < 0.01 and table.loc["regression", "zipf_gap"] == 0
    assert (table.n_function == 300).all() and (table.n_content == 4000).all()
    with pytest.raises(ValueError, match="content words"):
        na.word_class_gap(words[words.word_class == "function"])
