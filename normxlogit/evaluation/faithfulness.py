"""Faithfulness by perturbation: AOPC comprehensiveness and sufficiency, batched.

For every example the tokens are ranked by attribution score (largest first). At each ratio ``k``:

- **comprehensiveness** replaces the top ``c = int(k * n)`` ranked tokens; a faithful ranking makes the prediction
  collapse fast;
- **sufficiency** replaces every ranked token *after* the top ``c`` (keeps only the top ones); a faithful ranking keeps
  the prediction.

Measures, averaged over examples at each ratio, then over ``0 < k < 1`` (10%..90% with the default ratios; the paper's
AOPC):

- classification: confidence drop ``p(y | x) - p(y | x')`` of the class ``y`` the attributions explain (their
  ``target``: the predicted class ``y_hat`` by default; recorded as ``FaithfulnessResult.target``), and accuracy of
  the perturbed predictions against gold labels;
- causal LMs: the same, where ``y_hat`` is the token predicted at the last position (the most probable next token,
  or the most probable of the given ``label_words``, whose index is the class) and ``p`` its probability over the
  whole vocabulary there; the attributions explain ``y_hat`` unless given another ``target`` (then that token, or
  label word, is measured);
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
never round-tripped through text. ``replacement=None`` (the default) is ``"mask"`` for encoders and ``"delete"`` for
decoders (causal LMs, and classifiers that pool the last token), which have no mask token; an explicit ``"mask"``
there raises an error naming the alternatives. ``"delete"`` was chosen by measurement: SmolLM2-135M-Instruct,
zero-shot sentiment of the first 40 SST-2 validation sentences (the user's turn "Classify the sentiment of this
movie review as positive or negative.", a new line and "Review: <sentence>" in the chat template, then "Sentiment:";
label words " negative" / " positive"; 77.5% accurate), clean protocol. A replacement is useful when it separates an informative ranking from a random one, so
the table gives AOPC(method) - AOPC(random) for comprehensiveness (higher is better) and sufficiency (lower is
better), paired over examples (every 95% bootstrap interval excludes 0 except NormXLogit's sufficiency with unk):

    replacement               NormXLogit comp / suff    gradient norm comp / suff    random comp / suff (AOPC)
    delete                    +0.023 / -0.054           +0.037 / -0.083              0.141 / 0.138
    unk (<|endoftext|>)       +0.006 / -0.001           +0.007 / -0.008              0.179 / 0.178
    pad (<|im_end|>)          +0.018 / -0.041           +0.033 / -0.065              0.153 / 0.150
    attention                 +0.030 / -0.030           +0.052 / -0.087              0.129 / 0.131

An unk or pad token is itself a strong signal to a decoder: random rankings already destroy the prediction when they
keep most words (unk: sufficiency 0.178, close to the 0.186 of removing every word), so almost nothing is left to tell rankings
apart. ``"delete"`` and ``"attention"`` separate them about equally (summed gaps 0.196 and 0.199); ``"delete"`` is
the default because the model then reads ordinary, shorter text, while a token dropped from the attention mask still
reaches the output through its own residual stream when it is the position the model reads (the last token of a
causal LM, the pooled token of a decoder classifier), and holes in the mask are inputs decoders never saw in
training.

All perturbed inputs of all examples, ratios and both measures are collected first, identical ones are kept once
(``k = 0`` comprehensiveness and ``k = 1`` sufficiency are the original input; ``k = 1`` comprehensiveness and
``k = 0`` sufficiency are the same; short inputs repeat counts), and they run length-sorted in a few large forward
passes.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..core.attribution import Attribution
from ..core.explain import attribute
from ..core.inputs import Encoded, Texts, encode, model_device
from ..core.registry import get_method
from ..core.padding import lent_pad, padding_for, rows_padding
from ..core.heads import resolve_head
from ..models import Task, check_trained_head, detect_task
from .perturbation import (DEFAULT_RATIOS, KINDS, PROTOCOLS, LabelWords, Protocol, Replacement, classifier_outputs,
                           default_replacement, label_word_ids, lm_predictions, measured_targets, perturb,
                           ranked_positions, replaced_positions, replacement_id, top_count)
from .prompted import (Confidence, cached_lm_outputs, check_confidence, column_probabilities, lm_explain_options,
                       prompt_template)
from .results import FaithfulnessResult

MethodOrAttributions = Union[str, Sequence[Attribution]]

#: Default tokens per forward pass of :func:`evaluate`: on a CPU small batches keep the activations in cache (27%
#: faster than 8,192 on SST-2 with two AVX2 cores); an accelerator wants large ones.
BATCH_TOKENS = {"cpu": 2048, "accelerator": 16384}


def _task_of(model: PreTrainedModel, task: Task | None) -> Task:
    task = task or detect_task(model)
    if task not in ("classification", "regression", "causal-lm"):
        raise ValueError(
            f"evaluate() measures sequence classifiers and regressors, and causal LMs' next token (or label word); "
            f"this model is a {task} model. Load it with AutoModelForSequenceClassification (nx.load_model(name, "
            "task='classification')) or as a causal LM (task='causal-lm')."
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


def _attributions(model, tokenizer, encoded: Encoded, method_or_attributions, *, seed, batch_size, progress,
                  explain_options) -> tuple[list[Attribution], str, float]:
    if isinstance(method_or_attributions, str):
        start = time.perf_counter()
        attrs = attribute(model, tokenizer, encoded, method_or_attributions, seed=seed, batch_size=batch_size,
                          progress=progress, **explain_options)
        return attrs, method_or_attributions, time.perf_counter() - start
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
    texts: Texts | Encoded | None,
    method_or_attributions: MethodOrAttributions = "normxlogit",
    *,
    labels: Sequence[int] | Sequence[float] | None = None,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    replacement: Replacement | None = None,
    protocol: Protocol = "clean",
    batch_tokens: int | None = None,
    max_length: int | None = None,
    task: Task | None = None,
    label_words: LabelWords | None = None,
    template: str | None = None,
    confidence: Confidence | None = None,
    forward_cache: dict | None = None,
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
    ``unk`` | ``attention`` | ``delete``, or None: ``mask`` for encoders, ``delete`` for decoders (causal LMs and
    classifiers that pool the last token; see the module docstring); the result records the one used. Causal LMs
    (``task="causal-lm"``): the prediction is the token at the last position, either the most probable next token
    or, with ``label_words`` (words of one token each, e.g. ``[" negative", " positive"]``, or token ids), the most
    probable of them, whose index is then the class (``labels`` index ``label_words``); the confidence is its
    probability over the vocabulary (``confidence="vocabulary"``, the default) or over the label words
    (``"label_words"``), and the attributions explain it (through the label-word head, so ``contrast=True`` works).
    ``template``: a prompt with ``{}`` where each text goes (:mod:`normxlogit.evaluation.prompted`). ``forward_cache``:
    a dict shared between calls on one causal LM, so that inputs already run are not run again.
    ``protocol``: ``clean`` (special tokens never ranked; ``n`` = non-special tokens) or ``paper`` (the authors':
    only the first token excluded; ``n`` counts special tokens).
    ``batch_tokens``: tokens (padding included) per forward pass; default from :data:`BATCH_TOKENS` (2,048 on a CPU,
    16,384 on an accelerator). ``progress``: a bar over forward passes (default: on when there are more than 5,000
    perturbed inputs).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}.")
    check_trained_head(model, "evaluate")
    ratios = [float(r) for r in ratios]
    if not ratios or any(not 0 <= r <= 1 for r in ratios):
        raise ValueError(f"ratios must be fractions in [0, 1]; got {ratios}.")
    batch_tokens = _batch_tokens(model, batch_tokens)
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be at least 1, got {batch_tokens}.")
    task = _task_of(model, task)
    head = resolve_head(model, task)
    pads, lend = padding_for(model, tokenizer, head)
    chosen = default_replacement(task == "causal-lm" or head.pooling == "last") if replacement is None else replacement
    token_id = replacement_id(tokenizer, chosen)
    if label_words is not None and task != "causal-lm":
        raise ValueError(f"label_words are for causal LMs (the label word predicted next); this is a {task} model.")
    vocab = int(model.get_output_embeddings().weight.shape[0]) if task == "causal-lm" else 0
    label_ids = None if label_words is None else label_word_ids(tokenizer, label_words, vocab)
    scoring = check_confidence(task, confidence, label_ids)
    template = prompt_template(template, protocol, method_or_attributions)
    if texts is None:
        if isinstance(method_or_attributions, str):
            raise ValueError("texts=None only works with given attributions; pass the texts to explain.")
        texts = [a.text for a in method_or_attributions]
        if any(t is None for t in texts):
            raise ValueError("These attributions carry no text; pass texts= explicitly.")
    if isinstance(method_or_attributions, str):
        get_method(method_or_attributions)  # an unknown name fails before any work
    with warnings.catch_warnings():
        if not isinstance(method_or_attributions, str):
            warnings.simplefilter("ignore")  # the attributions' own explain call already warned about truncation
        encoded = encode(model, tokenizer, texts, max_length, template=template)
    items, rows = encoded.items, encoded.rows
    num_classes = int(model.config.num_labels) if task != "causal-lm" else len(label_ids or range(vocab))
    gold = _check_labels(labels, len(items), "classification" if task == "causal-lm" else task, num_classes)
    lm_prediction, options = None, explain_options
    if task == "causal-lm":  # the prediction first: the attributions explain it (the predicted label word)
        lm_prediction = lm_predictions(model, pads, rows, label_ids, batch_tokens)
        if isinstance(method_or_attributions, str):
            options = {**lm_explain_options(lm_prediction, label_words, label_ids), **explain_options}

    attrs, method, attribution_seconds = _attributions(
        model, tokenizer, encoded, method_or_attributions, seed=seed, batch_size=explain_batch_size,
        progress=bool(progress), explain_options=options)
    if len(attrs) != len(items):
        raise ValueError(f"Got {len(attrs)} attributions for {len(items)} texts: pass one per text.")
    start = time.perf_counter()
    for i, (row, attr) in enumerate(zip(rows, attrs)):
        if list(row["input_ids"]) != list(attr.input_ids):
            raise ValueError(
                f"Attribution {i} was computed for other tokens than text {i} tokenizes to (different text, tokenizer, "
                "template or max_length). Pass the texts (and template) the attributions were computed for, in the "
                "same order."
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
                where[kind][i, j] = index_of(perturb(base, positions, chosen, token_id, pads["input_ids"]))
    total = len(items) * (1 + 2 * len(ratios))
    target = measured_targets(attrs, task, num_classes, label_ids, tokenizer)

    # 2. Run them, longest first, in batches of about ``batch_tokens`` tokens.
    columns = None
    if task == "causal-lm":
        columns = label_ids or sorted({int(p) for p in lm_prediction} | {int(t) for t in target})
    if lend is not None:  # a lent pad id must occur in no perturbed input, or the model pools another token
        pads, lend = rows_padding(model, tokenizer, head, inputs, pads, lend, warn=False)
    with lent_pad(model, lend):
        if task == "causal-lm":
            picked, lse, top = cached_lm_outputs(model, pads, inputs, batch_tokens, columns, progress, forward_cache)
        else:
            logits = classifier_outputs(model, pads, inputs, batch_tokens, progress)

    # 3. Per-example outcomes.
    if task == "causal-lm":
        probs = column_probabilities(picked, lse, scoring)  # over the vocabulary, or over the label words
        classes = picked.argmax(-1) if label_ids else top
        original_prediction = lm_prediction
        column = target if label_ids else np.searchsorted(columns, target)
        original = probs[originals, column]
        outputs = {kind: probs[where[kind], column[:, None]] for kind in KINDS}
        predictions = {kind: classes[where[kind]] for kind in KINDS}
    elif task == "regression":
        values = logits[:, 0]
        original = values[originals]
        original_prediction = original.copy()
        outputs = {kind: values[where[kind]] for kind in KINDS}
        predictions: dict[str, np.ndarray] = {}
    else:
        probs = torch.softmax(torch.from_numpy(logits), -1).numpy()
        classes = logits.argmax(-1)
        original_prediction = classes[originals]
        original = probs[originals, target]
        outputs = {kind: probs[where[kind], target[:, None]] for kind in KINDS}
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
    if replacement is None:
        meta["replacement_default"] = True  # chosen by evaluate() for this kind of model
    if task == "causal-lm":  # scored as a classification over label words, or over the vocabulary (next token)
        meta["task"] = "causal-lm"
        meta["label_words"] = None if label_ids is None else tokenizer.convert_ids_to_tokens(label_ids)
        meta["confidence"] = scoring
    if template is not None:
        meta["template"] = template
    if explain_options:
        meta["explain_options"] = {k: v for k, v in explain_options.items() if isinstance(v, (int, float, str, bool))}
    return FaithfulnessResult(method, "classification" if task == "causal-lm" else task, protocol, chosen, ratios,
                              outputs, predictions, original, original_prediction, gold, n_ranked, meta, target)


def _batch_tokens(model: PreTrainedModel, batch_tokens: int | None) -> int:
    if batch_tokens is not None:
        return batch_tokens
    return BATCH_TOKENS["cpu" if model_device(model).type == "cpu" else "accelerator"]


def model_fingerprint(model: PreTrainedModel) -> str:
    """A short hash of the model's configuration and (a strided sample of) its weights."""
    digest = hashlib.sha256(model.config.to_json_string().encode())
    with torch.no_grad():
        for p in model.parameters():
            flat = p.detach().flatten()
            digest.update(flat[:: max(1, flat.numel() // 512)].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _code_version(method: str) -> str:
    """A hash of the code a cached result depends on: this module, the perturbations', the method's module and the
    label-word head's."""
    prompted = sys.modules[lm_explain_options.__module__]
    module = sys.modules[get_method(method).fn.__module__]
    sources = [Path(__file__).read_bytes(), inspect.getsource(sys.modules[perturb.__module__]).encode(),
               inspect.getsource(module).encode(), inspect.getsource(prompted).encode()]
    return hashlib.sha256(b"".join(sources)).hexdigest()[:16]


def _load_cached(path: Path | None) -> FaithfulnessResult | None:
    """A cached result, or None when there is none or the file is unreadable (then it is recomputed)."""
    if path is None or not path.is_file():
        return None
    try:
        return FaithfulnessResult.load(path)
    except (ValueError, KeyError, TypeError) as err:
        warnings.warn(f"Ignoring an unreadable cached result {path} ({err}); recomputing it.", stacklevel=3)
        return None


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
    method_options = method_options or {}
    unknown = set(method_options) - set(methods)
    if unknown:
        raise ValueError(f"method_options for methods not evaluated: {', '.join(sorted(unknown))}.")
    encoded = encode(model, tokenizer, texts, max_length, template=evaluate_options.get("template"))
    items = encoded.items
    targets: dict[str, Any] = {}
    if _task_of(model, evaluate_options.get("task")) == "causal-lm":  # attributions explain the prediction
        words = evaluate_options.get("label_words")
        label_ids = None if words is None else label_word_ids(
            tokenizer, words, int(model.get_output_embeddings().weight.shape[0]))
        pads, _ = padding_for(model, tokenizer, resolve_head(model, "causal-lm"))
        predictions = lm_predictions(model, pads, encoded.rows, label_ids,
                                     _batch_tokens(model, evaluate_options.get("batch_tokens")))
        targets.update(lm_explain_options(predictions, words, label_ids))
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
            cached = _load_cached(path)
            if cached is not None:
                results.append(cached)
                continue
            if attrs is None:
                start = time.perf_counter()
                attrs = attribute(model, tokenizer, encoded, method, seed=seed, batch_size=explain_batch_size,
                                  progress=progress, **{**targets, **options})
                attribution_seconds = round(time.perf_counter() - start, 3)
            result = evaluate(model, tokenizer, encoded, attrs, labels=labels, protocol=protocol, seed=seed,
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
