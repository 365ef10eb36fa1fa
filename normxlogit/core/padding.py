"""Padding decoder classifiers so that each text is pooled where the model pools it alone.

transformers' decoder classifiers (GPT-2, Llama, ...) pool the last token that is not ``config.pad_token_id`` (the
last position when the config has none, which then allows no batch). :func:`padding_for`
chooses the pad values and a pad id to lend the config for the forward pass; :func:`rows_padding` makes the lent id
one that occurs in none of the rows (so that it never hides a real token, e.g. a final EOS) and warns where the
model's own pad id ends a text (then the model itself pools an earlier token).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .heads import Head


def pad_configs(model: PreTrainedModel) -> list:
    """The configs whose ``pad_token_id`` a decoder classifier pools with: its own, and the text config a multimodal
    model's classifier reads (Gemma 3 pools with ``config.text_config.pad_token_id``)."""
    configs = [model.config]
    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return configs if text is model.config else configs + [text]


def pooled_pad_id(model: PreTrainedModel) -> int | None:
    """The pad id transformers' decoder classifiers skip when they pool the last token (None: they pool the last
    position)."""
    return next((c.pad_token_id for c in reversed(pad_configs(model)) if getattr(c, "pad_token_id", None)
                 is not None), None)


def unused_id(rows: Sequence[Mapping], preferred: Sequence[int | None], size: int, avoid: Sequence[int] = ()) -> int:
    """A token id that occurs in none of ``rows`` (nor in ``avoid``): the first such id of ``preferred``, else the
    largest such id below ``size``."""
    used = set(avoid)
    if rows:
        used.update(np.unique(np.concatenate([np.asarray(r["input_ids"], dtype=np.int64).ravel() for r in rows]))
                    .tolist())
    for candidate in preferred:
        if candidate is not None and 0 <= int(candidate) < size and int(candidate) not in used:
            return int(candidate)
    candidate = size - 1
    while candidate in used:
        candidate -= 1
    if candidate < 0:
        raise ValueError("Every token id of the vocabulary occurs in these texts, so none is left to pad with.")
    return candidate


def rows_padding(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    head: Head,
    rows: Sequence[Mapping],
    pads: dict[str, int],
    lend: int | None,
    *,
    avoid: Sequence[int] = (),
    warn: bool = True,
) -> tuple[dict[str, int], int | None]:
    """The padding ``(pads, lend)`` of :func:`padding_for`, made safe for these ``rows``:
    every row is then read at the position the model pools when it is called on that row alone, whatever the batch.

    A decoder classifier without a pad id of its own pools the last position when called on one text; in a batch it
    pools the last token that is not the lent pad id. So the lent id is one that occurs in none of ``rows`` (nor in
    ``avoid``, e.g. a replacement token): the tokenizer's pad (else EOS) id when it is free, else another unused id
    (its value is irrelevant under the attention mask except to that pooling). Where the model's own pad id ends a
    text, the model pools an earlier token (alone and in batches alike): ``warn`` says which, and how to change it.
    """
    if lend is not None:
        size = model.get_input_embeddings().num_embeddings if _has_embedding_table(model) else lend + 1
        specials = [getattr(tokenizer, name, None) for name in ("pad_token_id", "eos_token_id", "unk_token_id",
                                                                 "bos_token_id")]
        free = unused_id(rows, [lend, *specials, *getattr(tokenizer, "all_special_ids", [])], size, avoid)
        return {**pads, "input_ids": free}, free
    if warn:
        warn_pad_ends_text(model, tokenizer, head, rows)
    return pads, lend


def _has_embedding_table(model: PreTrainedModel) -> bool:
    try:
        return isinstance(getattr(model.get_input_embeddings(), "num_embeddings", None), int)
    except NotImplementedError:
        return False


def warn_pad_ends_text(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, head: Head,
                       rows: Sequence[Mapping]) -> None:
    """Warn when a decoder classifier's own ``config.pad_token_id`` is the token that ends some of ``rows``: the
    model then pools an earlier token (the last one that is not the pad id), on the text alone as in a batch."""
    pad = pooled_pad_id(model)
    pools_last = head.task in ("classification", "regression") and head.pooling == "last" and head.position is None
    if not pools_last or pad is None:
        return
    ending = [i for i, r in enumerate(rows) if len(r["input_ids"]) and int(r["input_ids"][-1]) == pad]
    if not ending:
        return
    ids = [int(t) for t in rows[ending[0]]["input_ids"]]
    pooled = max((j for j, t in enumerate(ids) if t != pad), default=0)
    name = (lambda t: tokenizer.convert_ids_to_tokens(t)) if tokenizer is not None else str
    free = unused_id(rows, [], model.get_input_embeddings().num_embeddings if _has_embedding_table(model) else pad + 1)
    warnings.warn(
        f"{len(ending)} text(s) end with {name(pad)!r} (id {pad}), which is this {type(model).__name__}'s own "
        f"config.pad_token_id: transformers pools the last token that is not the pad id, so for text {ending[0]} the "
        f"model reads position {pooled} ({name(ids[pooled])!r}), not the final {name(pad)!r} at position "
        f"{len(ids) - 1}, on the text alone as in a batch. normxlogit explains position {pooled}, what the model "
        f"does. To have it read the final token, set model.config.pad_token_id to an id that occurs in no text (e.g. "
        f"{free}) and tokenizer.pad_token_id to the same, or tokenize without the trailing {name(pad)!r}.",
        stacklevel=3,
    )


def padding_for(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, head: Head
) -> tuple[dict[str, int], int | None]:
    """The values to pad a batch with, and a pad id to lend the model's config during the forward (or None).

    Nothing of the caller's is changed. Decoder classifiers pool the last token that is not ``config.pad_token_id``,
    so batches are padded with that id; where the config has none, the tokenizer's pad (else EOS) id is lent to it
    for the forward pass only. A tokenizer whose pad id differs from the config's gets a warning saying how to make
    them agree.
    """
    config_pad = pooled_pad_id(model)
    tok_pad = getattr(tokenizer, "pad_token_id", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
        eos = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
    pools_last = head.task in ("classification", "regression") and head.pooling == "last" and head.position is None
    if pools_last and config_pad is not None:
        if tok_pad is not None and tok_pad != config_pad:
            warnings.warn(
                f"The tokenizer pads with id {tok_pad}, but this {type(model).__name__} pools the last token that is "
                f"not its config.pad_token_id={config_pad}; normxlogit pads with {config_pad}, as the model expects. "
                "Set tokenizer.pad_token_id = model.config.pad_token_id (or the reverse) to make them agree.",
                stacklevel=4,
            )
        pad = config_pad
    else:
        pad = next((p for p in (tok_pad, config_pad, eos) if p is not None), None)
    if pad is None:
        raise ValueError("Neither the tokenizer nor the model config has a pad or EOS token to pad batches with; set "
                         "tokenizer.pad_token first (e.g. tokenizer.pad_token = tokenizer.eos_token).")
    type_pad = getattr(tokenizer, "pad_token_type_id", 0) if tokenizer is not None else 0
    return {"input_ids": int(pad), "token_type_ids": type_pad}, (int(pad) if pools_last and config_pad is None else None)


@contextlib.contextmanager
def lent_pad(model: PreTrainedModel, pad_id: int | None) -> Iterator[None]:
    """Lend ``config.pad_token_id`` for the block (decoder classifiers need one to batch), then restore it."""
    if pad_id is None:
        yield
        return
    configs = pad_configs(model)
    before = [c.pad_token_id for c in configs]
    for c in configs:
        c.pad_token_id = pad_id
    try:
        yield
    finally:
        for c, value in zip(configs, before):
            c.pad_token_id = value
