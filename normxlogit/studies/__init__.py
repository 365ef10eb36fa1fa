"""The book's analyses, built on the layers below: norms (chapter 2), pre-training (chapter 2), layer read-outs
(chapter 3), the paper's reported figures, and plots."""

from . import norms, paper, plots, pretraining, readouts

__all__ = ["norms", "paper", "plots", "pretraining", "readouts"]
