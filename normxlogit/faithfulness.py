"""Faithfulness by perturbation: AOPC comprehensiveness and sufficiency, batched.

For every example the tokens are ranked by attribution score (largest first). At each ratio ``k``:

- **comprehensiveness** replaces the top ``c = int(k * n)`` ranked tokens; a faithful ranking makes the prediction
  collapse fast;
- **sufficiency** replaces every ranked token *after* the top ``c`` (keeps only the top ones); a faithful ranking keeps
  the prediction.

Measures, averaged over examples at each ratio, then over ``0 < k < 1`` (10%..90% with the default ratios; the paper's
AOPC):

- classification: confidence drop ``p(y_hat | x) - p(y_hat | x')`` of the originally predicted class ``y_hat``, and
  accuracy of the perturbed predictions against gold labels;
- regression: the Pearson correlation of the perturbed predictions with the gold scores (the paper's STS-B
  "Comp_Acc"), and the mean absolute change of the prediction.

Two protocols:

- ``"clean"`` (default): special tokens ([CLS], [SEP], BOS/EOS, padding) are never ranked or replaced, and
  ``n`` is the number of non-special tokens, so ``k = 1`` replaces exactly the words. ``c = floor(k * n)`` computed
  robustly (``0.7 * 90`` gives 63, not the 62 that float rounding gives).
- ``"paper"``: the authors' choices, to compare with their numbers: only the first token ([CLS]) is excluded from
  the ranking (so [SEP] can be ranked and replaced), ``n`` counts every token including the special ones, and
  ``c = int(k * n)`` in plain floating point.

Replacement (recorded in the result): ``"mask"`` (the tokenizer's mask token, the paper's choice), ``"pad"``,
``"unk"``, ``"attention"`` (keep the token but drop it from the attention mask) or ``"delete"`` (remove it; the
sequence gets shorter). Token type ids and the attention mask are otherwise unchanged; ids are perturbed directly,
never round-tripped through text. Decoder tokenizers have no mask token: ``"mask"`` then raises an error that names
the alternatives (``"delete"`` is the one to use for decoders: GPT-style classifiers pool the last non-padding
token, which ``"pad"`` can move, and a token dropped from the attention mask still reaches the output through its
own residual stream when it is the pooled one).

All perturbed inputs of all examples, ratios and both measures are collected first, identical ones are kept once
(``k = 0`` comprehensiveness and ``k = 1`` sufficiency are the original input; ``k = 1`` comprehensiveness and
``k = 0`` sufficiency are the same; short inputs repeat counts), and they run length-sorted in a few large forward
passes.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .attribution import Attribution
from .explain import Texts, explain, model_inputs, model_max_length, normalise_texts, tokenize
from .models import Task, detect_task, prepare_tokenizer

PROTOCOLS = ("clean", "paper")
REPLACEMENTS = ("mask", "pad", "unk", "attention", "delete")
KINDS = ("comprehensiveness", "sufficiency")
#: 0, 0.1, ..., 1.0 as decimal literals (not ``np.linspace``), as the authors wrote them.
DEFAULT_RATIOS: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

Protocol = Literal["clean", "paper"]
Replacement = Literal["mask", "pad", "unk", "attention", "delete"]
MethodOrAttributions = Union[str, Sequence[Attribution]]


#: Default tokens per forward pass of :func:`evaluate`: on a CPU small batches keep the activations in cache (27%
#: faster than 8,192 on SST-2 with two AVX2 cores); an accelerator wants large ones.
BATCH_TOKENS = {"cpu": 2048, "accelerator": 16384}


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
               "confidence drop of the predicted class when the top-ranked tokens are removed"),
    MetricInfo("comprehensiveness_accuracy", "comprehensiveness", "accuracy", False, "classification",
               "accuracy against gold labels when the top-ranked tokens are removed"),
    MetricInfo("sufficiency_cd", "sufficiency", "cd", False, "classification",
               "confidence drop of the predicted class when only the top-ranked tokens are kept"),
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


#: The paper's comprehensiveness AOPC (confidence drop; STS-B: "Comp_Acc", a Pearson-type score, lower is better)
#: per dataset, method and model (Abbasi et al. 2025, Table 2; DecompX was run on BERT only).
PAPER_COMPREHENSIVENESS: dict[str, dict[str, dict[str, float]]] = {
    "sst2": {
        "random": {"llama2": .256, "deberta": .266, "bert": .245},
        "gradient_norm": {"llama2": .216, "deberta": .320, "bert": .331},
        "grad_x_input": {"llama2": .236, "deberta": .345, "bert": .339},
        "integrated_gradients": {"llama2": .220, "deberta": .346, "bert": .367},
        "decompx": {"bert": .574},
        "norm": {"llama2": .299, "deberta": .360, "bert": .311},
        "logat": {"llama2": .341, "deberta": .377, "bert": .364},
        "normxlogit": {"llama2": .341, "deberta": .386, "bert": .423},
    },
    "stsb": {
        "random": {"llama2": .283, "deberta": .430, "bert": .457},
        "gradient_norm": {"llama2": .351, "deberta": .338, "bert": .374},
        "grad_x_input": {"llama2": .255, "deberta": .214, "bert": .358},
        "integrated_gradients": {"llama2": .237, "deberta": .227, "bert": .370},
        "decompx": {"bert": .336},
        "norm": {"llama2": .251, "deberta": .199, "bert": .321},
        "logat": {"llama2": .167, "deberta": .423, "bert": .313},
        "normxlogit": {"llama2": .233, "deberta": .320, "bert": .281},
    },
}


def paper_comparison(results: Sequence["FaithfulnessResult"], dataset: Literal["sst2", "stsb"]) -> pd.DataFrame:
    """Our comprehensiveness AOPC per method and protocol beside the paper's BERT, DeBERTa and LLaMA-2 figures.

    SST-2 compares the confidence drop (higher is better); STS-B the Pearson r of the perturbed predictions with gold
    (the paper's "Comp_Acc", lower is better). Rank columns rank the methods within each column (1 = best).
    """
    if dataset not in PAPER_COMPREHENSIVENESS:
        raise ValueError(f"dataset must be one of {', '.join(PAPER_COMPREHENSIVENESS)}, not {dataset!r}.")
    metric = "comprehensiveness_cd" if dataset == "sst2" else "comprehensiveness_pearson"
    higher = METRICS[metric].higher_is_better
    table: dict[str, dict[str, float]] = {}
    for r in results:
        table.setdefault(r.method, {})[f"ours ({r.protocol})"] = r.aopc[metric]
    frame = pd.DataFrame(table).T
    paper = PAPER_COMPREHENSIVENESS[dataset]
    for model in ("bert", "deberta", "llama2"):
        frame[f"paper {model}"] = [paper.get(m, {}).get(model, np.nan) for m in frame.index]
    ranks = frame.rank(ascending=not higher).add_suffix(" rank")
    frame.index.name = "method"
    return frame.join(ranks)


# --- ranking and perturbation ------------------------------------------------------------------------------------
def ranked_positions(attribution: Attribution, protocol: Protocol = "clean") -> tuple[np.ndarray, int]:
    """The positions that may be replaced, highest score first (ties keep text order), and ``n``.

    ``clean``: the non-special tokens, ``n`` = their number. ``paper``: every position but the first, ``n`` = the
    full length (special tokens included), as in the authors' code.
    """
    scores = np.nan_to_num(np.asarray(attribution.scores, dtype=np.float64), nan=-np.inf)
    if protocol == "clean":
        candidates = np.flatnonzero(attribution.content_mask)
        n = len(candidates)
    elif protocol == "paper":
        candidates = np.arange(1, len(scores))
        n = len(scores)
    else:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}.")
    order = np.argsort(-scores[candidates], kind="stable")
    return candidates[order], n


def top_count(ratio: float, n: int, protocol: Protocol = "clean") -> int:
    """How many top-ranked tokens ratio ``ratio`` covers: ``int(k * n)`` (paper) or its rounding-safe floor (clean)."""
    if protocol == "paper":
        return int(ratio * n)
    return int(math.floor(ratio * n + 1e-9))


def replaced_positions(ranking: np.ndarray, count: int, kind: str) -> np.ndarray:
    """Comprehensiveness replaces the top ``count`` ranked positions; sufficiency all ranked positions after them."""
    if kind == "comprehensiveness":
        return ranking[:count]
    if kind == "sufficiency":
        return ranking[count:]
    raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}.")


def replacement_token_id(tokenizer: PreTrainedTokenizerBase, replacement: Replacement) -> int | None:
    """The id that replaces removed tokens (None for ``attention`` and ``delete``); a clear error when missing."""
    if replacement not in REPLACEMENTS:
        raise ValueError(f"replacement must be one of {', '.join(REPLACEMENTS)}, not {replacement!r}.")
    if replacement in ("attention", "delete"):
        return None
    token_id = getattr(tokenizer, f"{replacement}_token_id")
    if token_id is None:
        hint = (
            "Decoder tokenizers (GPT-2, Llama, ...) have no mask token: use replacement='delete' (recommended for "
            "decoders), 'attention' or 'unk'."
            if replacement == "mask"
            else "Use replacement='delete' or 'attention'."
        )
        raise ValueError(f"This tokenizer ({type(tokenizer).__name__}) has no {replacement} token. {hint}")
    return int(token_id)


def perturb(row: dict[str, np.ndarray], positions: np.ndarray, replacement: Replacement,
            token_id: int | None, pad_id: int) -> dict[str, np.ndarray]:
    """A copy of the model inputs ``row`` with ``positions`` removed the ``replacement`` way."""
    out = {k: v.copy() for k, v in row.items()}
    if len(positions) == 0:
        return out
    if replacement == "attention":
        out["attention_mask"][positions] = 0
    elif replacement == "delete":
        keep = np.ones(len(row["input_ids"]), dtype=bool)
        keep[positions] = False
        if not keep.any():  # nothing left to run: one padding token stands for the empty input
            out = {k: v[:1].copy() for k, v in row.items()}
            out["input_ids"][:] = pad_id
            return out
        out = {k: v[keep] for k, v in out.items()}
    else:
        out["input_ids"][positions] = token_id
    return out


def perturbation_table(attribution: Attribution, tokenizer: PreTrainedTokenizerBase,
                       ratios: Sequence[float] = (0.1, 0.3, 0.5), *, protocol: Protocol = "clean",
                       replacement: Replacement = "mask") -> pd.DataFrame:
    """What the model is shown: the perturbed token sequences of one example, per measure and ratio (for teaching)."""
    token_id = replacement_token_id(tokenizer, replacement)
    ranking, n = ranked_positions(attribution, protocol)
    row = {"input_ids": np.asarray(attribution.input_ids, dtype=np.int64),
           "attention_mask": np.ones(len(attribution), dtype=np.int64)}
    records = []
    for kind in KINDS:
        for ratio in ratios:
            count = top_count(ratio, n, protocol)
            out = perturb(row, replaced_positions(ranking, count, kind), replacement, token_id,
                          tokenizer.pad_token_id)
            tokens = tokenizer.convert_ids_to_tokens(out["input_ids"].tolist())
            if replacement == "attention":
                tokens = [t if keep else f"({t})" for t, keep in zip(tokens, out["attention_mask"])]
            records.append({"measure": kind, "ratio": ratio, "top tokens": count, "n": n,
                            "input the model sees": " ".join(tokens)})
    return pd.DataFrame(records)


# --- the result ----------------------------------------------------------------------------------------------------
def _aopc_mask(ratios: Sequence[float]) -> np.ndarray:
    r = np.asarray(ratios, dtype=np.float64)
    return (r > 1e-9) & (r < 1 - 1e-9)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    y = y - y.mean()
    denom = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum() / denom) if denom > 0 else float("nan")


@dataclass
class FaithfulnessResult:
    """Per-example outcomes of every perturbation, and the curves and AOPC scores derived from them.

    ``outputs[kind]`` is (examples, ratios): the probability of the originally predicted class (classification) or the
    prediction (regression) on the perturbed input; ``predictions[kind]`` the perturbed predicted class
    (classification only). ``original`` is p(y_hat | x) (classification) or the prediction (regression),
    ``original_prediction`` y_hat, ``labels`` the gold labels (or None), ``n_ranked`` each example's ``n``.
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

    def __post_init__(self) -> None:
        self.ratios = [float(r) for r in self.ratios]
        self.outputs = {k: np.asarray(v, dtype=np.float64) for k, v in self.outputs.items()}
        self.predictions = {k: np.asarray(v, dtype=np.int64) for k, v in self.predictions.items()}
        self.original = np.asarray(self.original, dtype=np.float64)
        self.original_prediction = np.asarray(self.original_prediction)
        self.n_ranked = np.asarray(self.n_ranked, dtype=np.int64)
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
            return np.array([_pearson(out[:, j], self.labels) for j in range(len(self.ratios))])
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
            return np.array([np.mean([_pearson(out[i, j], self.labels[i]) for j in range(out.shape[1])])
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
        from .plots import plot_faithfulness_curves

        return plot_faithfulness_curves([self], axes=axes, **kwargs)

    def _info(self, metric: str) -> MetricInfo:
        if metric not in self.metrics:
            raise KeyError(f"No metric {metric!r} in this result; it has {', '.join(self.metrics)}.")
        return METRICS[metric]

    # --- rendering and files ---------------------------------------------------------------------------------
    def __repr__(self) -> str:
        scores = ", ".join(f"{k}={v:.3f}" for k, v in self.aopc.items())
        return (f"FaithfulnessResult(method={self.method!r}, examples={self.n_examples}, protocol={self.protocol!r}, "
                f"replacement={self.replacement!r}, AOPC: {scores})")

    def _repr_html_(self) -> str:
        head = (f"<b>{self.method}</b>: {self.n_examples} examples, protocol={self.protocol}, "
                f"replacement={self.replacement}, AOPC over ratios 0 &lt; k &lt; 1")
        return head + self.summary().to_frame("AOPC").to_html(float_format="{:.3f}".format)

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
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FaithfulnessResult":
        return cls(**data)

    def save(self, path: str | Path) -> None:
        """Write the result as JSON (per-example outcomes included, so every curve can be recomputed)."""
        Path(path).write_text(json.dumps(self.to_dict()))

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
    if not same or (a.task == "classification" and not np.array_equal(a.original_prediction, b.original_prediction)):
        raise ValueError("Paired comparison needs two results on the same examples (same model and inputs).")
    index = np.random.default_rng(seed).integers(0, a.n_examples, (n_boot, a.n_examples))
    diff = a._bootstrap(metric, n_boot, seed, index) - b._bootstrap(metric, n_boot, seed, index)
    alpha = (1 - level) / 2
    return a.aopc[metric] - b.aopc[metric], float(np.quantile(diff, alpha)), float(np.quantile(diff, 1 - alpha))


# --- the engine ----------------------------------------------------------------------------------------------------
def _task_of(model: PreTrainedModel, task: Task | None) -> Task:
    task = task or detect_task(model)
    if task not in ("classification", "regression"):
        raise ValueError(
            f"evaluate() measures sequence classifiers and regressors; this model is a {task} model. Load it with "
            "AutoModelForSequenceClassification (nx.load_model(name, task='classification'))."
        )
    return task


def _check_labels(labels: Sequence | None, n: int, task: Task, num_classes: int) -> np.ndarray | None:
    if labels is None:
        return None
    values = np.asarray(list(labels))
    if len(values) != n:
        raise ValueError(f"Got {len(values)} labels for {n} texts: pass one gold label per text (or labels=None).")
    if task == "regression":
        return values.astype(np.float64)
    if not np.all(np.equal(np.mod(values, 1), 0)) or values.min() < 0 or values.max() >= num_classes:
        raise ValueError(f"Classification labels must be integers in 0..{num_classes - 1}; got e.g. {values[0]!r}.")
    return values.astype(np.int64)


def _attributions(model, tokenizer, items, method_or_attributions, *, seed, batch_size, max_length, progress,
                  explain_options) -> tuple[list[Attribution], str, float]:
    if isinstance(method_or_attributions, str):
        start = time.perf_counter()
        attrs = explain(model, tokenizer, items, method_or_attributions, seed=seed, batch_size=batch_size,
                        max_length=max_length, progress=progress, **explain_options)
        return list(attrs) if isinstance(attrs, list) else [attrs], method_or_attributions, time.perf_counter() - start
    if explain_options:
        raise TypeError(f"Options {sorted(explain_options)} go to nx.explain, but attributions were given; "
                        "pass a method name to have evaluate() compute them.")
    attrs = list(method_or_attributions)
    if not attrs or not all(isinstance(a, Attribution) for a in attrs):
        raise TypeError("method_or_attributions must be a method name or a list of nx.Attribution objects.")
    names = {a.method for a in attrs}
    return attrs, names.pop() if len(names) == 1 else "+".join(sorted(names)), float("nan")


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Texts | None,
    method_or_attributions: MethodOrAttributions = "normxlogit",
    *,
    labels: Sequence[int] | Sequence[float] | None = None,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    replacement: Replacement = "mask",
    protocol: Protocol = "clean",
    batch_tokens: int | None = None,
    max_length: int | None = None,
    task: Task | None = None,
    seed: int = 0,
    explain_batch_size: int = 32,
    progress: bool | None = None,
    **explain_options,
) -> FaithfulnessResult:
    """Comprehensiveness and sufficiency of an attribution method (or of given attributions) on ``texts``.

    ``method_or_attributions``: a registered method name (attributions are computed with :func:`normxlogit.explain`,
    which gets ``seed``, ``max_length``, ``explain_batch_size`` and any extra ``explain_options`` such as
    ``internal_batch_size``), or a list of :class:`~normxlogit.Attribution` for ``texts`` (``texts=None`` takes them
    from the attributions). ``labels``: gold classes / scores for accuracy / Pearson (optional). ``ratios``: the
    fractions of ranked tokens (AOPC averages those strictly between 0 and 1). ``replacement``: ``mask`` | ``pad`` |
    ``unk`` | ``attention`` | ``delete``. ``protocol``: ``clean`` (special tokens never ranked; ``n`` = non-special
    tokens) or ``paper`` (the authors': only the first token excluded; ``n`` counts special tokens).
    ``batch_tokens``: tokens (padding included) per forward pass; default from :data:`BATCH_TOKENS` (2,048 on a CPU,
    16,384 on an accelerator). ``progress``: a bar over forward passes (default: on when there are more than 5,000
    perturbed inputs).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}.")
    ratios = [float(r) for r in ratios]
    if not ratios or any(not 0 <= r <= 1 for r in ratios):
        raise ValueError(f"ratios must be fractions in [0, 1]; got {ratios}.")
    if batch_tokens is None:
        on_cpu = next(model.parameters()).device.type == "cpu"
        batch_tokens = BATCH_TOKENS["cpu" if on_cpu else "accelerator"]
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be at least 1, got {batch_tokens}.")
    task = _task_of(model, task)
    prepare_tokenizer(tokenizer, model)
    token_id = replacement_token_id(tokenizer, replacement)
    if texts is None:
        if isinstance(method_or_attributions, str):
            raise ValueError("texts=None only works with given attributions; pass the texts to explain.")
        texts = [a.text for a in method_or_attributions]
        if any(t is None for t in texts):
            raise ValueError("These attributions carry no text; pass texts= explicitly.")
    items, _ = normalise_texts(texts)
    num_classes = int(model.config.num_labels)
    gold = _check_labels(labels, len(items), task, num_classes)

    attrs, method, attribution_seconds = _attributions(
        model, tokenizer, items, method_or_attributions, seed=seed, batch_size=explain_batch_size,
        max_length=max_length, progress=bool(progress), explain_options=explain_options)
    if len(attrs) != len(items):
        raise ValueError(f"Got {len(attrs)} attributions for {len(items)} texts: pass one per text.")
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # explain already warned about truncation
        rows = tokenize(tokenizer, items, max_length or model_max_length(model, tokenizer))
    for i, (row, attr) in enumerate(zip(rows, attrs)):
        if list(row["input_ids"]) != list(attr.input_ids):
            raise ValueError(
                f"Attribution {i} was computed for other tokens than text {i} tokenizes to (different text, tokenizer "
                "or max_length). Pass the texts the attributions were computed for, in the same order."
            )

    # 1. Every perturbed input, kept once.
    unique: dict[bytes, int] = {}
    inputs: list[dict[str, np.ndarray]] = []

    def index_of(encoded: dict[str, np.ndarray]) -> int:
        key = b"|".join(encoded[k].tobytes() for k in sorted(encoded))
        if key not in unique:
            unique[key] = len(inputs)
            inputs.append(encoded)
        return unique[key]

    keys = [k for k in rows[0] if k != "special_tokens_mask"]
    originals = np.empty(len(items), dtype=np.int64)
    where = {kind: np.empty((len(items), len(ratios)), dtype=np.int64) for kind in KINDS}
    n_ranked = np.empty(len(items), dtype=np.int64)
    special_first = 0
    for i, (row, attr) in enumerate(zip(rows, attrs)):
        base = {k: np.asarray(row[k], dtype=np.int64) for k in keys}
        originals[i] = index_of(base)
        ranking, n = ranked_positions(attr, protocol)
        n_ranked[i] = n
        special_first += bool(len(ranking)) and bool(attr.special_tokens_mask[ranking[0]])
        for j, ratio in enumerate(ratios):
            count = top_count(ratio, n, protocol)
            for kind in KINDS:
                positions = replaced_positions(ranking, count, kind)
                where[kind][i, j] = index_of(perturb(base, positions, replacement, token_id, tokenizer.pad_token_id))
    total = len(items) * (1 + 2 * len(ratios))

    # 2. Run them, longest first, in batches of about ``batch_tokens`` tokens.
    logits = _run(model, tokenizer, inputs, batch_tokens, progress)

    # 3. Per-example outcomes.
    if task == "regression":
        values = logits[:, 0]
        original = values[originals]
        original_prediction = original.copy()
        outputs = {kind: values[where[kind]] for kind in KINDS}
        predictions: dict[str, np.ndarray] = {}
    else:
        probs = torch.softmax(torch.from_numpy(logits), -1).numpy()
        classes = logits.argmax(-1)
        original_prediction = classes[originals]
        original = probs[originals, original_prediction]
        outputs = {kind: probs[where[kind], original_prediction[:, None]] for kind in KINDS}
        predictions = {kind: classes[where[kind]] for kind in KINDS}
    meta = {
        "model": getattr(model.config, "_name_or_path", "") or type(model).__name__,
        "seed": seed,
        "replacement_token": None if token_id is None else tokenizer.convert_ids_to_tokens(token_id),
        "perturbed_inputs": total,
        "special_ranked_first": round(special_first / len(items), 4),  # share of examples (paper protocol only)
        "forward_inputs": len(inputs),
        "evaluation_seconds": round(time.perf_counter() - start, 3),
        "attribution_seconds": round(attribution_seconds, 3) if not math.isnan(attribution_seconds) else None,
    }
    if explain_options:
        meta["explain_options"] = {k: v for k, v in explain_options.items() if isinstance(v, (int, float, str, bool))}
    return FaithfulnessResult(method, task, protocol, replacement, ratios, outputs, predictions, original,
                              original_prediction, gold, n_ranked, meta)


def _run(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, inputs: list[dict[str, np.ndarray]],
         batch_tokens: int, progress: bool | None) -> np.ndarray:
    """Logits (len(inputs), C) as float32, computed in length-sorted, right-padded batches."""
    lengths = np.array([len(x["input_ids"]) for x in inputs])
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        size = max(1, batch_tokens // int(lengths[order[start]]))
        batches.append(order[start : start + size])
        start += size
    pad = {"input_ids": tokenizer.pad_token_id, "token_type_ids": tokenizer.pad_token_type_id}
    device = next(model.parameters()).device
    show = len(inputs) > 5000 if progress is None else progress
    out: np.ndarray | None = None
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for idx in tqdm(batches, desc="faithfulness", disable=not show):
                width = int(lengths[idx].max())
                batch = {}
                for key in inputs[idx[0]]:
                    array = np.full((len(idx), width), pad.get(key, 0), dtype=np.int64)
                    for r, i in enumerate(idx):
                        array[r, : lengths[i]] = inputs[i][key]
                    batch[key] = torch.from_numpy(array).to(device)
                logits = model(**model_inputs(model, batch)).logits.float().cpu().numpy()
                if out is None:
                    out = np.empty((len(inputs), logits.shape[-1]), dtype=np.float32)
                out[idx] = logits
    finally:
        model.train(was_training)
    assert out is not None
    return out


# --- several methods, cached ---------------------------------------------------------------------------------------
def model_fingerprint(model: PreTrainedModel) -> str:
    """A short hash of the model's configuration and (a strided sample of) its weights."""
    import hashlib

    digest = hashlib.sha256(model.config.to_json_string().encode())
    with torch.no_grad():
        for p in model.parameters():
            flat = p.detach().flatten()
            digest.update(flat[:: max(1, flat.numel() // 512)].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _code_version(method: str) -> str:
    """A hash of the code a cached result depends on: this module, and the method's module."""
    import hashlib
    import inspect
    import sys

    from .methods import get_method

    module = sys.modules[get_method(method).fn.__module__]
    sources = [Path(__file__).read_bytes(), inspect.getsource(module).encode()]
    return hashlib.sha256(b"".join(sources)).hexdigest()[:16]


def evaluate_methods(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Texts,
    methods: Sequence[str],
    *,
    labels: Sequence[int] | Sequence[float] | None = None,
    protocols: Sequence[Protocol] = ("clean",),
    method_options: dict[str, dict[str, Any]] | None = None,
    cache: str | Path | None = None,
    seed: int = 0,
    explain_batch_size: int = 32,
    max_length: int | None = None,
    progress: bool = False,
    **evaluate_options,
) -> list[FaithfulnessResult]:
    """:func:`evaluate` for several methods and protocols: each method's attributions are computed once.

    Returns the results in the order ``methods`` x ``protocols``. ``method_options``: extra ``nx.explain`` options per
    method (e.g. ``{"integrated_gradients": {"n_steps": 50}}``). ``cache``: a directory where each result is stored
    as JSON under a key made of the model's fingerprint, the texts, labels and every setting, and read back instead
    of being recomputed (the key also covers the code of this module and of the method's module). Other keyword
    arguments (``ratios``, ``replacement``, ``batch_tokens``...) go to
    :func:`evaluate`.
    """
    import hashlib

    method_options = method_options or {}
    unknown = set(method_options) - set(methods)
    if unknown:
        raise ValueError(f"method_options for methods not evaluated: {', '.join(sorted(unknown))}.")
    items, _ = normalise_texts(texts)
    folder = Path(cache) if cache is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        base = json.dumps([model_fingerprint(model), [list(t) if isinstance(t, tuple) else t for t in items],
                           None if labels is None else [float(x) for x in labels], seed, max_length,
                           {k: v for k, v in sorted(evaluate_options.items())}], default=str)
    results: list[FaithfulnessResult] = []
    for method in methods:
        options = method_options.get(method, {})
        paths = {}
        for protocol in protocols:
            if folder is not None:
                key = hashlib.sha256(json.dumps([base, method, options, protocol, _code_version(method)],
                                                default=str).encode()).hexdigest()
                paths[protocol] = folder / f"{method}-{protocol}-{key[:20]}.json"
        attrs: list[Attribution] | None = None
        attribution_seconds = None
        for protocol in protocols:
            path = paths.get(protocol)
            if path is not None and path.is_file():
                results.append(FaithfulnessResult.load(path))
                continue
            if attrs is None:
                start = time.perf_counter()
                attrs = explain(model, tokenizer, items, method, seed=seed, batch_size=explain_batch_size,
                                max_length=max_length, progress=progress, **options)
                attrs = attrs if isinstance(attrs, list) else [attrs]
                attribution_seconds = round(time.perf_counter() - start, 3)
            result = evaluate(model, tokenizer, items, attrs, labels=labels, protocol=protocol, seed=seed,
                              max_length=max_length, progress=progress, **evaluate_options)
            result.method = method
            result.meta["attribution_seconds"] = attribution_seconds
            if options:
                result.meta["explain_options"] = {k: v for k, v in options.items()
                                                  if isinstance(v, (int, float, str, bool))}
            if path is not None:
                result.save(path)
            results.append(result)
    return results
