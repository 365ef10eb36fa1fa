"""The paired bootstrap of a mean difference (normxlogit.evaluation.stats.paired_bootstrap)."""

import numpy as np
import pytest

from normxlogit.evaluation.stats import bootstrap_mean, paired_bootstrap


def test_a_constant_shift_has_a_zero_width_interval():
    rng = np.random.default_rng(0)
    b = rng.normal(size=200)
    out = paired_bootstrap(b + 0.25, b, n_boot=500)
    assert out["diff"] == pytest.approx(0.25)
    assert out["low"] == pytest.approx(0.25) and out["high"] == pytest.approx(0.25)
    assert out["a"] - out["b"] == pytest.approx(out["diff"]) and out["n"] == 200


def test_pairing_narrows_the_interval_of_correlated_measurements():
    rng = np.random.default_rng(1)
    unit = rng.normal(size=300)  # what both measurements share: how hard the sentence is
    a = unit + 0.1 + rng.normal(scale=0.1, size=300)
    b = unit + rng.normal(scale=0.1, size=300)
    paired = paired_bootstrap(a, b, n_boot=1000)
    assert paired["low"] > 0  # the shift is found despite the large spread between units
    unpaired = bootstrap_mean(a, n_boot=1000)["high"] - bootstrap_mean(a, n_boot=1000)["low"]
    assert paired["high"] - paired["low"] < unpaired / 3


def test_no_difference_gives_an_interval_around_zero():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(2, 400))
    out = paired_bootstrap(a, b, n_boot=1000, seed=3)
    assert out["low"] < 0 < out["high"]


def test_nan_pairs_are_dropped_and_shapes_checked():
    out = paired_bootstrap([1.0, np.nan, 3.0], [0.0, 5.0, np.nan], n_boot=100)
    assert out["n"] == 1 and out["diff"] == 1.0 and out["a"] == 1.0 and out["b"] == 0.0
    with pytest.raises(ValueError):
        paired_bootstrap([1.0, 2.0], [1.0])


def test_it_is_reproducible_given_the_seed():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(2, 50))
    assert paired_bootstrap(a, b, seed=7) == paired_bootstrap(a, b, seed=7)
