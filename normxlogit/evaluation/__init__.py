"""Evaluating attributions: faithfulness by perturbation (AOPC), evidence alignment (AP, DP on BLiMP), rank agreement
between methods, and the statistics they share."""

from . import agreement, alignment, faithfulness, perturbation, results, stats

__all__ = ["agreement", "alignment", "faithfulness", "perturbation", "results", "stats"]
