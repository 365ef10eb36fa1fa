"""The book's analyses, built on the layers below: norms (chapter 2), pre-training (chapter 2), layer read-outs
(chapter 3), the paper's reported figures, the sign LogAt leaves free in chapter 5 (anchoring), prompted LLM
classifiers (chapter 6), and plots."""

from . import anchoring, llm_classifiers, norms, paper, plots, pretraining, readouts

__all__ = ["anchoring", "llm_classifiers", "norms", "paper", "plots", "pretraining", "readouts"]
