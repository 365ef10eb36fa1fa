"""Statistics shared by the evaluations and the book's studies: bootstrap intervals and correlations."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r of two 1-D arrays (NaN when either is constant)."""
    x = x - x.mean()
    y = y - y.mean()
    denom = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum() / denom) if denom > 0 else float("nan")


def bootstrap_mean(
    values: Sequence[float] | np.ndarray | pd.Series, n_boot: int = 1000, seed: int = 0, ci: float = 0.95
) -> dict[str, float]:
    """Mean of ``values`` (NaNs dropped) with a percentile-bootstrap interval: ``{"mean", "low", "high", "n"}``."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return {"mean": np.nan, "low": np.nan, "high": np.nan, "n": 0}
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(1)
    alpha = (1 - ci) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return {"mean": float(v.mean()), "low": float(low), "high": float(high), "n": int(len(v))}


def cluster_bootstrap(sums: np.ndarray, counts: np.ndarray, n_boot: int, seed: int, ci: float) -> tuple[float, float]:
    """CI of ``sum(sums) / sum(counts)`` resampling texts (the rows) with replacement."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(sums), size=(n_boot, len(sums)))
    ratios = sums[idx].sum(1) / counts[idx].sum(1)
    alpha = (1 - ci) / 2
    low, high = np.nanquantile(ratios, [alpha, 1 - alpha])
    return float(low), float(high)


def _resampled_ranks(weights: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Average ranks, within each resample (row), of every original item, given how often each was drawn.

    ``groups`` numbers the distinct values in sorted order, so a value's rank in a resample is the number of drawn
    items below it plus (its drawn copies + 1) / 2, as ``rankdata(method="average")`` would give: cumulative sums,
    no sorting per resample.
    """
    b = weights.shape[0]
    flat = (groups[None, :] + n_groups * np.arange(b)[:, None]).ravel()
    counts = np.bincount(flat, weights=weights.ravel(), minlength=b * n_groups).reshape(b, n_groups)
    group_rank = np.cumsum(counts, axis=1) - (counts - 1.0) / 2.0
    return group_rank[:, groups]


def _resampled_spearman(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Spearman's rho of ``(x[idx[b]], y[idx[b]])`` for every row ``b`` of ``idx``, as count-weighted Pearson."""
    b, n = idx.shape
    weights = np.bincount((idx + n * np.arange(b)[:, None]).ravel(), minlength=b * n).reshape(b, n).astype(float)
    gx = np.unique(x, return_inverse=True)[1].ravel()
    gy = np.unique(y, return_inverse=True)[1].ravel()
    rx = _resampled_ranks(weights, gx, int(gx.max()) + 1)
    ry = _resampled_ranks(weights, gy, int(gy.max()) + 1)
    total = weights.sum(axis=1, keepdims=True)
    dx = rx - (weights * rx).sum(axis=1, keepdims=True) / total
    dy = ry - (weights * ry).sum(axis=1, keepdims=True) / total
    with np.errstate(invalid="ignore", divide="ignore"):  # a constant resample has no correlation: NaN
        cov, vx, vy = ((weights * u * v).sum(axis=1) for u, v in ((dx, dy), (dx, dx), (dy, dy)))
        return cov / np.sqrt(vx * vy)


def paired_arrays(x, y, x_name: str = "x", y_name: str = "y") -> tuple[np.ndarray, np.ndarray]:
    """Two paired 1-D float arrays of the same length, without the pairs that have a NaN on either side."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"{x_name} and {y_name} must be 1-D and of the same length, got shapes {x.shape} and "
                         f"{y.shape}.")
    keep = ~(np.isnan(x) | np.isnan(y))
    return x[keep], y[keep]


def spearman_with_ci(
    x: Sequence[float] | np.ndarray | pd.Series,
    y: Sequence[float] | np.ndarray | pd.Series,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict[str, float]:
    """Spearman's rho of ``x`` and ``y`` with a percentile-bootstrap confidence interval.

    Pairs with a NaN are dropped. Each resample draws ``n`` pairs with replacement and is re-ranked (ties get
    average ranks, as in scipy), for blocks of resamples at once. Returns ``{"rho", "low", "high", "n"}``.
    """
    x, y = paired_arrays(x, y, "x", "y")
    n = len(x)
    if n < 3:
        return {"rho": np.nan, "low": np.nan, "high": np.nan, "n": n}
    rho = float(stats.spearmanr(x, y).statistic)
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // n)  # a few million cells per block of resamples
    blocks = [min(chunk, n_boot - s) for s in range(0, n_boot, chunk)]
    boot = np.concatenate([_resampled_spearman(x, y, rng.integers(0, n, size=(b, n))) for b in blocks] or [[np.nan]])
    alpha = (1.0 - ci) / 2.0
    low, high = np.nanquantile(boot, [alpha, 1.0 - alpha]) if np.isfinite(boot).any() else (np.nan, np.nan)
    return {"rho": rho, "low": float(low), "high": float(high), "n": n}


def paired_bootstrap(
    a: Sequence[float] | np.ndarray | pd.Series,
    b: Sequence[float] | np.ndarray | pd.Series,
    n_boot: int = 2000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict[str, float]:
    """Mean of ``a - b`` over paired units (sentences) with a percentile interval from a paired bootstrap.

    ``a[k]`` and ``b[k]`` must be two measurements of the same unit (one sentence scored by two methods, or at two
    layers); each resample draws units with replacement and keeps their pairs together, so what the two share
    (an easy sentence is easy for both) cancels out of the difference. Units with a NaN on either side are dropped.
    Returns ``{"a", "b", "diff", "low", "high", "n"}``: both means, their difference and its interval.
    """
    a, b = paired_arrays(a, b, "a", "b")
    diff = bootstrap_mean(a - b, n_boot=n_boot, seed=seed, ci=ci)
    mean_a, mean_b = (float(v.mean()) if len(v) else np.nan for v in (a, b))
    return {"a": mean_a, "b": mean_b, "diff": diff["mean"], "low": diff["low"], "high": diff["high"],
            "n": diff["n"]}
