"""Faithfulness results: metric metadata, the result object (curves, AOPC, intervals, JSON), tables and curve plots.

Metrics carry their own metadata (:class:`MetricInfo`: which measure, which direction is better), so tables sort and
mark themselves. :class:`FaithfulnessResult` keeps every example's outcome at every ratio, so each curve, AOPC score
and bootstrap interval is recomputed from it, and it saves and loads as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..settings import atomic_write_text
from .perturbation import KINDS
from .stats import pearson


@dataclass(frozen=True)
class MetricInfo:
    """What a faithfulness metric measures and which direction is better (so tables can sort and mark themselves)."""

    name: str
    kind: str  # comprehensiveness | sufficiency
    measure: str  # cd | accuracy | pearson | abs_change
    higher_is_better: bool
    task: str  # classification | regression
    description: str


METRICS: dict[str, MetricInfo] = {m.name: m for m in (
    MetricInfo("comprehensiveness_cd", "comprehensiveness", "cd", True, "classification",
               "confidence drop of the explained class (default: the predicted one) when the top-ranked tokens "
               "are removed"),
    MetricInfo("comprehensiveness_accuracy", "comprehensiveness", "accuracy", False, "classification",
               "accuracy against gold labels when the top-ranked tokens are removed"),
    MetricInfo("sufficiency_cd", "sufficiency", "cd", False, "classification",
               "confidence drop of the explained class (default: the predicted one) when only the top-ranked "
               "tokens are kept"),
    MetricInfo("sufficiency_accuracy", "sufficiency", "accuracy", True, "classification",
               "accuracy against gold labels when only the top-ranked tokens are kept"),
    MetricInfo("comprehensiveness_pearson", "comprehensiveness", "pearson", False, "regression",
               "Pearson r of the predictions with gold when the top-ranked tokens are removed"),
    MetricInfo("comprehensiveness_abs_change", "comprehensiveness", "abs_change", True, "regression",
               "mean |change| of the prediction when the top-ranked tokens are removed"),
    MetricInfo("sufficiency_pearson", "sufficiency", "pearson", True, "regression",
               "Pearson r of the predictions with gold when only the top-ranked tokens are kept"),
    MetricInfo("sufficiency_abs_change", "sufficiency", "abs_change", False, "regression",
               "mean |change| of the prediction when only the top-ranked tokens are kept"),
)}


def _aopc_mask(ratios: Sequence[float]) -> np.ndarray:
    r = np.asarray(ratios, dtype=np.float64)
    return (r > 1e-9) & (r < 1 - 1e-9)


@dataclass
class FaithfulnessResult:
    """Per-example outcomes of every perturbation, and the curves and AOPC scores derived from them.

    ``outputs[kind]`` is (examples, ratios): the probability of the measured class ``target`` (classification) or the
    prediction (regression) on the perturbed input; ``predictions[kind]`` the perturbed predicted class
    (classification only). ``original`` is p(target | x) (classification) or the prediction (regression),
    ``original_prediction`` y_hat, ``labels`` the gold labels (or None), ``n_ranked`` each example's ``n``,
    ``target`` the class the attributions explain and the curves measure (by default y_hat; None for regression and
    for results saved before it was recorded, which measured y_hat).
    """

    method: str
    task: str
    protocol: str
    replacement: str
    ratios: list[float]
    outputs: dict[str, np.ndarray]
    predictions: dict[str, np.ndarray]
    original: np.ndarray
    original_prediction: np.ndarray
    labels: np.ndarray | None
    n_ranked: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    target: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.ratios = [float(r) for r in self.ratios]
        self.outputs = {k: np.asarray(v, dtype=np.float64) for k, v in self.outputs.items()}
        self.predictions = {k: np.asarray(v, dtype=np.int64) for k, v in self.predictions.items()}
        self.original = np.asarray(self.original, dtype=np.float64)
        self.original_prediction = np.asarray(self.original_prediction)
        self.n_ranked = np.asarray(self.n_ranked, dtype=np.int64)
        if self.target is not None:
            self.target = np.asarray(self.target, dtype=np.int64)
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.float64 if self.task == "regression" else np.int64)

    @property
    def n_examples(self) -> int:
        return len(self.original)

    @property
    def metrics(self) -> list[str]:
        """The metrics this result has (accuracy and Pearson need labels)."""
        names = [m.name for m in METRICS.values() if m.task == self.task]
        if self.labels is None:
            names = [n for n in names if METRICS[n].measure not in ("accuracy", "pearson")]
        return names

    # --- derived numbers -------------------------------------------------------------------------------------
    def per_example(self, metric: str) -> np.ndarray:
        """(examples, ratios) values of a metric that is a mean over examples (cd, accuracy, abs_change)."""
        info = self._info(metric)
        out = self.outputs[info.kind]
        if info.measure == "cd":
            return self.original[:, None] - out
        if info.measure == "abs_change":
            return np.abs(out - self.original[:, None])
        if info.measure == "accuracy":
            return (self.predictions[info.kind] == self.labels[:, None]).astype(np.float64)
        raise ValueError(f"{metric} is not a mean over examples (Pearson r is computed over all of them at once).")

    def curve(self, metric: str) -> np.ndarray:
        """The metric at each ratio."""
        info = self._info(metric)
        if info.measure == "pearson":
            out = self.outputs[info.kind]
            return np.array([pearson(out[:, j], self.labels) for j in range(len(self.ratios))])
        return self.per_example(metric).mean(0)

    @property
    def curves(self) -> pd.DataFrame:
        """Ratios (index) by metrics (columns)."""
        return pd.DataFrame({m: self.curve(m) for m in self.metrics}, index=pd.Index(self.ratios, name="ratio"))

    @property
    def aopc(self) -> dict[str, float]:
        """Each metric averaged over the ratios strictly between 0 and 1 (10%..90% by default)."""
        mask = _aopc_mask(self.ratios)
        if not mask.any():
            raise ValueError("AOPC averages over ratios strictly between 0 and 1; these ratios have none.")
        return {m: float(self.curve(m)[mask].mean()) for m in self.metrics}

    def summary(self) -> pd.Series:
        """The AOPC scores as a Series named after the method."""
        return pd.Series(self.aopc, name=self.method)

    def interval(self, metric: str, level: float = 0.95, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
        """A bootstrap confidence interval of the AOPC of ``metric`` (resampling examples)."""
        samples = self._bootstrap(metric, n_boot, seed)
        alpha = (1 - level) / 2
        return float(np.quantile(samples, alpha)), float(np.quantile(samples, 1 - alpha))

    def _bootstrap(self, metric: str, n_boot: int, seed: int, index: np.ndarray | None = None) -> np.ndarray:
        rng = np.random.default_rng(seed)
        index = rng.integers(0, self.n_examples, (n_boot, self.n_examples)) if index is None else index
        mask = _aopc_mask(self.ratios)
        info = self._info(metric)
        if info.measure == "pearson":
            out = self.outputs[info.kind][:, mask]
            return np.array([np.mean([pearson(out[i, j], self.labels[i]) for j in range(out.shape[1])])
                             for i in index])
        values = self.per_example(metric)[:, mask].mean(1)
        return values[index].mean(1)

    def to_dataframe(self) -> pd.DataFrame:
        """Tidy curves: one row per (metric, ratio) with the method, protocol, replacement and metric metadata."""
        curves = self.curves.reset_index().melt(id_vars="ratio", var_name="metric", value_name="value")
        curves["kind"] = curves["metric"].map(lambda m: METRICS[m].kind)
        curves["measure"] = curves["metric"].map(lambda m: METRICS[m].measure)
        curves["higher_is_better"] = curves["metric"].map(lambda m: METRICS[m].higher_is_better)
        curves.insert(0, "method", self.method)
        curves["protocol"] = self.protocol
        curves["replacement"] = self.replacement
        return curves

    def plot(self, axes=None, **kwargs):
        """Comprehensiveness and sufficiency curves, one panel per measure; returns the figure."""
        return plot_faithfulness_curves([self], axes=axes, **kwargs)

    def _info(self, metric: str) -> MetricInfo:
        if metric not in self.metrics:
            raise KeyError(f"No metric {metric!r} in this result; it has {', '.join(self.metrics)}.")
        return METRICS[metric]

    # --- rendering and files ---------------------------------------------------------------------------------
    def __repr__(self) -> str:
        inner = _aopc_mask(self.ratios).any()
        scores = ", ".join(f"{k}={v:.3f}" for k, v in self.aopc.items()) if inner else "no ratio strictly inside (0, 1)"
        return (f"FaithfulnessResult(method={self.method!r}, examples={self.n_examples}, protocol={self.protocol!r}, "
                f"replacement={self.replacement!r}, AOPC: {scores})")

    def _repr_html_(self) -> str:
        head = (f"<b>{self.method}</b>: {self.n_examples} examples, protocol={self.protocol}, "
                f"replacement={self.replacement}")
        if not _aopc_mask(self.ratios).any():  # no AOPC without an inner ratio: show the curves
            return head + ", curves by ratio" + self.curves.to_html(float_format="{:.3f}".format)
        return head + ", AOPC over ratios 0 &lt; k &lt; 1" + self.summary().to_frame("AOPC").to_html(
            float_format="{:.3f}".format)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict holding everything (the curves are recomputed from it)."""
        def listed(a: np.ndarray) -> list:
            return a.tolist()

        return {
            "method": self.method, "task": self.task, "protocol": self.protocol, "replacement": self.replacement,
            "ratios": self.ratios,
            "outputs": {k: listed(v) for k, v in self.outputs.items()},
            "predictions": {k: listed(v) for k, v in self.predictions.items()},
            "original": listed(self.original),
            "original_prediction": listed(self.original_prediction),
            "labels": None if self.labels is None else listed(self.labels),
            "n_ranked": listed(self.n_ranked),
            "meta": self.meta,
            "target": None if self.target is None else listed(self.target),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FaithfulnessResult":
        return cls(**data)

    def save(self, path: str | Path) -> None:
        """Write the result as JSON (per-example outcomes included, so every curve can be recomputed)."""
        atomic_write_text(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> "FaithfulnessResult":
        """Read a result written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))


def aopc_table(results: Sequence[FaithfulnessResult], metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Methods (rows) by AOPC metrics (columns), in the order given."""
    if not results:
        raise ValueError("No results given.")
    table = pd.DataFrame([r.summary() for r in results])
    table.index.name = "method"
    return table[list(metrics)] if metrics is not None else table


def paired_difference(a: FaithfulnessResult, b: FaithfulnessResult, metric: str, level: float = 0.95,
                      n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """AOPC(a) - AOPC(b) on the same examples, with a paired bootstrap interval: ``(difference, low, high)``."""
    same = a.n_examples == b.n_examples and np.allclose(a.original, b.original, atol=1e-4)
    same_target = (a.target is None) == (b.target is None) and (a.target is None or np.array_equal(a.target, b.target))
    if not same or (a.task == "classification" and not (np.array_equal(a.original_prediction, b.original_prediction)
                                                        and same_target)):
        raise ValueError("Paired comparison needs two results on the same examples (same model and inputs).")
    index = np.random.default_rng(seed).integers(0, a.n_examples, (n_boot, a.n_examples))
    diff = a._bootstrap(metric, n_boot, seed, index) - b._bootstrap(metric, n_boot, seed, index)
    alpha = (1 - level) / 2
    return a.aopc[metric] - b.aopc[metric], float(np.quantile(diff, alpha)), float(np.quantile(diff, 1 - alpha))


# --- curve plots ---------------------------------------------------------------------------------------------------
_MEASURE_LABELS = {
    "cd": "confidence drop of the predicted class",
    "accuracy": "accuracy against gold labels",
    "pearson": "Pearson r with gold scores",
    "abs_change": "mean |change| of the prediction",
}


def plot_faithfulness_curves(results: Sequence[FaithfulnessResult], *, measures: Sequence[str] | None = None,
                             axes=None, title: str | None = None, palette: str = "tab10",
                             labels: dict[str, str] | None = None):
    """Per-ratio curves of several methods: one row per measure, comprehensiveness left and sufficiency right.

    Each panel says which direction is better. ``measures`` picks a subset (``"cd"``, ``"accuracy"``, ``"pearson"``,
    ``"abs_change"``); ``labels`` maps method names to the names shown in the legend. The default size fits a book
    column (7.5 inches wide). Returns the figure.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns


    if not results:
        raise ValueError("No results to plot.")
    available = [m for m in results[0].metrics]
    all_measures = list(dict.fromkeys(METRICS[m].measure for m in available))
    measures = list(measures) if measures is not None else all_measures
    unknown = [m for m in measures if m not in all_measures]
    if unknown:
        raise ValueError(f"Unknown measure(s) {unknown}; these results have {all_measures}.")
    if axes is None:
        fig, axes = plt.subplots(len(measures), 2, figsize=(7.5, 2.9 * len(measures) + 0.9), squeeze=False)
    else:
        axes = np.asarray(axes).reshape(len(measures), 2)
        fig = axes[0, 0].figure
    colours = dict(zip([r.method for r in results], sns.color_palette(palette, len(results))))
    for row, measure in enumerate(measures):
        for col, kind in enumerate(KINDS):
            ax = axes[row, col]
            name = f"{kind}_{measure}"
            for result in results:
                ax.plot(np.asarray(result.ratios) * 100, result.curve(name), marker="o", markersize=3,
                        label=(labels or {}).get(result.method, result.method), color=colours[result.method])
            better = "higher" if METRICS[name].higher_is_better else "lower"
            removed = "top tokens removed" if kind == "comprehensiveness" else "top tokens kept"
            ax.set_title(f"{kind.capitalize()} ({better} is better)", fontsize=10)
            ax.set_xlabel(f"% of ranked tokens ({removed})")
            ax.set_ylabel(_MEASURE_LABELS[measure])
            ax.grid(alpha=0.3)
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper center", ncol=min(len(names), 3), bbox_to_anchor=(0.5, 1.0),
               frameon=False, fontsize=9)
    meta = results[0]
    heading = title or f"{meta.n_examples} examples, protocol={meta.protocol}, replacement={meta.replacement}"
    rows = 1 + (len(names) - 1) // 3  # legend rows above the panels
    fig.suptitle(heading, y=1.0 + 0.04 * rows / len(measures), fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.06 * rows / len(measures)))
    return fig
