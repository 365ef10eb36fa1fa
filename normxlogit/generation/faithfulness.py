"""Faithfulness of generation attributions, measured by deleting prompt sources: ``evaluate_generation``.

For each prompt and its answer (generated greedily once, or given and teacher-forced), a method gives every source
a score for the whole answer and every prompt token a score (token-level methods: their token scores summed over
the answer's tokens; source scores are those summed over each source's tokens, :mod:`.sources`). With the answer's
log-probability ``f(kept) = log p(answer | prompt with only the kept tokens)`` (:class:`~.ablation.AnswerScorer`):

- **top-k drop**: ``f(all) - f(all but the k top-scored sources)``, k = 1, 2, 3 (a float k < 1: that fraction of
  the sources, at least one); NaN for a prompt with fewer than k sources;
- **LDS** (linear datamodeling score): ``n_ablations`` random subsets of sources (each kept with probability 0.5,
  seeded per prompt, the same for every method), the Spearman correlation between the sum of the kept sources'
  scores and the measured ``f``;
- **comprehensiveness / sufficiency**: the source tokens ranked by their token scores; at each ratio r of them
  (0.1..0.9, as the classification AOPC), ``f(all) - f(without the top r)`` / ``f(all) - f(only the top r kept)``,
  averaged over ratios (text outside the sources, such as the question or the chat template, always stays).
  Source-level methods give each token its source's score (ties broken by position).

Methods: every generation method of :func:`~normxlogit.explain_generation` (``normxlogit``, ``logat``, ``norm``,
``gradient_norm``, ``grad_x_input``, ``integrated_gradients``, ``attention``), plus three source-level ones:
``random`` (uniform scores, seeded per prompt), ``leave_one_out`` (``f(all) - f(all but source j)``: one ablation
per source, from the same scorer; here it replaces the token-level leave-one-out of ``explain_generation``) and
``contextcite`` (the ``context-cite`` package, :mod:`.contextcite`). ``evaluate_generation_methods`` runs several on
the same answers and ablations, so their differences are paired.

Source aggregation (:mod:`.sources`): a token-level method's source scores are the ``"sum"`` (default) or the
``"mean"`` of its token scores over each source's tokens (``source_aggregation=``). One report can hold both: a
method named ``"<method> (mean)"`` or ``"<method> (sum)"`` (:func:`method_variant`) is that method with that
aggregation, whatever ``source_aggregation`` says for plain names, so ``methods=["normxlogit", "normxlogit (mean)"]``
scores both side by side on the same answers and ablations; the token scores are computed once and shared (both
rows report that one computation's time). The aggregation changes the source ranking (top-k drop) and the LDS
prediction; comprehensiveness and sufficiency rank tokens, so the two variants share them. Source-level methods
(``random``, ``leave_one_out``, ``contextcite``) score sources directly and take no aggregation.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..core.inputs import eval_mode, model_device
from ..evaluation.perturbation import DEFAULT_RATIOS, top_count
from .ablation import AnswerScorer, keep_without_sources
from .contextcite import contextcite_scores
from .explain import explain_generation
from .prompts import check_causal_lm, continuation_ids, greedy_continuation, prompt_ids
from .registry import get_generation_method, list_generation_methods
from .report import GenerationFaithfulness, GenerationReport, k_label
from .sources import PromptSources, Sources, aggregate_sources, check_aggregation, locate_sources

__all__ = ["DEFAULT_EVALUATION_METHODS", "SOURCE_METHODS", "PromptCase", "evaluate_generation",
           "evaluate_generation_methods", "list_evaluation_methods", "method_variant", "prepare_cases"]

#: Methods scored at the level of sources (by ablation or at random) rather than aggregated from token scores.
SOURCE_METHODS = ("random", "leave_one_out", "contextcite")
#: What :func:`evaluate_generation_methods` runs by default: every method, ContextCite included.
DEFAULT_EVALUATION_METHODS = ("random", "norm", "logat", "normxlogit", "gradient_norm", "grad_x_input",
                              "integrated_gradients", "leave_one_out", "attention", "contextcite")


_VARIANT = re.compile(r"(.+) \((sum|mean)\)")


def list_evaluation_methods() -> list[str]:
    """Names :func:`evaluate_generation` accepts: the generation methods and the source-level ones (a generation
    method may also be named with its aggregation, ``"normxlogit (mean)"``: :func:`method_variant`)."""
    return sorted(set(list_generation_methods()) | set(SOURCE_METHODS))


def method_variant(name: str, source_aggregation: str = "sum") -> tuple[str, str | None]:
    """The method and source aggregation a report entry ``name`` stands for: ``"normxlogit (mean)"`` ->
    ``("normxlogit", "mean")``; a plain generation method takes ``source_aggregation``; a source-level method
    (:data:`SOURCE_METHODS`) has none (``None``). Clear errors for unknown names and for an aggregation given to a
    source-level method."""
    check_aggregation(source_aggregation)
    match = _VARIANT.fullmatch(name) if isinstance(name, str) else None
    base, aggregation = (match.group(1), match.group(2)) if match else (name, None)
    if base not in list_evaluation_methods():
        raise ValueError(f"methods must be distinct names among {', '.join(list_evaluation_methods())} (a generation "
                         f"method optionally followed by ' (sum)' or ' (mean)'); got {name!r}.")
    if base in SOURCE_METHODS:
        if aggregation is not None:
            raise ValueError(f"{base!r} scores sources directly (no token scores to aggregate); {name!r} is not a "
                             "method, use the plain name.")
        return base, None
    return base, aggregation or source_aggregation


@dataclass
class PromptCase:
    """One prompt ready to measure: its ids, its answer's ids, its sources and the answer's scorer."""

    index: int
    prompt: str
    prompt_ids: list[int]
    answer_ids: list[int]
    answer: str
    sources: PromptSources
    scorer: AnswerScorer


def prepare_cases(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                  continuations: Sequence[str | Sequence[int]] | None, sources: Sources | Sequence[Sources], *,
                  chat: bool, system_prompt: str | None, max_new_tokens: int,
                  batch_tokens: int | None) -> list[PromptCase]:
    """The answers (generated once, greedily, or the given continuations), sources and scorers of ``prompts``."""
    check_causal_lm(model)
    if isinstance(prompts, str) or not len(prompts):
        raise ValueError("prompts must be a non-empty list of strings (wrap a single prompt in a list).")
    if continuations is not None and (isinstance(continuations, str) or len(continuations) != len(prompts)):
        raise ValueError(f"continuations must be None or a list with one continuation per prompt ({len(prompts)}).")
    per_prompt = isinstance(sources, str) or sources is None
    if sources is None:
        raise ValueError("evaluate_generation needs sources: 'sentences' or one list of sources per prompt.")
    if not per_prompt and len(sources) != len(prompts):
        raise ValueError(f"sources must be 'sentences' or one list of sources per prompt ({len(prompts)}), "
                         f"got {len(sources)}.")
    vocab = model.get_input_embeddings().weight.shape[0]
    device = model_device(model)
    cases = []
    for i, prompt in enumerate(prompts):
        ids = prompt_ids(tokenizer, prompt, chat=chat, system_prompt=system_prompt)
        located = locate_sources(tokenizer, prompt, sources if per_prompt else sources[i], ids, chat=chat,
                                 system_prompt=system_prompt)
        if continuations is None:
            with eval_mode(model), torch.no_grad():
                answer = greedy_continuation(model, tokenizer, torch.tensor([ids], device=device), max_new_tokens)
        else:
            answer = continuation_ids(tokenizer, continuations[i], vocab)
        if not answer:
            raise ValueError(f"prompt {i}: the answer has no tokens.")
        scorer = AnswerScorer(model, tokenizer, ids, answer, batch_tokens=batch_tokens)
        text = tokenizer.decode(answer, clean_up_tokenization_spaces=False)
        cases.append(PromptCase(i, prompt, ids, list(answer), text, located, scorer))
    return cases


def method_scores(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, case: PromptCase, method: str,
                  options: dict[str, Any], *, seed: int, chat: bool, system_prompt: str | None,
                  aggregation: str = "sum", memo: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A method's source scores (S,) and prompt-token scores (P,) for the whole answer of ``case``.

    A token-level method's source scores aggregate its token scores over each source (``aggregation``); ``memo``
    (a dict, per prompt) keeps its attribution by (method, options), so another aggregation reuses it."""
    located, scorer = case.sources, case.scorer
    S, P = len(located.texts), scorer.prompt_length
    owner = np.full(P, -1)
    for j, pos in enumerate(located.positions):
        owner[pos] = j
    if method == "random":
        rng = np.random.default_rng([seed, case.index, 7])
        return rng.random(S), rng.random(P)
    if method == "leave_one_out":
        # A scorer of its own, so that its time counts its S + 1 passes (not rows other methods already ran).
        own = scorer.fresh()
        drops = own.full() - own.logprobs(keep_without_sources(~np.eye(S, dtype=bool), located.positions, P))
        scorer.cache.update(own.cache)
        return drops, np.where(owner >= 0, drops[owner], 0.0)
    if method == "contextcite":
        scores = contextcite_scores(model, tokenizer, case.prompt, located, scorer, **options)
        return scores, np.where(owner >= 0, scores[owner], 0.0)
    key = (method, repr(sorted(options.items())))
    result = None if memo is None else memo.get(key)
    if result is None:
        result = explain_generation(model, tokenizer, case.prompt, continuation=case.answer_ids, method=method,
                                    chat=chat, system_prompt=system_prompt, sources=located.spans, **options)
        if memo is not None:
            memo[key] = result
    return aggregate_sources(result.scores, located, aggregation).sum(0), result.scores[:, :P].sum(0)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    if np.ptp(x) == 0 or np.ptp(y) == 0 or not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.spearmanr(x, y).statistic)


def lds_masks(case: PromptCase, n_ablations: int, seed: int) -> np.ndarray:
    """The random kept-source masks (n, S) of a prompt's LDS: keep probability 0.5, seeded by (seed, prompt)."""
    rng = np.random.default_rng([seed, case.index])
    return rng.random((n_ablations, len(case.sources.texts))) < 0.5


def _count(k: float, S: int) -> int:
    return int(k) if float(k).is_integer() and k >= 1 else max(1, int(round(float(k) * S)))


def measure(case: PromptCase, source_scores: np.ndarray, token_scores: np.ndarray, *, ks: Sequence[float],
            masks: np.ndarray, ratios: Sequence[float]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Top-k drops, LDS, comprehensiveness and sufficiency of one method's scores on one prompt, and the curves.

    Every ablated input is requested from the prompt's scorer in one call (identical ones run once, and inputs
    another method or the LDS already needed are not run again)."""
    located, scorer = case.sources, case.scorer
    S, P = len(located.texts), scorer.prompt_length
    s = np.asarray(source_scores, dtype=np.float64)
    order = np.argsort(-np.nan_to_num(s, nan=-np.inf), kind="stable")
    rows, labels = [np.ones(P, dtype=bool)], [("full", None)]
    for k in ks:
        n = _count(k, S)
        if n <= S:
            kept = np.ones(S, dtype=bool)
            kept[order[:n]] = False
            rows.append(keep_without_sources(kept[None], located.positions, P)[0])
            labels.append(("top_k", k))
    rows.extend(keep_without_sources(masks, located.positions, P))
    labels.extend(("lds", i) for i in range(len(masks)))
    units = np.asarray(sorted(p for pos in located.positions for p in pos), dtype=np.int64)
    u = np.asarray(token_scores, dtype=np.float64)[units]
    ranked = units[np.argsort(-np.nan_to_num(u, nan=-np.inf), kind="stable")]
    for r in ratios:
        c = top_count(r, len(ranked))
        comp = np.ones(P, dtype=bool)
        comp[ranked[:c]] = False
        suff = np.ones(P, dtype=bool)
        suff[ranked[c:]] = False
        rows += [comp, suff]
        labels += [("comprehensiveness", r), ("sufficiency", r)]
    values = scorer.logprobs(np.stack(rows))
    base = float(values[0])
    out: dict[str, float] = {"logprob": base}
    for k in ks:
        out[f"top_k_drop_{k_label(k)}"] = float("nan")
    lds_values, curves = [], []
    for (kind, key), value in zip(labels[1:], values[1:]):
        if kind == "top_k":
            out[f"top_k_drop_{k_label(key)}"] = base - float(value)
        elif kind == "lds":
            lds_values.append(value)
        else:
            curves.append({"measure": kind, "ratio": float(key), "drop": base - float(value)})
    out["lds"] = _spearman(masks.astype(np.float64) @ s, np.asarray(lds_values)) if len(masks) else float("nan")
    for kind in ("comprehensiveness", "sufficiency"):
        inside = [c["drop"] for c in curves if c["measure"] == kind and 0 < c["ratio"] < 1]
        out[kind] = float(np.mean(inside)) if inside else float("nan")
    return out, curves


def evaluate_generation_methods(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    continuations: Sequence[str | Sequence[int]] | None = None,
    methods: Sequence[str] = DEFAULT_EVALUATION_METHODS,
    *,
    sources: Sources | Sequence[Sources] = "sentences",
    k: Sequence[float] = (1, 2, 3),
    n_ablations: int = 32,
    seed: int = 0,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    chat: bool = False,
    system_prompt: str | None = None,
    max_new_tokens: int = 32,
    method_options: dict[str, dict[str, Any]] | None = None,
    batch_tokens: int | None = None,
    source_aggregation: str = "sum",
) -> GenerationReport:
    """Faithfulness of several methods on the same prompts, answers and ablations (see the module docstring).

    ``prompts``: texts (the user's turn with ``chat=True``). ``continuations``: the answers to explain (text or
    ids, teacher-forced), or None to generate each greedily once (``max_new_tokens``). ``sources``: ``"sentences"``,
    or one list of strings / (start, end) spans per prompt. ``k``: the top-k drops (ints, or fractions of the
    sources). ``n_ablations``: random source subsets for the LDS (and ContextCite's ablation count unless
    ``method_options={"contextcite": {"n_ablations": ...}}``). ``method_options``: options per method (e.g.
    ``{"integrated_gradients": {"n_steps": 16}}``; keyed by a method, they apply to all its variants, keyed by a
    variant such as ``"normxlogit (mean)"``, to that one). ``batch_tokens``: tokens per forward pass of the
    ablations. ``source_aggregation``: ``"sum"`` (default) or ``"mean"`` of the token scores over a source's tokens,
    for methods named without one; ``"<method> (mean)"`` / ``"<method> (sum)"`` in ``methods`` fixes it for that
    entry, so both variants of a method can be scored in one report (see the module docstring).
    Returns a :class:`~.report.GenerationReport` (``table()``, ``paired()``), keyed by the names in ``methods``.
    """
    methods = list(methods)
    if not methods or len(set(methods)) != len(methods):
        raise ValueError(f"methods must be distinct names among {', '.join(list_evaluation_methods())}; got "
                         f"{methods}.")
    plan = {m: method_variant(m, source_aggregation) for m in methods}  # name -> (method, aggregation)
    if len(set(plan.values())) != len(plan):
        raise ValueError(f"methods name the same method and aggregation twice: {methods} (with "
                         f"source_aggregation={source_aggregation!r}).")
    given = {m: dict(o) for m, o in (method_options or {}).items()}
    stray = set(given) - set(methods) - {base for base, _ in plan.values()}
    if stray:
        raise ValueError(f"method_options for methods not evaluated: {', '.join(sorted(stray))}.")
    for base, _ in plan.values():
        if base not in SOURCE_METHODS:
            get_generation_method(base)
    if "contextcite" in methods:
        given.setdefault("contextcite", {}).setdefault("n_ablations", n_ablations)
    method_options = {m: {**given.get(plan[m][0], {}), **(given.get(m, {}) if m != plan[m][0] else {})}
                      for m in methods}
    ks = [float(x) if not float(x).is_integer() else int(x) for x in k]
    if any(x <= 0 or (not float(x).is_integer() and x >= 1) for x in ks):
        raise ValueError(f"k must hold positive ints (source counts) or fractions in (0, 1); got {list(k)}.")
    if not isinstance(n_ablations, (int, np.integer)) or n_ablations < 2:
        raise ValueError(f"n_ablations must be an int of at least 2 (the LDS is a correlation), got {n_ablations!r}.")
    ratios = [float(r) for r in ratios]
    if not ratios or any(not 0 <= r <= 1 for r in ratios):
        raise ValueError(f"ratios must be fractions in [0, 1]; got {ratios}.")
    cases = prepare_cases(model, tokenizer, prompts, continuations, sources, chat=chat, system_prompt=system_prompt,
                          max_new_tokens=max_new_tokens, batch_tokens=batch_tokens)
    records: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    curves: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for case in cases:
        masks = lds_masks(case, int(n_ablations), seed)
        memo: dict = {}  # this prompt's token attributions, shared by the aggregations of one method
        timed: dict[tuple, float] = {}
        for method in methods:
            base, aggregation = plan[method]
            key = (base, repr(sorted(method_options[method].items())))
            start = time.perf_counter()
            s, u = method_scores(model, tokenizer, case, base, method_options[method], seed=seed, chat=chat,
                                 system_prompt=system_prompt, aggregation=aggregation or "sum", memo=memo)
            seconds = timed.setdefault(key, time.perf_counter() - start)  # a shared attribution: its own time
            values, curve = measure(case, s, u, ks=ks, masks=masks, ratios=ratios)
            records[method].append({"method": method, "example": case.index, "n_sources": len(case.sources.texts),
                                    "prompt_tokens": len(case.prompt_ids), "answer_tokens": len(case.answer_ids),
                                    "answer": case.answer, **values, "seconds": seconds,
                                    "source_scores": s.tolist()})
            curves[method] += [{"example": case.index, **c} for c in curve]
    meta = {"prompts": len(cases), "k": ks, "n_ablations": int(n_ablations), "seed": seed, "ratios": ratios,
            "chat": chat, "method_options": method_options, "sources": sources if isinstance(sources, str) else "given",
            "source_aggregation": source_aggregation,
            "ablated_inputs_run": int(sum(c.scorer.computed for c in cases))}
    results = {m: GenerationFaithfulness(m, pd.DataFrame(records[m]), pd.DataFrame(curves[m]),
                                         {**meta, "options": method_options[m], "base_method": plan[m][0],
                                          "source_aggregation": plan[m][1]}) for m in methods}
    return GenerationReport(results, meta)


def evaluate_generation(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    continuations: Sequence[str | Sequence[int]] | None = None,
    method: str = "normxlogit",
    *,
    sources: Sources | Sequence[Sources] = "sentences",
    k: Sequence[float] = (1, 2, 3),
    n_ablations: int = 32,
    seed: int = 0,
    source_aggregation: str = "sum",
    **options: Any,
) -> GenerationFaithfulness:
    """One method's faithfulness on ``prompts``: top-k drop, LDS, comprehensiveness and sufficiency of the answer's
    log-probability when sources are deleted (see the module docstring). ``source_aggregation``: a source's score
    is the ``"sum"`` (default: what an additive reading predicts for deleting the source, which the top-k drop and
    the LDS test) or the ``"mean"`` (no length bias) of its tokens' scores; ``method`` may also name it, as in
    ``"normxlogit (mean)"``. ``options``: ``ratios``, ``chat``, ``system_prompt``, ``max_new_tokens``,
    ``batch_tokens`` and ``method_options`` of :func:`evaluate_generation_methods`."""
    report = evaluate_generation_methods(model, tokenizer, prompts, continuations, [method], sources=sources, k=k,
                                         n_ablations=n_ablations, seed=seed, source_aggregation=source_aggregation,
                                         **options)
    return report[method]
