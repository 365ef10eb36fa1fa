"""A prompted causal LM as a classifier: templates and the label-word head.

A causal LM asked ``"Review: <text>\\nSentiment (positive or negative):"`` is a classifier whose head is the
unembedding rows of its label words (``" negative"``, ``" positive"``): the prediction is the most probable label
word at the last position, and its index is the class. This module makes that a head like any other:

- :func:`template_rows` puts each text into a template (one ``{}``, or two for (text, text) pairs) and tokenises the
  whole prompt at once, as the model will read it; every token outside the inserted text is marked in the
  ``special_tokens_mask``, so rankings and perturbations never touch the template.
- :class:`LabelWordHead` wraps the model's causal-LM :class:`~normxlogit.core.heads.Head` and maps hidden states
  ``(N, H)`` to the ``C`` label words' logits ``(N, C)`` (final norm, soft-capping and logit scaling included),
  applying only those rows of the unembedding (:func:`~normxlogit.core.heads.id_logits`), never the full vocabulary.
  Its task is ``"classification"``: the rest of the package then treats the prompted LM as a C-class classifier
  (targets are label-word indices, the self-check compares all C logits with the model's own at the last position).
- :func:`log_odds` is the contrastive read: the target's logit minus the log-sum-exp of the other classes' logits,
  the log-odds the head itself gives; :func:`check_log_odds` checks it against the model's own at the explained
  position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Union

import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from .heads import Head, HeadMismatchError, id_logits, tolerance

LabelWords = Sequence[Union[str, int]]
SLOT = "{}"

__all__ = ["LabelWordHead", "LabelWords", "chat_template", "check_log_odds", "fill_template", "label_word_head",
           "label_word_ids", "log_odds", "template_rows"]


# --- label words ---------------------------------------------------------------------------------------------------
def label_word_ids(tokenizer: PreTrainedTokenizerBase, label_words: LabelWords, vocab_size: int) -> list[int]:
    """The token id of each label word: a string that is one token (without special tokens), or a token id."""
    if isinstance(label_words, (str, bytes)) or not isinstance(label_words, Sequence) or len(label_words) < 2:
        raise ValueError(f"label_words must be a list of at least two words or token ids, e.g. "
                         f"[' negative', ' positive'], not {label_words!r}.")
    ids = []
    for word in label_words:
        if isinstance(word, str):
            pieces = tokenizer(word, add_special_tokens=False)["input_ids"]
            if len(pieces) != 1:
                shown = [tokenizer.decode([p]) for p in pieces]
                raise ValueError(
                    f"The label word {word!r} is {len(pieces)} tokens for this tokenizer ({shown!r}); a label word "
                    "must be one token. Pick another word, mind the leading space a word after another word has "
                    "(' positive', not 'positive', for byte-level BPE tokenizers), or pass token ids.")
            ids.append(int(pieces[0]))
        elif isinstance(word, (int, np.integer)) and not isinstance(word, bool) and 0 <= int(word) < vocab_size:
            ids.append(int(word))
        else:
            raise ValueError(f"label word {word!r} is neither a string nor a token id in 0..{vocab_size - 1}.")
    if len(set(ids)) != len(ids):
        raise ValueError(f"label_words {list(label_words)!r} repeat a token (ids {ids}).")
    return ids


@dataclass
class LabelWordHead(Head):
    """The label-word head of a causal LM: hidden states (..., H) -> the label words' logits (..., C).

    ``base`` is the model's causal-LM head; ``label_ids`` the label words' token ids (class c = ``label_ids[c]``),
    ``label_words`` their text. Task ``"classification"``; the explained position is the last token.
    """

    base: Head | None = None
    label_ids: list[int] = field(default_factory=list)
    label_words: list[str] = field(default_factory=list)


def label_word_head(head: Head, tokenizer: PreTrainedTokenizerBase, label_words: LabelWords) -> LabelWordHead:
    """The :class:`LabelWordHead` over ``head`` (a causal LM's resolved head) for ``label_words``."""
    if isinstance(head, LabelWordHead):
        head = head.base
    if head.task != "causal-lm":
        raise ValueError(
            f"label_words make a causal LM a classifier (the label word it would write next); this is a {head.task} "
            "model. Load a causal LM (nx.load_model(name, task='causal-lm')), or leave label_words out.")
    decoder = head.model.get_output_embeddings()
    vocab = int(decoder.weight.shape[0]) if decoder is not None else int(head.model.config.vocab_size)
    ids = label_word_ids(tokenizer, label_words, vocab)
    rows = torch.tensor(ids, dtype=torch.long).view(1, -1)

    def read(states: Tensor) -> Tensor:  # (N, H), already through the final norm when read on a lower layer
        return id_logits(head, states[None], rows.to(states.device), intermediate=False)[0]

    words = [w if isinstance(w, str) else tokenizer.decode([int(w)]) for w in label_words]
    return LabelWordHead(head.model, read, "classification", "every", head.final_norm, None, head.source, None,
                         head.check, base=head, label_ids=ids, label_words=words)


# --- the contrastive read ------------------------------------------------------------------------------------------
def log_odds(logits: Tensor, targets: Tensor) -> Tensor:
    """``logits[..., t] - logsumexp(logits[..., c != t])``: the target's log-odds against the other classes.

    ``logits`` (B, ..., C) with C >= 2, ``targets`` (B,) class indices; returns (B, ...).
    """
    if logits.shape[-1] < 2:
        raise ValueError("The contrastive read needs at least two classes (label words).")
    index = targets.view(-1, *([1] * (logits.dim() - 1))).expand(*logits.shape[:-1], 1).to(logits.device)
    own = logits.gather(-1, index)[..., 0]
    others = logits.scatter(-1, index, float("-inf"))
    return own - torch.logsumexp(others, -1)


def check_log_odds(head: Head, model_logits: Tensor, read: Tensor, targets: Tensor,
                   dtype: torch.dtype = torch.float32) -> None:
    """Raise :class:`HeadMismatchError` unless the contrastive read at the explained positions (``read``, (B,))
    equals the model's own log-odds over the classes (from ``model_logits``, (B, C)). The tolerance is relative to
    the logits it is computed from."""
    if not head.check:
        return
    own_logits = model_logits.detach().float()
    expected = log_odds(own_logits, targets.to(own_logits.device))
    got = read.detach().float().to(expected.device)
    scale = own_logits.abs().amax(-1).clamp(min=1.0)
    gap = (got - expected).abs() / scale
    if not torch.isfinite(got).all() or gap.max() > tolerance(dtype):
        row = int(torch.nan_to_num(gap, nan=float("inf")).argmax())
        raise HeadMismatchError(
            f"Self-check failed for the contrastive read of {type(head.model).__name__}: at the explained position "
            f"the head's log-odds are {float(got[row]):.6g}, but the model's own log-odds over the classes are "
            f"{float(expected[row]):.6g}. The scores would be wrong, so none are returned. (check_head=False turns "
            "this check off.)")


# --- templates -----------------------------------------------------------------------------------------------------
def _slots(template: str) -> int:
    if not isinstance(template, str):
        raise TypeError(f"template must be a string with {SLOT} where the text goes, not {type(template).__name__}.")
    slots = template.count(SLOT)
    if slots not in (1, 2):
        raise ValueError(
            f"template must contain {SLOT} exactly once where the text goes (twice for (text, text) pairs), e.g. "
            f"'Review: {SLOT}\\nSentiment (positive or negative):'; {template!r} has {slots}.")
    return slots


def fill_template(template: str, item: str | tuple[str, str]) -> tuple[str, list[tuple[int, int]]]:
    """The prompt for ``item`` (a text, or a pair for a template with two ``{}``) and the character span of each
    inserted text in it. ``{}`` is the only placeholder: other braces are kept as they are."""
    slots = _slots(template)
    parts = (item,) if isinstance(item, str) else tuple(item)
    if len(parts) != slots:
        kind = "single texts" if len(parts) == 1 else "(text, text) pairs"
        raise ValueError(f"The template has {slots} {SLOT} but the inputs are {kind}: use one {SLOT} per text of an "
                         "input (two for pairs).")
    segments = template.split(SLOT)
    prompt, spans = segments[0], []
    for part, segment in zip(parts, segments[1:]):
        spans.append((len(prompt), len(prompt) + len(part)))
        prompt += part + segment
    return prompt, spans


def template_rows(tokenizer: PreTrainedTokenizerBase, items: Sequence[str | tuple[str, str]], template: str,
                  max_length: int) -> list[dict[str, list[int]]]:
    """Token rows of the prompts: each item put into ``template`` and the whole prompt tokenised at once.

    Only the tokens that overlap an inserted text are content; the template's tokens, the tokenizer's own special
    tokens and special tokens typed into the text are marked in ``special_tokens_mask`` (a token that straddles the
    boundary counts as the text's). A prompt longer than ``max_length`` is an error: truncating it would cut the
    instruction the label word follows. A template that already starts with the BOS token (a rendered chat template,
    :func:`chat_template`) is tokenised without adding special tokens again.
    """
    _slots(template)
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("A template needs a fast tokenizer (it reads character offsets to tell the inserted text "
                        "from the template): load it with AutoTokenizer.from_pretrained(..., use_fast=True).")
    filled = [fill_template(template, item) for item in items]
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and template.startswith(bos))
    enc = tokenizer([prompt for prompt, _ in filled], add_special_tokens=add_special, return_offsets_mapping=True,
                    return_special_tokens_mask=True)
    specials = set(tokenizer.all_special_ids) - {tokenizer.mask_token_id}
    keys = [k for k in enc.keys() if k not in ("offset_mapping", "special_tokens_mask")]
    rows = []
    for i, (_, spans) in enumerate(filled):
        ids = enc["input_ids"][i]
        if len(ids) > max_length:
            raise ValueError(f"Text {i} in the template is {len(ids)} tokens, more than max_length={max_length}; "
                             "truncating it would cut the template's end. Shorten the text or the template.")
        inside = [any(a < e and b > s for s, e in spans) for a, b in enc["offset_mapping"][i]]
        row = {k: list(enc[k][i]) for k in keys}
        row["special_tokens_mask"] = [int(not (content and not flag and token not in specials))
                                      for content, flag, token in zip(inside, enc["special_tokens_mask"][i], ids)]
        if all(row["special_tokens_mask"]):
            raise ValueError(f"Text {i} adds no token of its own to the template; there is nothing to attribute to.")
        rows.append(row)
    return rows


def chat_template(tokenizer: PreTrainedTokenizerBase, template: str, *, system: str | None = None,
                  answer_prefix: str = "") -> str:
    """``template`` as the user's turn of the tokenizer's chat template, followed by the assistant header (and
    ``answer_prefix``): a template for ``nx.explain(..., template=...)`` whose label words are the first tokens of
    the answer. ``system``: an optional system prompt (else the chat template's default, if it has one)."""
    _slots(template)
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("This tokenizer has no chat template; write the prompt's template yourself.")
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": template}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if rendered.count(SLOT) != template.count(SLOT):
        raise ValueError("The chat template itself contains {}; write the prompt's template yourself.")
    return rendered + answer_prefix
