"""Is NormXLogit faithful on a prompted LLM classifier? The measurement of issue 19, section 3 (third bullet).

A causal LM prompted with a template and read through its label words (:class:`~normxlogit.core.label_words.
LabelWordHead`) is a C-class classifier. :func:`prompted_classifier_study` measures, on SST-2 sentences, for a
zero-shot and a few-shot prompt:

- the prompted classifier's accuracy (and how much of the next-token probability its two label words take);
- AOPC (deletion, the clean protocol: only the review's tokens are ranked and deleted) of random, NormXLogit and
  LogAt, each plain and contrastive (``contrast=True``: the target's log-odds against the other label words),
  gradient norm, Gradient x Input (and Integrated Gradients with ``ig_steps``), each with the confidence over the
  label words and over the whole vocabulary (one set of forward passes serves both, through ``forward_cache``);
- paired bootstrap intervals of every method against random (the same sentences, so the comparison is paired);
- why it differs (:func:`read_diagnostics`): how much of a LogAt row is a level common to all the review's tokens,
  how the norm reorders the tokens (rank correlation and top-1 agreement of LogAt, NormXLogit and the norm alone),
  and at which layer the read is most faithful (Comp CD of the layer-l read for a few layers).

Results are cached on disk as JSON (one file per method, layer and confidence), under a key of the model's weights,
the sentences, labels, template, label words, options and the code of the evaluation modules, as
:func:`~normxlogit.evaluation.faithfulness.evaluate_methods` caches its results.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats as scipy_stats
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..core.explain import attribute, iter_batches, num_layers_of, resolve_layer
from ..core.heads import resolve_head
from ..core.inputs import encode
from ..core.label_words import LabelWords, label_word_head, log_odds
from ..core.registry import get_method
from ..evaluation.faithfulness import evaluate, model_fingerprint
from ..evaluation.results import FaithfulnessResult, paired_difference
from ..evaluation.stats import bootstrap_mean

__all__ = ["DEFAULT_N", "FEW_SHOT_TEMPLATE", "LABEL_WORDS", "METHODS", "PromptedStudy", "TEMPLATES",
           "ZERO_SHOT_TEMPLATE", "prompted_classifier_study", "read_diagnostics", "sst2_study"]

# The prompts were fixed in advance, before any result of this study was seen. The zero-shot one is chapter 6's
# (short on purpose: every perturbed input reruns the whole prompt). The few-shot one puts two SST-2 *training*
# phrases before it, one of each class, taken from the first rows of the training split (row 4, negative; row 27,
# positive), in the same format; the label words are the ones the prompt names.
ZERO_SHOT_TEMPLATE = "Review: {}\nSentiment (positive or negative):"
FEW_SHOT_TEMPLATE = (
    "Review: has so many flaws it would be easy for critics to shred it\nSentiment (positive or negative): negative\n\n"
    "Review: a pleasing , often-funny comedy .\nSentiment (positive or negative): positive\n\n"
    "Review: {}\nSentiment (positive or negative):"
)
TEMPLATES = {"zero-shot": ZERO_SHOT_TEMPLATE, "few-shot": FEW_SHOT_TEMPLATE}
LABEL_WORDS = (" negative", " positive")  # index = SST-2 label (1 = positive)

#: The compared rankings: name -> (registered method, options).
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "random": ("random", {}),
    "normxlogit": ("normxlogit", {}),
    "normxlogit (contrast)": ("normxlogit", {"contrast": True}),
    "logat": ("logat", {}),
    "logat (contrast)": ("logat", {"contrast": True}),
    "gradient_norm": ("gradient_norm", {}),
    "grad_x_input": ("grad_x_input", {}),
}
CONFIDENCES = ("label_words", "vocabulary")

#: SST-2 validation sentences of :func:`sst2_study` by default: the full study (both prompts, the seven rankings, two
#: intermediate layers, both confidences) in about 20 minutes of a 2-core CPU. Measured with SmolLM2-135M-Instruct
#: (float32): one ranking scored with both confidences costs 2-4.5 CPU-seconds per zero-shot sentence (about 18
#: distinct perturbed inputs of about 34 tokens, plus the attributions; twice that for the gradient methods and for
#: the few-shot prompt's 82 tokens), about 27 such units per sentence in all, so about 80 CPU-seconds, or 50 s of wall
#: time on two cores: 24 sentences. (Measured on a shared machine at load 20, where wall time was 6x the CPU time.)
DEFAULT_N = 24
MEASURES = ("comprehensiveness_cd", "sufficiency_cd", "comprehensiveness_accuracy", "sufficiency_accuracy")


@dataclass
class PromptedStudy:
    """What :func:`prompted_classifier_study` measured.

    ``results[(prompt, method, confidence)]`` and ``layer_results[(prompt, method, layer, confidence)]`` are the
    :class:`~normxlogit.FaithfulnessResult` objects; ``accuracy`` (one row per prompt), ``aopc`` (prompt,
    confidence, method x measures), ``versus_random`` (each method's AOPC minus random's with a paired 95% bootstrap
    interval), ``layers`` (Comp CD per layer) and ``diagnostics`` (per prompt and read) are tables of them.
    """

    results: dict[tuple[str, str, str], FaithfulnessResult]
    layer_results: dict[tuple[str, str, int, str], FaithfulnessResult]
    accuracy: pd.DataFrame
    aopc: pd.DataFrame
    versus_random: pd.DataFrame
    layers: pd.DataFrame
    diagnostics: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)


def _code_version(method: str) -> str:
    """A hash of the code one method's cached results depend on: the evaluation engine, the label-word head and the
    method's own module (not the other methods': adding a method to a study keeps the others' results)."""
    names = {evaluate.__module__, FaithfulnessResult.__module__, label_word_head.__module__,
             "normxlogit.evaluation.perturbation", "normxlogit.evaluation.prompted", get_method(method).fn.__module__}
    return hashlib.sha256(b"".join(inspect.getsource(sys.modules[n]).encode() for n in sorted(names))).hexdigest()[:16]


def _evaluated(model, tokenizer, encoded, labels, name: str, method: str, options: dict, layer: int,
               confidences: Sequence[str], folder: Path | None, base: str, forward_cache: dict, seed: int,
               explain_batch_size: int) -> dict[str, FaithfulnessResult]:
    """The results of one ranking (method, options, layer) for each confidence: read from the cache, or computed
    (the attributions once, the perturbed inputs once for all confidences)."""
    paths = {}
    if folder is not None:
        key = hashlib.sha256(json.dumps([base, method, options, layer, _code_version(method)],
                                        default=str).encode()).hexdigest()[:20]
        slug = name.replace(" ", "_").replace("(", "").replace(")", "")
        paths = {c: folder / f"{slug}-L{layer}-{c}-{key}.json" for c in confidences}
    out = {c: FaithfulnessResult.load(paths[c]) for c in confidences if c in paths and paths[c].is_file()}
    if len(out) == len(confidences):
        return out
    start = time.perf_counter()
    attrs = attribute(model, tokenizer, encoded, method, label_words=list(LABEL_WORDS), layer=layer, seed=seed,
                      batch_size=explain_batch_size, **options)
    seconds = round(time.perf_counter() - start, 3)
    for confidence in confidences:
        if confidence in out:
            continue
        result = evaluate(model, tokenizer, encoded, attrs, labels=labels, label_words=list(LABEL_WORDS),
                          confidence=confidence, forward_cache=forward_cache, seed=seed)
        result.method = name
        result.meta.update(attribution_seconds=seconds, explain_options=options, layer=layer)
        if confidence in paths:
            result.save(paths[confidence])
        out[confidence] = result
    return out


def read_diagnostics(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, encoded, *, batch_size: int = 16
                     ) -> pd.DataFrame:
    """Why NormXLogit ranks as it does, per sentence (one forward pass per batch), over the review's tokens only.

    Columns: ``level`` (the mean of the LogAt row: the part every token shares), ``spread`` (its standard deviation
    within the row), ``common_share`` (``level^2 / (level^2 + spread^2)``: the share of the row's mean square that is
    the common level), the same three for the contrastive read (``*_contrast``), and the Spearman correlations and
    top-1 agreements between LogAt, NormXLogit and the norm alone (plain and contrastive).
    """
    head = label_word_head(resolve_head(model, "causal-lm"), tokenizer, list(LABEL_WORDS))
    rows = []
    with torch.no_grad():
        for batch in iter_batches(model, tokenizer, encoded, head, batch_size=batch_size,
                                  layer=num_layers_of(model)):
            norms = batch.norms().cpu().numpy()
            plain = batch.target_logits().cpu().numpy()
            contrast = log_odds(batch.head_logits(), batch.targets).cpu().numpy()
            content = (~batch.special_tokens_mask).cpu().numpy()
            for j, index in enumerate(batch.indices):
                keep = content[j]
                n, lo, co = norms[j, keep], plain[j, keep], contrast[j, keep]
                row = {"sentence": index, "tokens": int(keep.sum())}
                for suffix, read in (("", lo), ("_contrast", co)):
                    level, spread = float(read.mean()), float(read.std())
                    row.update({f"level{suffix}": level, f"spread{suffix}": spread,
                                f"common_share{suffix}": level**2 / (level**2 + spread**2) if level or spread else
                                np.nan})
                pairs = {"logat~normxlogit": (lo, n * lo), "norm~normxlogit": (n, n * lo),
                         "logat~normxlogit (contrast)": (co, n * co), "norm~normxlogit (contrast)": (n, n * co),
                         "logat~logat (contrast)": (lo, co)}
                for name, (x, y) in pairs.items():
                    rho = scipy_stats.spearmanr(x, y).statistic if len(x) > 2 else np.nan
                    row[f"spearman {name}"] = float(rho)
                    row[f"top-1 {name}"] = float(np.argmax(x) == np.argmax(y))
                rows.append(row)
    return pd.DataFrame(rows).sort_values("sentence").reset_index(drop=True)


def prompted_classifier_study(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sentences: Sequence[str],
    labels: Sequence[int],
    *,
    templates: dict[str, str] | None = None,
    methods: Sequence[str] = tuple(METHODS),
    confidences: Sequence[str] = CONFIDENCES,
    layers: Sequence[int] = (10, 20),
    layer_methods: Sequence[str] = ("logat", "normxlogit"),
    layer_prompts: Sequence[str] = ("zero-shot",),
    ig_steps: int | None = None,
    cache: str | Path | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    explain_batch_size: int = 16,
    progress: bool = False,
) -> PromptedStudy:
    """Faithfulness of attributions on SmolLM2 (or any causal LM) prompted as an SST-2 classifier.

    ``templates``: prompt name -> template (default :data:`TEMPLATES`, zero- and few-shot, fixed in advance);
    ``methods``: names of :data:`METHODS` (``"integrated_gradients"`` is added when ``ig_steps`` is given);
    ``confidences``: ``"label_words"`` and/or ``"vocabulary"``; ``layers``: the intermediate layers whose read
    (``layer_methods``, on ``layer_prompts``) is also evaluated (the last layer is the main table). ``cache``: a
    folder for the results. Returns a :class:`PromptedStudy`.
    """
    templates = dict(TEMPLATES if templates is None else templates)
    variants = {m: METHODS[m] for m in methods}
    if ig_steps is not None:
        variants["integrated_gradients"] = ("integrated_gradients", {"n_steps": int(ig_steps)})
    labels = [int(x) for x in labels]
    if len(labels) != len(sentences):
        raise ValueError(f"Got {len(labels)} labels for {len(sentences)} sentences.")
    last = num_layers_of(model)
    layers = sorted({resolve_layer(int(layer), last) for layer in layers} - {last})
    folder = Path(cache) if cache is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    fingerprint = model_fingerprint(model)
    results: dict[tuple[str, str, str], FaithfulnessResult] = {}
    layer_results: dict[tuple[str, str, int, str], FaithfulnessResult] = {}
    diagnostics, timings = [], {}
    for prompt, template in templates.items():
        start = time.perf_counter()
        encoded = encode(model, tokenizer, list(sentences), template=template)
        base = json.dumps([fingerprint, list(sentences), labels, template, list(LABEL_WORDS), seed])
        forward_cache: dict = {}
        for name, (method, options) in variants.items():
            for confidence, result in _evaluated(model, tokenizer, encoded, labels, name, method, options, last,
                                                 confidences, folder, base, forward_cache, seed,
                                                 explain_batch_size).items():
                results[prompt, name, confidence] = result
            if progress:
                print(f"{prompt}: {name} done ({time.perf_counter() - start:.0f} s)", flush=True)
        if prompt in layer_prompts:
            for layer in layers:
                for name in layer_methods:
                    method, options = METHODS[name]
                    for confidence, result in _evaluated(model, tokenizer, encoded, labels, f"{name} @ {layer}",
                                                         method, options, layer, confidences, folder, base,
                                                         forward_cache, seed, explain_batch_size).items():
                        layer_results[prompt, name, layer, confidence] = result
                if progress:
                    print(f"{prompt}: layer {layer} done ({time.perf_counter() - start:.0f} s)", flush=True)
        diagnostics.append(read_diagnostics(model, tokenizer, encoded).assign(prompt=prompt))
        timings[prompt] = round(time.perf_counter() - start, 1)
    return _tables(results, layer_results, pd.concat(diagnostics, ignore_index=True), labels, last, n_boot, seed,
                   {"n": len(sentences), "templates": templates, "label_words": list(LABEL_WORDS),
                    "seconds": timings, "layers": layers, "ig_steps": ig_steps})


def sst2_study(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, n: int | None = DEFAULT_N,
               **options: Any) -> PromptedStudy:
    """:func:`prompted_classifier_study` on the first ``n`` SST-2 validation sentences (None: all 872)."""
    from ..data.benchmarks import load_sst2

    data = load_sst2("validation", limit=n)
    return prompted_classifier_study(model, tokenizer, list(data["sentence"]), list(data["label"]), **options)


def _tables(results, layer_results, diagnostics, labels, last, n_boot, seed, meta) -> PromptedStudy:
    prompts = list(dict.fromkeys(p for p, _, _ in results))
    gold = np.asarray(labels)
    accuracy = []
    for prompt in prompts:
        first = next(m for p, m, _ in results if p == prompt)  # every method's results share the intact inputs
        by_conf = {c: r for (p, m, c), r in results.items() if p == prompt and m == first}
        any_result = next(iter(by_conf.values()))
        hits = (any_result.original_prediction == gold).astype(float)
        acc = bootstrap_mean(hits, n_boot=n_boot, seed=seed)
        row = {"prompt": prompt, "accuracy": acc["mean"], "low": acc["low"], "high": acc["high"],
               "predicted positive": float(any_result.original_prediction.mean()), "n": len(hits)}
        if {"label_words", "vocabulary"} <= set(by_conf):  # p_vocab(y) / p_words(y) = the label words' mass
            mass = by_conf["vocabulary"].original / by_conf["label_words"].original
            row.update({"label-word mass": float(mass.mean()),
                        "p(predicted word), vocabulary": float(by_conf["vocabulary"].original.mean()),
                        "p(predicted word), label words": float(by_conf["label_words"].original.mean())})
        accuracy.append(row)
    aopc = pd.DataFrame([{"prompt": p, "confidence": c, "method": m, **{k: r.aopc.get(k) for k in MEASURES}}
                         for (p, m, c), r in results.items()]).set_index(["prompt", "confidence", "method"])
    versus = []
    for (p, m, c), r in results.items():
        reference = results.get((p, "random", c))
        if m == "random" or reference is None:
            continue
        for measure in ("comprehensiveness_cd", "sufficiency_cd"):
            diff, low, high = paired_difference(r, reference, measure, n_boot=n_boot, seed=seed)
            versus.append({"prompt": p, "confidence": c, "method": m, "measure": measure, "minus random": diff,
                           "low": low, "high": high})
    layers = []
    for (p, m, layer, c), r in layer_results.items():
        final = results.get((p, m, c))
        layers.append({"prompt": p, "confidence": c, "method": m, "layer": layer,
                       "comprehensiveness_cd": r.aopc["comprehensiveness_cd"],
                       "sufficiency_cd": r.aopc["sufficiency_cd"]})
        if final is not None and not any(x["layer"] == last and x["method"] == m and x["prompt"] == p and
                                         x["confidence"] == c for x in layers):
            layers.append({"prompt": p, "confidence": c, "method": m, "layer": last,
                           "comprehensiveness_cd": final.aopc["comprehensiveness_cd"],
                           "sufficiency_cd": final.aopc["sufficiency_cd"]})
    layer_table = (pd.DataFrame(layers).sort_values(["prompt", "confidence", "method", "layer"])
                   .reset_index(drop=True) if layers else pd.DataFrame())
    return PromptedStudy(results, layer_results, pd.DataFrame(accuracy).set_index("prompt"), aopc,
                         pd.DataFrame(versus, columns=["prompt", "confidence", "method", "measure", "minus random",
                                                       "low", "high"]).set_index(["prompt", "confidence", "method",
                                                                                  "measure"]),
                         layer_table, diagnostics, meta)
