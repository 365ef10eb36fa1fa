"""From texts to padded model inputs: validation, tokenisation, length batching, collation, eval mode.

Every part of the package that runs a model over texts goes through this module: ``explain`` and the layer
read-outs, occlusion, the faithfulness engine and evidence alignment. :func:`encode` validates and tokenises once
per call; :func:`padded_batches` is the one batch iterator (length-sorted batches of a fixed number of rows or of
about a number of tokens, right-padded, on the model's device); :func:`eval_mode` runs a block with dropout off and
restores the caller's mode.
"""

from __future__ import annotations

import contextlib
import inspect
import unicodedata
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .heads import position_offset
from .label_words import template_rows

TextInput = Union[str, tuple[str, str]]
Texts = Union[TextInput, Sequence[TextInput]]
#: One tokenised example: ``input_ids``, ``attention_mask`` (and ``token_type_ids``, ``special_tokens_mask``...).
Row = Mapping[str, Any]


# --- input checks ------------------------------------------------------------------------------------------------
def normalise_texts(texts: Texts) -> tuple[list[TextInput], bool]:
    """A list of texts or (text, text) pairs, and whether a single input was given. Empty text is an error."""
    if isinstance(texts, (Mapping, bytes, set)) or not hasattr(texts, "__iter__"):  # None and numbers too
        raise TypeError(f"texts must be a string, a list of strings or a list of (text, text) pairs, not "
                        f"{type(texts).__name__}" + (" (a dict's keys are not texts: pass list(d.values()) or "
                                                     "the column you mean)" if isinstance(texts, Mapping) else "")
                        + ".")
    single = isinstance(texts, str) or (
        isinstance(texts, tuple) and len(texts) == 2 and all(isinstance(t, str) for t in texts)
    )
    items = [texts] if single else list(texts)  # type: ignore[list-item]
    if not items:
        raise ValueError("No texts given: pass a string, a list of strings, or a list of (text, text) pairs.")
    out: list[TextInput] = []
    for i, item in enumerate(items):
        if isinstance(item, list) and len(item) == 2:
            item = tuple(item)
        parts = (item,) if isinstance(item, str) else item
        if not isinstance(parts, tuple) or len(parts) not in (1, 2) or not all(isinstance(p, str) for p in parts):
            raise TypeError(f"Text {i} is a {type(item).__name__}; expected a string or a (text, text) pair.")
        if any(not _visible(p) for p in parts):
            raise ValueError(f"Text {i} is empty, or holds only whitespace, control or zero-width characters; there "
                             "is nothing to explain. Remove it.")
        out.append(item)
    return out, single


def _visible(text: str) -> bool:
    """Whether ``text`` has a character that is neither whitespace, a control nor a format (zero-width) character."""
    return any(not ch.isspace() and unicodedata.category(ch)[0] != "C" for ch in text)


def model_max_length(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    """The longest input the model accepts: the tokenizer's limit, capped by the position embeddings."""
    limits = [tokenizer.model_max_length] if tokenizer.model_max_length < 1_000_000 else []
    positions = getattr(model.config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:  # XLNet's -1 means "no limit"
        limits.append(positions - position_offset(model))
    longest = getattr(model.config, "max_seq_len", None)  # MPT: its ALiBi bias is built for this many positions
    if isinstance(longest, int) and longest > 0:
        limits.append(longest)
    return min(limits) if limits else 512


def tokenize(
    tokenizer: PreTrainedTokenizerBase, texts: list[TextInput], max_length: int
) -> list[dict[str, list[int]]]:
    """Tokenise with special tokens; warn (once, naming how many) when texts are truncated to ``max_length``."""
    firsts = [t if isinstance(t, str) else t[0] for t in texts]
    seconds = None if all(isinstance(t, str) for t in texts) else [None if isinstance(t, str) else t[1] for t in texts]
    if seconds is not None and any(s is None for s in seconds):
        raise ValueError("Mix of single texts and (text, text) pairs: pass one kind per call.")
    kwargs = dict(truncation=True, max_length=max_length, return_special_tokens_mask=True)
    enc = tokenizer(firsts, seconds, **kwargs) if seconds is not None else tokenizer(firsts, **kwargs)
    rows = [{k: enc[k][i] for k in enc.keys()} for i in range(len(texts))]
    # A special token typed into the text ("[CLS]", "</s>") is tokenised as that token but marked as content;
    # mark it special too, so that no ranking treats it as a word (the mask token stays: it is what MLMs explain).
    specials = set(tokenizer.all_special_ids) - {tokenizer.mask_token_id}
    for row in rows:
        row["special_tokens_mask"] = [int(m or i in specials) for i, m in zip(row["input_ids"],
                                                                              row["special_tokens_mask"])]
    # Only rows that reach the limit can have been cut: check those without truncation.
    full = [i for i, r in enumerate(rows) if len(r["input_ids"]) >= max_length]
    if full:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lengths = [len(ids) for ids in tokenizer(
                [firsts[i] for i in full], [seconds[i] for i in full] if seconds else None,
                truncation=False, verbose=False)["input_ids"]]
        cut = [i for i, n in zip(full, lengths) if n > max_length]
        if cut:
            warnings.warn(
                f"{len(cut)} text(s) longer than {max_length} tokens were truncated to {max_length} (e.g. text {cut[0]}); "
                "scores cover only the kept tokens. Split long texts, or pass max_length= up to the model's limit.",
                stacklevel=4,
            )
    return rows


@dataclass
class Encoded:
    """Validated, tokenised texts: what :func:`encode` returns and every model-running function consumes."""

    items: list[TextInput]
    rows: list[dict[str, list[int]]]
    single: bool
    max_length: int
    template: str | None = None  # the prompt template the items were put into (None: the items are the inputs)

    def __len__(self) -> int:
        return len(self.rows)


def encode(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Texts | Encoded, max_length: int | None = None,
    template: str | None = None,
) -> Encoded:
    """Validate ``texts`` and tokenise them once, up to ``max_length`` (default and upper bound: the model's limit).

    ``template``: a prompt with ``{}`` where each text goes (two for pairs); the template's tokens are marked special
    (never ranked or perturbed), see :func:`~normxlogit.core.label_words.template_rows`. Already encoded texts are
    returned as they are, so that callers can pass them down without tokenising twice.
    """
    if isinstance(texts, Encoded):
        if template is not None and template != texts.template:
            raise ValueError("These texts were encoded with another template; encode them again with this one.")
        return texts
    items, single = normalise_texts(texts)
    limit = model_max_length(model, tokenizer)
    if max_length is not None:
        if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)):
            raise TypeError(f"max_length must be an int (tokens), not {type(max_length).__name__} ({max_length!r}).")
        if not 1 < max_length <= limit:
            raise ValueError(f"max_length must be between 2 and the model's limit {limit}, got {max_length}.")
    length = int(max_length or limit)
    rows = tokenize(tokenizer, items, length) if template is None else template_rows(tokenizer, items, template, length)
    empty = [i for i, r in enumerate(rows) if all(r["special_tokens_mask"])]
    if empty:
        raise ValueError(f"Text {empty[0]} tokenises to special tokens only ({len(empty)} such text(s)); there is no "
                         "word to attribute to. Remove it or check the tokenizer.")
    return Encoded(items, rows, single, length, template)


# --- batching --------------------------------------------------------------------------------------------------------
def length_batches(
    lengths: Sequence[int] | np.ndarray, *, batch_size: int | None = None, batch_tokens: int | None = None
) -> Iterator[list[int]]:
    """Indices grouped into batches of similar length (longest first), so padding costs little.

    ``batch_size``: rows per batch; ``batch_tokens``: about this many tokens (padding included) per batch, at least
    one row. Exactly one of the two.
    """
    if (batch_size is None) == (batch_tokens is None):
        raise ValueError("Pass exactly one of batch_size and batch_tokens.")
    budget = batch_size if batch_size is not None else batch_tokens
    if not isinstance(budget, (int, np.integer)) or isinstance(budget, bool) or budget < 1:
        name = "batch_size" if batch_size is not None else "batch_tokens"
        raise ValueError(f"{name} must be a whole number of at least 1, got {budget!r}.")
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable")
    start = 0
    while start < len(order):
        size = batch_size if batch_size is not None else max(1, int(batch_tokens) // int(lengths[order[start]]))
        yield [int(i) for i in order[start : start + size]]
        start += size


def model_inputs(model: nn.Module, encoding: Mapping[str, Any]) -> dict:
    """Only the entries of ``encoding`` that ``model.forward`` accepts (e.g. no token_type_ids for DistilBERT)."""
    accepted = inspect.signature(model.forward).parameters
    return {k: v for k, v in encoding.items() if k in accepted}


def pad_values(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """What each input is padded with: the pad id for ``input_ids``, the pad type id for token types, else 0."""
    return {"input_ids": tokenizer.pad_token_id, "token_type_ids": tokenizer.pad_token_type_id}


def collate(
    tokenizer: PreTrainedTokenizerBase | Mapping[str, int], rows: Sequence[Row], device: torch.device | str
) -> tuple[dict[str, Tensor], Tensor | None]:
    """Right-padded model inputs and the special-tokens mask (padding counts as special; None without one).

    ``tokenizer`` gives the pad values (:func:`pad_values`), or is a mapping of them (missing keys pad with 0).
    """
    pads = tokenizer if isinstance(tokenizer, Mapping) else pad_values(tokenizer)
    inputs = {
        key: pad_sequence([torch.as_tensor(np.asarray(r[key], dtype=np.int64)) for r in rows], batch_first=True,
                          padding_value=pads.get(key, 0)).to(device)
        for key in rows[0]
        if key != "special_tokens_mask"
    }
    if "special_tokens_mask" not in rows[0]:
        return inputs, None
    special = pad_sequence([torch.as_tensor(np.asarray(r["special_tokens_mask"], dtype=bool)) for r in rows],
                           batch_first=True, padding_value=True)
    return inputs, special.to(device)


def model_device(model: nn.Module) -> torch.device:
    """Where the model's inputs go: the input embedding's device (so models spread over devices work too)."""
    try:
        embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    except NotImplementedError:  # no table (CANINE): resolve_head says so; here only the device is wanted
        embeddings = None
    if embeddings is not None and getattr(embeddings, "weight", None) is not None:
        return embeddings.weight.device
    return next(model.parameters()).device


def padded_batches(
    tokenizer: PreTrainedTokenizerBase | Mapping[str, int],
    rows: Sequence[Row],
    device: torch.device | str,
    *,
    batch_size: int | None = None,
    batch_tokens: int | None = None,
    progress: bool = False,
    desc: str = "batches",
) -> Iterator[tuple[list[int], dict[str, Tensor], Tensor | None]]:
    """The one batch iterator: ``(indices, padded inputs, special-tokens mask)`` per length-sorted batch."""
    batches = list(length_batches([len(r["input_ids"]) for r in rows], batch_size=batch_size,
                                  batch_tokens=batch_tokens))
    for idx in tqdm(batches, desc=desc, disable=not progress):
        inputs, special = collate(tokenizer, [rows[i] for i in idx], device)
        yield idx, inputs, special


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run the block with the model in eval mode (dropout off); restore the caller's mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


# --- replacing tokens --------------------------------------------------------------------------------------------
REPLACEMENTS = ("auto", "mask", "pad", "unk", "attention", "delete")


def replacement_token_id(tokenizer: PreTrainedTokenizerBase, replacement: str = "auto") -> int | None:
    """The id that stands in for a removed token.

    ``"auto"``: the mask token, else the unk token, else the pad token. ``"mask"``, ``"pad"``, ``"unk"``: that
    token (a clear error when the tokenizer has none). ``"attention"`` and ``"delete"`` replace no id: None.
    """
    if replacement not in REPLACEMENTS:
        raise ValueError(f"replacement must be one of {', '.join(REPLACEMENTS)}, not {replacement!r}.")
    if replacement in ("attention", "delete"):
        return None
    if replacement == "auto":
        for name in ("mask_token_id", "unk_token_id", "pad_token_id"):
            value = getattr(tokenizer, name, None)
            if value is not None:
                return int(value)
        raise ValueError(
            "This tokenizer has no mask, unk or pad token to replace occluded tokens with; pass replacement=<token id>."
        )
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
