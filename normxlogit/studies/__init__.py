"""The book's analyses, built on the layers below: norms (chapter 2), pre-training (chapter 2), layer read-outs
(chapter 3), the paper's reported figures, prompted LLM classifiers (chapter 6), and plots."""

from . import llm_classifiers, norms, paper, plots, pretraining, readouts

__all__ = ["llm_classifiers", "norms", "paper", "plots", "pretraining", "readouts"]
