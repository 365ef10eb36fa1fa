"""``explain``: validate input, tokenise, batch by length, one forward pass per batch, run a method, unbatch.

:func:`iter_batches` is the forward pass every model-reading part of the package shares: it turns encoded texts into
:class:`~normxlogit.core.registry.Batch` objects (one forward pass with hidden states each). :func:`attribute` runs a
registered method over them; :func:`explain` is validation + :func:`~normxlogit.core.inputs.encode` + ``attribute``.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Iterator, Sequence
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..models import Task, check_trained_head
from .attribution import Attribution
from .compat import check_batch_invariance, check_token_aligned, head_read_errors, length_errors, probe_alone
from .heads import Head, UnsupportedModelError, check_head, head_spec, id_logits, pooled_positions, resolve_head
from .padding import lent_pad, padding_for, pooled_pad_id, rows_padding
from .inputs import Encoded, TextInput, Texts, encode, eval_mode, model_device, model_inputs, padded_batches
from .label_words import LabelWordHead, LabelWords, label_word_head
from .registry import NORM_SOURCES, Batch, get_method

LM_TASKS = ("masked-lm", "causal-lm")


def resolve_layer(layer: int, num_layers: int) -> int:
    """``layer`` as an index 0..L (negative counts from the end); a clear error when out of range."""
    if not -(num_layers + 1) <= layer <= num_layers:
        raise ValueError(
            f"layer={layer} is out of range: this model has layers 0..{num_layers} (0 = embeddings, -1 = last)."
        )
    return layer % (num_layers + 1)


def num_layers_of(model: PreTrainedModel) -> int:
    """The number of transformer layers of ``model`` (from its config; a multimodal config's text part)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    raise UnsupportedModelError(f"Cannot tell how many layers a {type(model).__name__} has: its config has none of "
                                "num_hidden_layers, n_layer, num_layers, n_layers (a model outside the head table).")


# --- the forward pass shared by all methods ----------------------------------------------------------------------
def _explained_positions(head: Head, inputs: dict[str, Tensor], tokenizer: PreTrainedTokenizerBase | None,
                         model: PreTrainedModel) -> Tensor:
    """Which position each row explains: the pooled token (as the model pools it), the first [MASK] (masked LM),
    the last token (causal LM), or the fixed position of ``pooling=``."""
    mask = inputs["attention_mask"]
    if head.task == "masked-lm":
        mask_id = getattr(tokenizer, "mask_token_id", None)
        if mask_id is None:
            raise ValueError("This tokenizer has no mask token, so a masked-LM explanation has no position to explain.")
        is_mask = inputs["input_ids"] == mask_id
        missing = (~is_mask.any(-1)).nonzero().flatten().tolist()
        if missing:
            raise ValueError(
                f"Masked-LM explanations explain the {tokenizer.mask_token} position, but {len(missing)} text(s) "
                f"have no {tokenizer.mask_token} token. Put {tokenizer.mask_token} where the word to predict goes."
            )
        return is_mask.float().argmax(-1)
    if head.task == "causal-lm" or isinstance(head, LabelWordHead):  # the next token (label word) after the last
        return pooled_positions(mask, "last")
    if head.position is not None:
        lengths = mask.long().sum(-1)
        position = head.position if head.position >= 0 else None
        if position is None or bool((lengths <= position).any()):
            raise ValueError(f"pooling={head.position} is outside a text of {int(lengths.min())} tokens; pass a "
                             "position (0-based, non-negative) that every text has.")
        return torch.full_like(lengths, position)
    return pooled_positions(mask, head.pooling, inputs["input_ids"], pooled_pad_id(model))


def forward_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    head: Head,
    inputs: dict[str, Tensor],
    special: Tensor | None,
    *,
    target: Sequence[int] | None,
    layer: int,
    norm_source: str,
    indices: list[int],
    seed: int,
    positions: Tensor | None = None,
) -> Batch:
    """Run the model once with hidden states and build the :class:`Batch` every method reads.

    ``positions``: the explained position of each row, when the caller knows it (default: the pooled token, the
    first mask token, or the last token).
    """
    inputs = model_inputs(model, inputs)
    if positions is None:
        positions = _explained_positions(head, inputs, tokenizer, model)
    with torch.no_grad(), length_errors(model, inputs):
        out, logits = _forward_at(model, head, inputs, positions)
    check_token_aligned(model, out.hidden_states, inputs["input_ids"])
    if head_spec(model) is None and (len(positions) > 1 or not bool(inputs["attention_mask"].all())):
        # a family outside the table (not tested for it): its first text must give the same output alone
        alone = probe_alone(model, inputs, lambda row: _forward_at(model, head, row, positions[:1])[1])
        check_batch_invariance(model, alone, logits[:1], *inputs["input_ids"].shape)
    num_classes = logits.shape[-1]
    if head.task == "regression":
        predictions = logits[:, 0].float()
        targets = torch.zeros(len(positions), dtype=torch.long, device=logits.device)
    else:
        predictions = logits.argmax(-1)
        if target is None:
            targets = predictions
        else:
            targets = torch.tensor(list(target), dtype=torch.long, device=logits.device)
            bad = [int(t) for t in targets if not 0 <= int(t) < num_classes]
            if bad:
                what = "token ids" if head.task.endswith("lm") else "classes"
                raise ValueError(f"target {bad[0]} is out of range: this model has {num_classes} {what} (0..{num_classes - 1}).")
    if head.check:
        with head_read_errors(model, head.source, out.hidden_states[-1]):
            self_check(model, head, out.hidden_states[-1], positions, logits, targets)
    return Batch(model, tokenizer, head, head.task, inputs, special, out.hidden_states, logits, positions, targets,
                 predictions, layer, norm_source, indices, seed)


def self_check(model: PreTrainedModel, head: Head, last_hidden: Tensor, positions: Tensor, logits: Tensor,
               targets: Tensor) -> None:
    """The head read on the final hidden state at the explained positions must give the model's own logits
    (all classes of a sequence head; the target token of an LM): :func:`~normxlogit.core.heads.check_head`."""
    with torch.no_grad():
        rows = torch.arange(len(positions), device=last_hidden.device)
        at = last_hidden[rows, positions.to(last_hidden.device)]
        if head.task in LM_TASKS:
            ids = targets.view(-1, 1).to(at.device)
            read = id_logits(head, at[:, None], ids, intermediate=False)[:, 0]
            own = logits.float().gather(-1, targets.view(-1, 1).to(logits.device))
        else:
            read, own = head(at).float(), logits.float()
    check_head(head, own, read, dtype=next(model.parameters()).dtype)


def _forward_at(model: PreTrainedModel, head: Head, inputs: dict[str, Tensor], positions: Tensor):
    """The forward pass with hidden states, and the model's own output at the explained positions (B, C).

    For LMs the full-vocabulary product at every position is skipped: a pre-hook on the output embedding hands it
    only the explained positions, so the logits still come from the model's own forward code (soft-capping and
    scaling included) at a fraction of the cost.
    """
    label_words = isinstance(head, LabelWordHead)
    decoder = model.get_output_embeddings() if head.task in LM_TASKS or label_words else None
    rows = torch.arange(len(positions), device=positions.device)
    sliced = False

    def pick(module, args):
        nonlocal sliced
        x = args[0]
        if x.dim() == 3 and x.shape[0] == len(positions) and x.shape[1] == inputs["input_ids"].shape[1]:
            sliced = True
            return (x[rows.to(x.device), positions.to(x.device)].unsqueeze(1),) + tuple(args[1:])
        return None

    handle = decoder.register_forward_pre_hook(pick) if isinstance(decoder, nn.Linear) else None
    extra = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
    try:
        out = model(**inputs, output_hidden_states=True, **extra)  # no KV cache: nothing is generated
    finally:
        if handle is not None:
            handle.remove()
    logits = out.logits
    if logits.dim() == 3:  # LMs: the output at the explained position
        logits = logits[:, 0] if sliced else logits[rows.to(logits.device), positions.to(logits.device)]
    if label_words:  # the model's own logits of the label words: the prompted classifier's output (B, C)
        logits = logits[:, torch.as_tensor(head.label_ids, device=logits.device)]
    return out, logits


def iter_batches(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    encoded: Encoded | Sequence[dict],
    head: Head,
    *,
    batch_size: int = 32,
    targets: Sequence[int] | None = None,
    layer: int = -1,
    norm_source: str = "embedding_output",
    seed: int = 0,
    progress: bool = False,
    desc: str = "explain",
    first_index: int = 0,
) -> Iterator[Batch]:
    """One :class:`Batch` per length-sorted batch of ``encoded`` rows (one forward pass each, in eval mode).

    ``targets``: one explained class / token id per row (None: the predictions). ``layer`` is an index 0..L.
    ``first_index``: the index of the first row in the caller's whole dataset (``Batch.indices`` are
    ``first_index + row``), so that seeded methods give the same scores for a slice as for the whole.
    """
    rows = encoded.rows if isinstance(encoded, Encoded) else list(encoded)
    device = model_device(model)
    pads, lend = rows_padding(model, tokenizer, head, rows, *padding_for(model, tokenizer, head))
    with eval_mode(model), lent_pad(model, lend):
        for idx, inputs, special in padded_batches(pads, rows, device, batch_size=batch_size,
                                                   progress=progress, desc=desc):
            yield forward_batch(
                model, tokenizer, head, inputs, special,
                target=None if targets is None else [targets[i] for i in idx],
                layer=layer, norm_source=norm_source, indices=[first_index + i for i in idx], seed=seed,
            )


def whole_number(value, name: str) -> int:
    """``value`` as an int when it is a whole number (int, numpy or 0-d torch integer); a clear error otherwise
    (floats, bools, strings and None are refused rather than silently converted)."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, Tensor) and value.dtype == torch.bool):
        raise TypeError(f"{name} must be an int, not a bool ({value!r}).")
    if isinstance(value, Tensor):
        if value.dim() != 0 or value.is_floating_point():
            raise TypeError(f"{name} must be an int; got a tensor of shape {tuple(value.shape)} and dtype "
                            f"{value.dtype}. Pass int(...) of it.")
        return int(value)
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, not {type(value).__name__} ({value!r}).") from None


def _targets_per_text(target, n: int, task: Task) -> list[int] | None:
    if target is None:
        return None
    if task == "regression":
        if isinstance(target, (list, tuple)) and all(isinstance(t, int) and t == 0 for t in target):
            return None
        if not (isinstance(target, int) and not isinstance(target, bool) and target == 0):
            raise ValueError("A regression model has one output: leave target=None (or 0).")
        return None
    if isinstance(target, (str, bytes, dict)):
        raise TypeError(f"target must be an int or a list of ints (class indices or token ids), not {target!r}.")
    if not isinstance(target, (list, tuple, np.ndarray)) and not (isinstance(target, Tensor) and target.dim() == 1):
        return [whole_number(target, "target")] * n
    targets = [whole_number(t, "target") for t in target]
    if len(targets) != n:
        raise ValueError(f"Got {len(targets)} targets for {n} texts: pass one int, or one per text.")
    return targets


def _label(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: Task, value: int,
           head: Head | None = None) -> str | int:
    if isinstance(head, LabelWordHead):
        return head.label_words[int(value)]
    if task.endswith("lm"):
        return tokenizer.convert_ids_to_tokens(int(value))
    id2label = getattr(model.config, "id2label", None) or {}
    return id2label.get(int(value), int(value))


def attribute(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    encoded: Encoded,
    method: str = "normxlogit",
    *,
    target: int | Sequence[int] | None = None,
    layer: int = -1,
    norm_source: str = "embedding_output",
    batch_size: int = 32,
    head: Callable[[Tensor], Tensor] | Head | None = None,
    task: Task | None = None,
    pooling: str | int | None = None,
    check_head: bool = True,
    seed: int = 0,
    progress: bool = False,
    first_index: int = 0,
    label_words: LabelWords | None = None,
    **options,
) -> list[Attribution]:
    """:func:`explain` for texts already :func:`~normxlogit.core.inputs.encode`-d: one :class:`Attribution` each.

    ``first_index``: the index of the first text in the caller's whole dataset, for seeded methods (see
    :func:`iter_batches`). ``label_words``: read a causal LM through its :class:`LabelWordHead`.
    """
    spec = get_method(method)
    check_trained_head(model, "explain")
    if norm_source not in NORM_SOURCES:
        raise ValueError(f"norm_source must be one of {', '.join(NORM_SOURCES)}, not {norm_source!r}.")
    batch_size = whole_number(batch_size, "batch_size")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    resolved = head if isinstance(head, Head) else resolve_head(model, task, head, pooling=pooling, check=check_head)
    if label_words is not None:
        resolved = label_word_head(resolved, tokenizer, label_words)
    layer_index = resolve_layer(whole_number(layer, "layer"), num_layers_of(model))
    targets = _targets_per_text(target, len(encoded), resolved.task)
    results: list[Attribution | None] = [None] * len(encoded)
    for batch in iter_batches(model, tokenizer, encoded, resolved, batch_size=batch_size, targets=targets,
                              layer=layer_index, norm_source=norm_source, seed=seed, progress=progress,
                              desc=f"explain ({method})", first_index=first_index):
        with torch.enable_grad() if spec.needs_grad else torch.no_grad():
            scores = spec.fn(batch, **options).detach().float().cpu().numpy()
        for j, i in enumerate(index - first_index for index in batch.indices):
            results[i] = _attribution(batch, j, scores[j], encoded.items[i], encoded.rows[i], method, spec.layerwise)
            if encoded.template is not None:
                results[i].meta["template"] = encoded.template
    return [r for r in results if r is not None]


def explain(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Texts,
    method: str = "normxlogit",
    *,
    target: int | Sequence[int] | None = None,
    layer: int = -1,
    norm_source: str = "embedding_output",
    batch_size: int = 32,
    max_length: int | None = None,
    head: Callable[[Tensor], Tensor] | None = None,
    pooling: str | int | None = None,
    task: Task | None = None,
    check_head: bool = True,
    seed: int = 0,
    progress: bool = False,
    template: str | None = None,
    label_words: LabelWords | None = None,
    **options,
) -> Attribution | list[Attribution]:
    """Attribute the model's output to the input tokens.

    ``texts``: a string, a list of strings, or a list of (text, text) pairs; returns one :class:`Attribution` per
    text (a single one for a single input). ``target=None`` explains the predicted class (or, for an LM, the
    predicted token at the explained position: the first mask token for masked LMs, the last token for causal LMs);
    an int or a list of ints explains those classes / token ids. ``layer`` reads the head on that layer's hidden
    states (``-1`` = last, ``0..L``). ``norm_source``: ``embedding_output`` (the authors' ``hidden_states[0]``),
    ``word_embedding`` (the raw embedding row) or ``layer`` (``||h^layer||``, the each-layer variant). ``head``: a
    callable ``(N, hidden) -> (N, classes)`` for architectures the head table does not know, with ``pooling``
    saying where it reads (``"first"``, ``"last"`` or a position), e.g.
    ``nx.explain(model, tok, texts, head=lambda h: model.logits_proj(model.sequence_summary.summary(h)),
    pooling="last")``. Extra keyword ``options`` go to the method (e.g. ``n_steps`` for integrated gradients;
    ``contrast=True`` for ``logat`` and ``normxlogit``: the target's log-odds against the other classes).

    A prompted causal LM as a classifier: ``template`` puts each text into a prompt (``{}`` where the text goes, two
    for pairs; only the inserted text's tokens are ranked, the template's are treated like special tokens) and
    ``label_words`` (one token each, e.g. ``[" negative", " positive"]``) make the label-word head
    (:class:`~normxlogit.core.label_words.LabelWordHead`): the prediction is the most probable label word at the last
    position, its index the class (``target`` indexes ``label_words``), and LogAt of a token is that word's logit
    read on the token's final state. E.g. ``nx.explain(model, tok, reviews, template="Review: {}\nSentiment
    (positive or negative):", label_words=[" negative", " positive"], contrast=True)``.

    Every call checks itself: at the explained position the head read on the final hidden state must give the
    model's own output logits (1e-4 relative in float32), else a :class:`~normxlogit.core.heads.HeadMismatchError`
    says what to do and no scores are returned. ``check_head=False`` turns the check off. The caller's tokenizer
    and model config are left as they were.
    """
    get_method(method)  # unknown names fail before any tokenisation
    check_trained_head(model, "explain")
    if norm_source not in NORM_SOURCES:
        raise ValueError(f"norm_source must be one of {', '.join(NORM_SOURCES)}, not {norm_source!r}.")
    resolve_layer(whole_number(layer, "layer"), num_layers_of(model))
    resolved = resolve_head(model, task, head, pooling=pooling, check=check_head)
    if label_words is not None:
        resolved = label_word_head(resolved, tokenizer, label_words)
    encoded = encode(model, tokenizer, texts, max_length, template=template)
    out = attribute(model, tokenizer, encoded, method, target=target, layer=layer, norm_source=norm_source,
                    batch_size=batch_size, head=resolved, seed=seed, progress=progress, **options)
    return out[0] if encoded.single else out


def _attribution(batch: Batch, j: int, scores: np.ndarray, text: TextInput, row: dict, method: str,
                 layerwise: bool) -> Attribution:
    n = len(row["input_ids"])
    task = batch.task
    prediction = float(batch.predictions[j]) if task == "regression" else int(batch.predictions[j])
    target = None if task == "regression" else int(batch.targets[j])
    meta = {"task": task}
    if task != "regression":
        meta["target_label"] = _label(batch.model, batch.tokenizer, task, target, batch.head)
        meta["prediction_label"] = _label(batch.model, batch.tokenizer, task, prediction, batch.head)
        if isinstance(batch.head, LabelWordHead):
            meta["label_words"] = list(batch.head.label_words)
        meta["target_logit"] = float(batch.logits[j, target])
    else:
        meta["prediction_label"] = round(prediction, 4)
    if method in ("normxlogit", "norm"):
        meta["norm_source"] = batch.norm_source
    return Attribution(
        tokens=batch.tokenizer.convert_ids_to_tokens(row["input_ids"]),
        input_ids=list(row["input_ids"]),
        scores=scores[:n],
        special_tokens_mask=list(row["special_tokens_mask"]),
        target=target,
        prediction=prediction,
        method=method,
        layer=batch.layer if layerwise else None,
        text=text,
        position=int(batch.positions[j]),
        meta=meta,
    )
