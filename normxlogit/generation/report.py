"""The results of :func:`~normxlogit.generation.faithfulness.evaluate_generation`: one method's faithfulness
(:class:`GenerationFaithfulness`) and several methods measured on the same ablations (:class:`GenerationReport`),
with bootstrap intervals over prompts and paired differences."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..evaluation.stats import bootstrap_mean, paired_bootstrap

__all__ = ["METRICS_HIGHER_IS_BETTER", "GenerationFaithfulness", "GenerationReport", "k_label", "metric_columns"]

#: Whether a larger value is more faithful, by metric (top-k drops: ``top_k_drop_<k>``, all higher-is-better).
METRICS_HIGHER_IS_BETTER = {"lds": True, "comprehensiveness": True, "sufficiency": False}


def metric_columns(per_example: pd.DataFrame) -> list[str]:
    """The metric columns of a per-example table: top-k drops, LDS, comprehensiveness and sufficiency."""
    return [c for c in per_example.columns if c.startswith("top_k_drop_")] + [
        c for c in ("lds", "comprehensiveness", "sufficiency") if c in per_example.columns]


def k_label(k: float) -> str:
    return str(int(k)) if float(k).is_integer() and k >= 1 else f"{float(k):g}"


@dataclass
class GenerationFaithfulness:
    """One method's faithfulness on a set of prompts: ``per_example`` (one row per prompt) and its means.

    Metrics, in nats of the answer's teacher-forced log-probability (higher = more faithful, except sufficiency):
    ``top_k_drop`` {k: log p(answer | prompt) - log p(answer | prompt without the top-k sources)} (a float k < 1 is
    a fraction of the sources); ``lds`` the Spearman correlation, over random ablations of the sources, between the
    predicted (sum of the kept sources' scores) and the measured log-probability; ``comprehensiveness`` and
    ``sufficiency`` the AOPC of the drop when the top-ranked source tokens are deleted / are all that is kept.
    ``curves``: the drop at every ratio (columns ``example``, ``measure``, ``ratio``, ``drop``).
    """

    method: str
    per_example: pd.DataFrame
    curves: pd.DataFrame = field(default_factory=pd.DataFrame)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.method

    @property
    def top_k_drop(self) -> dict[float, float]:
        """Mean drop in nats over prompts, for each k (NaN prompts, with fewer sources than k, left out)."""
        out = {}
        for column in self.per_example.columns:
            if column.startswith("top_k_drop_"):
                label = column.removeprefix("top_k_drop_")
                key: float = int(label) if label.isdigit() else float(label)
                out[key] = float(np.nanmean(self.per_example[column])) if self.per_example[column].notna().any() \
                    else float("nan")
        return out

    def _mean(self, column: str) -> float:
        values = self.per_example[column]
        return float(np.nanmean(values)) if values.notna().any() else float("nan")

    @property
    def lds(self) -> float:
        return self._mean("lds")

    @property
    def comprehensiveness(self) -> float:
        return self._mean("comprehensiveness")

    @property
    def sufficiency(self) -> float:
        return self._mean("sufficiency")

    @property
    def seconds(self) -> float:
        """Mean attribution time per prompt (seconds), not counting the evaluation's own ablations."""
        return self._mean("seconds")

    def summary(self, n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> pd.DataFrame:
        """Each metric's mean over prompts with a percentile-bootstrap interval (``mean``, ``low``, ``high``, ``n``)."""
        rows = {c: bootstrap_mean(self.per_example[c], n_boot=n_boot, seed=seed, ci=ci)
                for c in metric_columns(self.per_example) + ["seconds"]}
        table = pd.DataFrame(rows).T
        table.index.name = "metric"
        return table.astype({"n": int})

    def __repr__(self) -> str:
        drops = ", ".join(f"{k}: {v:+.3f}" for k, v in self.top_k_drop.items())
        return (f"GenerationFaithfulness(method={self.method!r}, prompts={len(self.per_example)}, top_k_drop={{{drops}}}, "
                f"lds={self.lds:.3f}, comprehensiveness={self.comprehensiveness:.3f}, "
                f"sufficiency={self.sufficiency:.3f})")


@dataclass
class GenerationReport:
    """Several methods' :class:`GenerationFaithfulness` on the same prompts, answers and ablations."""

    results: dict[str, GenerationFaithfulness]
    meta: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, method: str) -> GenerationFaithfulness:
        return self.results[method]

    def __iter__(self):
        return iter(self.results.values())

    def __len__(self) -> int:
        return len(self.results)

    @property
    def methods(self) -> list[str]:
        return list(self.results)

    def per_example(self) -> pd.DataFrame:
        """Every method's per-prompt table, stacked (column ``method``)."""
        return pd.concat([r.per_example for r in self.results.values()], ignore_index=True)

    def table(self, n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> pd.DataFrame:
        """The report card: one row per method, each metric's mean and its bootstrap interval (``<metric>_low``,
        ``<metric>_high``), and the mean attribution time (``seconds``)."""
        rows = []
        for method, result in self.results.items():
            summary = result.summary(n_boot=n_boot, seed=seed, ci=ci)
            row: dict[str, Any] = {"method": method}
            for metric, values in summary.iterrows():
                row[metric] = values["mean"]
                if metric != "seconds":
                    row[f"{metric}_low"], row[f"{metric}_high"] = values["low"], values["high"]
            rows.append(row)
        return pd.DataFrame(rows).set_index("method")

    def paired(self, reference: str = "random", metrics: list[str] | None = None, n_boot: int = 2000,
               seed: int = 0, ci: float = 0.95) -> pd.DataFrame:
        """Each method minus ``reference`` on every metric, paired over prompts (the same answers and ablations),
        with a paired-bootstrap interval: columns ``method``, ``metric``, ``method_mean``, ``reference_mean``,
        ``diff``, ``low``, ``high``, ``n``, ``better`` (True when the interval excludes 0 on the faithful side)."""
        if reference not in self.results:
            raise ValueError(f"reference {reference!r} was not evaluated; methods: {', '.join(self.results)}.")
        ref = self.results[reference].per_example.set_index("example")
        rows = []
        for method, result in self.results.items():
            if method == reference:
                continue
            mine = result.per_example.set_index("example").reindex(ref.index)
            for metric in metrics or metric_columns(ref):
                stats = paired_bootstrap(mine[metric].to_numpy(float), ref[metric].to_numpy(float), n_boot=n_boot,
                                         seed=seed, ci=ci)
                higher = METRICS_HIGHER_IS_BETTER.get(metric, True)
                better = stats["low"] > 0 if higher else stats["high"] < 0
                rows.append({"method": method, "metric": metric, "method_mean": stats["a"],
                             "reference_mean": stats["b"], "diff": stats["diff"], "low": stats["low"],
                             "high": stats["high"], "n": stats["n"], "better": bool(better)})
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        return f"GenerationReport(methods={self.methods}, prompts={self.meta.get('prompts')})"
