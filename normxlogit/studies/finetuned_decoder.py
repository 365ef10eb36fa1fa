"""Chapter 6's measurement on a decoder fine-tuned as a classifier or regressor (``sst2-smollm2``, ``stsb-smollm2``).

- :func:`faithfulness_by_replacement`: the AOPC measures of several methods under several replacements (the decoder
  protocol: deletion, and the attention mask as a second column), each method's attributions computed **once** and
  scored under every replacement, each result cached on disk;
- :func:`interval_table`: AOPC per method with the paired bootstrap interval of NormXLogit minus each method;
- :func:`paper_ranks`: our comprehensiveness and its rank (ties as ties) beside the paper's LLaMA-2 column;
- :func:`logat_anatomy` and :func:`layer_faithfulness`: the measured reasons: how much of a LogAt row is a level
  common to every token, how the norm term reorders tokens, and at which layer the read is most faithful.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..core.attribution import Attribution
from ..core.explain import attribute, explain
from ..core.inputs import encode
from ..evaluation.faithfulness import evaluate, model_fingerprint
from ..evaluation.results import METRICS, FaithfulnessResult, paired_difference
from .paper import PAPER_COMPREHENSIVENESS, ranks

#: Methods of the like-for-like measurement (the paper's Table 2 rows that run on a decoder, plus leave-one-out).
METHODS: tuple[str, ...] = ("random", "norm", "logat", "normxlogit", "gradient_norm", "grad_x_input",
                            "integrated_gradients", "leave_one_out")
#: The decoder protocol: deletion (the package's default for decoders) and dropping the token from the attention mask.
REPLACEMENTS: tuple[str, ...] = ("delete", "attention")
CLASSIFICATION_METRICS = ("comprehensiveness_cd", "sufficiency_cd", "comprehensiveness_accuracy",
                          "sufficiency_accuracy")
REGRESSION_METRICS = ("comprehensiveness_pearson", "comprehensiveness_abs_change", "sufficiency_pearson",
                      "sufficiency_abs_change")
_VERSION = 1  # bump when what is cached changes meaning


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, default=str, sort_keys=True).encode()).hexdigest()[:20]


def faithfulness_by_replacement(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str] | Sequence[tuple[str, str]],
    methods: Sequence[str] = METHODS,
    *,
    labels: Sequence[int] | Sequence[float] | None = None,
    replacements: Sequence[str] = REPLACEMENTS,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    cache: str | Path | None = None,
    seed: int = 0,
    explain_batch_size: int = 16,
) -> dict[str, dict[str, FaithfulnessResult]]:
    """``{replacement: {method: result}}``: each method's attributions computed once, scored under every replacement.

    ``method_options``: extra ``explain`` options per method (e.g. ``{"integrated_gradients": {"n_steps": 50}}``).
    ``cache``: a folder where each result is stored as JSON under a key of the model's weights, the texts, labels,
    method, options and replacement, and read back instead of recomputed. Each result's ``meta`` records the seconds
    its attributions took (``attribution_seconds``, shared by the replacements).
    """
    method_options = {k: dict(v) for k, v in (method_options or {}).items()}
    unknown = set(method_options) - set(methods)
    if unknown:
        raise ValueError(f"method_options for methods not measured: {', '.join(sorted(unknown))}.")
    encoded = encode(model, tokenizer, list(texts))
    folder = Path(cache) if cache is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    base = [_VERSION, model_fingerprint(model), [list(t) if isinstance(t, tuple) else t for t in encoded.items],
            None if labels is None else [float(x) for x in labels], seed]
    out: dict[str, dict[str, FaithfulnessResult]] = {r: {} for r in replacements}
    for method in methods:
        options = method_options.get(method, {})
        paths = {r: None if folder is None else folder / f"{method}-{r}-{_key(base, method, options, r)}.json"
                 for r in replacements}
        attrs: list[Attribution] | None = None
        seconds = None
        for replacement, path in paths.items():
            if path is not None and path.is_file():
                out[replacement][method] = FaithfulnessResult.load(path)
                continue
            if attrs is None:
                start = time.perf_counter()
                attrs = attribute(model, tokenizer, encoded, method, seed=seed, batch_size=explain_batch_size,
                                  **options)
                seconds = round(time.perf_counter() - start, 3)
            result = evaluate(model, tokenizer, encoded, attrs, labels=labels, replacement=replacement, seed=seed)
            result.method = method
            result.meta["attribution_seconds"] = seconds
            if path is not None:
                result.save(path)
            out[replacement][method] = result
    return out


def interval_table(
    results: Mapping[str, FaithfulnessResult],
    metrics: Sequence[str],
    *,
    reference: str = "normxlogit",
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Rows: methods; per metric its AOPC and the paired bootstrap difference AOPC(reference) - AOPC(method) with a
    95% interval (``<metric> diff``, ``low``, ``high``; the reference's own row is NaN). Whether a positive difference
    favours the reference depends on the metric's direction (:data:`normxlogit.evaluation.results.METRICS`)."""
    if reference not in results:
        raise ValueError(f"The reference method {reference!r} is not among the results ({', '.join(results)}).")
    rows = {}
    for method, result in results.items():
        row: dict[str, float] = {}
        for metric in metrics:
            row[metric] = result.aopc[metric]
            if method == reference:
                row.update({f"{metric} diff": np.nan, f"{metric} low": np.nan, f"{metric} high": np.nan})
            else:
                diff, low, high = paired_difference(results[reference], result, metric, n_boot=n_boot, seed=seed)
                row.update({f"{metric} diff": diff, f"{metric} low": low, f"{metric} high": high})
        rows[method] = row
    frame = pd.DataFrame(rows).T
    frame.index.name = "method"
    return frame


def paper_ranks(results: Mapping[str, FaithfulnessResult], dataset: str, model: str = "llama2") -> pd.DataFrame:
    """Our comprehensiveness (SST-2: confidence drop; STS-B: Pearson of the perturbed predictions, the paper's
    "Comp_Acc") and its rank beside the paper's column for ``model``, over the methods both have."""
    if dataset not in PAPER_COMPREHENSIVENESS:
        raise ValueError(f"dataset must be one of {', '.join(PAPER_COMPREHENSIVENESS)}, not {dataset!r}.")
    metric = "comprehensiveness_cd" if dataset == "sst2" else "comprehensiveness_pearson"
    paper = PAPER_COMPREHENSIVENESS[dataset]
    shared = [m for m in results if model in paper.get(m, {})]
    frame = pd.DataFrame({
        "ours": [results[m].aopc[metric] for m in shared],
        f"paper {model}": [paper[m][model] for m in shared],
    }, index=pd.Index(shared, name="method"))
    higher = METRICS[metric].higher_is_better
    frame["ours rank"] = ranks(frame["ours"], higher)
    frame[f"paper {model} rank"] = ranks(frame[f"paper {model}"], higher)
    return frame


def _content(a: Attribution) -> np.ndarray:
    return np.asarray(a.special_tokens_mask) == 0


def logat_anatomy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    batch_size: int = 16,
    **explain_options: Any,
) -> pd.DataFrame:
    """Per text: what a row of LogAt is made of, over the ranked (non-special) tokens.

    Columns: ``common_share`` (the squared mean of the row over its mean square: the share of the row that is one
    level shared by all tokens, which no ranking can see), ``rho_norm_logat`` (Spearman of the embedding norm with
    LogAt), ``rho_logat_normxlogit`` (Spearman of LogAt with NormXLogit: how much the norm term reorders the tokens),
    ``common_share_contrast`` and ``rho_contrast_logat`` (the same for the target-minus-other read of a two-class
    head, ``logit_y - logit_other`` on every token), and ``tokens``. ``explain_options`` go to every
    :func:`~normxlogit.explain` call (e.g. ``template=`` and ``label_words=`` for a prompted LM's label-word head).
    """
    def run(method: str, **extra: Any) -> list[Attribution]:
        return explain(model, tokenizer, list(texts), method=method, batch_size=batch_size, **explain_options, **extra)

    logat, norms, nxl = run("logat"), run("norm"), run("normxlogit")
    classes = len(explain_options["label_words"]) if "label_words" in explain_options else model.config.num_labels
    other = None
    if classes == 2 and logat[0].target is not None:
        other = run("logat", target=[1 - int(a.target) for a in logat])
    rows = []
    for i, (a, n, x) in enumerate(zip(logat, norms, nxl)):
        keep = _content(a)
        la, no, nx_ = a.scores[keep], n.scores[keep], x.scores[keep]
        row = {"tokens": int(keep.sum()), "common_share": float(la.mean() ** 2 / np.mean(la ** 2)),
               "rho_norm_logat": _spearman(no, la), "rho_logat_normxlogit": _spearman(la, nx_)}
        if other is not None:
            contrast = la - other[i].scores[keep]
            row["common_share_contrast"] = float(contrast.mean() ** 2 / np.mean(contrast ** 2))
            row["rho_contrast_logat"] = _spearman(contrast, la)
        rows.append(row)
    return pd.DataFrame(rows)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)


def layer_faithfulness(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    layers: Sequence[int],
    *,
    labels: Sequence[int] | None = None,
    method: str = "normxlogit",
    replacement: str = "delete",
    cache: str | Path | None = None,
) -> dict[int, FaithfulnessResult]:
    """``{layer: result}``: ``method`` read at each of ``layers`` (the head on that layer's states, through the
    decoder's final norm), scored by deletion; cached like :func:`faithfulness_by_replacement`."""
    folder = Path(cache) if cache is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    encoded = encode(model, tokenizer, list(texts))
    base = [_VERSION, model_fingerprint(model), encoded.items, None if labels is None else list(map(float, labels))]
    out = {}
    for layer in layers:
        path = None if folder is None else folder / f"{method}-layer{layer}-{_key(base, method, layer, replacement)}.json"
        if path is not None and path.is_file():
            out[layer] = FaithfulnessResult.load(path)
            continue
        result = evaluate(model, tokenizer, encoded, method, labels=labels, replacement=replacement, layer=layer)
        result.meta["layer"] = layer
        if path is not None:
            result.save(path)
        out[layer] = result
    return out

