"""Plots for the book's studies (matplotlib + seaborn); each function returns its figure. Faithfulness curves live
with their result object, in :mod:`normxlogit.evaluation.results`."""

from __future__ import annotations


def plot_efficiency(table, *, metric: str = "seconds_per_instance", title: str | None = None, ax=None):
    """Seconds per instance (or peak memory) by input length for each method, log scale. ``table``: a DataFrame with
    columns ``method``, ``length`` and ``metric`` (as written by ``bench/efficiency.py``). Returns the figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4))
    else:
        fig = ax.figure
    sns.lineplot(data=table, x="length", y=metric, hue="method", marker="o", ax=ax)
    ax.set_yscale("log")
    ax.set_xlabel("input length (tokens)")
    ax.set_ylabel({"seconds_per_instance": "seconds per instance (log)",
                   "peak_memory_mb": "peak memory, MB (log)"}.get(metric, metric))
    ax.set_title(title or metric.replace("_", " "))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return fig
