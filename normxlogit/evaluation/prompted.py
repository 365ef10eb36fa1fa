"""Scoring a causal LM's prediction in the AOPC engine: over the vocabulary, or as a prompted classifier.

A causal LM's prediction at the last position is the most probable next token, or, with label words, the most
probable of them (its index is the class). Its confidence is the predicted token's probability over the whole
vocabulary (``"vocabulary"``, the engine's behaviour before label-word heads) or the predicted label word's
probability renormalised over the label words (``"label_words"``: how a prompted classifier is scored, the softmax
of the label-word head's C logits).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from transformers import PreTrainedModel

from ..core.label_words import LabelWords  # the label-word head, template and read: core
from ..models import Task
from .perturbation import causal_lm_outputs

#: How a causal LM's confidence in its prediction is scored.
CONFIDENCES = ("vocabulary", "label_words")
Confidence = Literal["vocabulary", "label_words"]


def check_confidence(task: Task, confidence: str | None, label_ids: list[int] | None) -> str | None:
    """The confidence ``evaluate`` scores: ``confidence`` checked, default ``"vocabulary"`` for causal LMs; None for
    sequence classifiers and regressors (whose confidence is their own softmax)."""
    if confidence is not None and confidence not in CONFIDENCES:
        raise ValueError(f"confidence must be one of {', '.join(CONFIDENCES)}, not {confidence!r}.")
    if task != "causal-lm":
        if confidence is not None:
            raise ValueError(f"confidence= is for causal LMs (over the vocabulary or the label words); a {task} "
                             "model's confidence is its own softmax. Leave it out.")
        return None
    if confidence == "label_words" and not label_ids:
        raise ValueError("confidence='label_words' renormalises over the label words: pass label_words= too.")
    return confidence or "vocabulary"


def column_probabilities(picked: np.ndarray, lse: np.ndarray, confidence: str) -> np.ndarray:
    """Probabilities of the picked columns' logits (N, K): over the vocabulary (``lse`` is its log-normaliser, (N,))
    or, for ``"label_words"``, over the K columns themselves."""
    picked = picked.astype(np.float64)
    if confidence == "label_words":
        lse = np.logaddexp.reduce(picked, axis=-1)
    return np.exp(picked - np.asarray(lse, dtype=np.float64)[:, None])


def lm_explain_options(predictions: np.ndarray, label_words: LabelWords | None,
                       label_ids: list[int] | None) -> dict[str, Any]:
    """What :func:`~normxlogit.core.explain.attribute` needs to explain a causal LM's predictions: with label words,
    the label-word head and the predicted classes (label-word indices); else the predicted token ids."""
    if label_ids:
        return {"target": [int(p) for p in predictions], "label_words": list(label_words)}
    return {"target": [int(p) for p in predictions]}


def prompt_template(template: str | None, protocol: str, method_or_attributions: Any) -> str | None:
    """The template ``evaluate`` encodes the texts with: ``template``, else the one given attributions were computed
    with (``Attribution.meta["template"]``). Only the clean protocol keeps the template's tokens out of the ranking."""
    if template is None and not isinstance(method_or_attributions, str):
        templates = {getattr(a, "meta", {}).get("template") for a in method_or_attributions}
        template = templates.pop() if len(templates) == 1 else None
    if template is not None and protocol != "clean":
        raise ValueError("protocol='paper' ranks and replaces every token but the first, the template's included; "
                         "use protocol='clean' with a template.")
    return template


def cached_lm_outputs(model: PreTrainedModel, pads: dict[str, int], inputs: list[dict[str, np.ndarray]],
                      batch_tokens: int, columns: Sequence[int], progress: bool | None,
                      cache: dict | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`~normxlogit.evaluation.perturbation.causal_lm_outputs`, reading inputs already run from ``cache`` (a
    dict the caller shares between ``evaluate`` calls on one model, e.g. the same attributions scored with both
    confidences) and running only the others. ``cache=None``: run everything."""
    if cache is None:
        return causal_lm_outputs(model, pads, inputs, batch_tokens, columns, progress)
    if cache.setdefault("model", id(model)) != id(model):
        raise ValueError("forward_cache holds the outputs of another model; use one cache per model.")
    store = cache.setdefault(("columns", tuple(int(c) for c in columns)), {})
    keys = [b"|".join(x[k].tobytes() for k in sorted(x)) for x in inputs]
    missing = list({k: i for i, k in enumerate(keys) if k not in store}.values())
    if missing:
        picked, lse, top = causal_lm_outputs(model, pads, [inputs[i] for i in missing], batch_tokens, columns,
                                             progress)
        for j, i in enumerate(missing):
            store[keys[i]] = (picked[j], lse[j], top[j])
    values = [store[k] for k in keys]
    return (np.stack([v[0] for v in values]).reshape(len(keys), len(columns)),
            np.array([v[1] for v in values], dtype=np.float64), np.array([v[2] for v in values], dtype=np.int64))
