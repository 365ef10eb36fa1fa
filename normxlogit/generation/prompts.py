"""The sequence a generation attribution reads: the prompt's ids (plain or in the chat template), the continuation
(greedy generation or a given one, teacher-forced), and the checks on the model and on the request."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from ..models import detect_task

__all__ = ["check_causal_lm", "continuation_ids", "greedy_continuation", "max_positions", "prompt_ids",
           "prompt_text", "resolve_layer"]


def check_causal_lm(model: PreTrainedModel) -> None:
    """A clear error unless ``model`` is a decoder-only causal LM."""
    config = getattr(model, "config", None)
    try:
        task = detect_task(model)
    except ValueError:
        task = None
    if task != "causal-lm" or getattr(config, "is_encoder_decoder", False):
        raise ValueError(
            f"explain_generation needs a decoder-only causal LM (a *ForCausalLM model), got a {type(model).__name__}. "
            "Load one with nx.load_model(name, task='causal-lm'); use nx.explain for classifiers and masked LMs."
        )


def resolve_layer(layer: int, num_layers: int) -> int:
    """``layer`` as an index 0..L (negative counts from the end); a clear error when out of range."""
    if not isinstance(layer, (int, np.integer)) or not -(num_layers + 1) <= layer <= num_layers:
        raise ValueError(f"layer={layer!r} is out of range: this model has layers 0..{num_layers} "
                         "(0 = embeddings, -1 = last).")
    return int(layer) % (num_layers + 1)


def prompt_text(tokenizer: PreTrainedTokenizerBase, prompt: str, *, chat: bool = False,
                system_prompt: str | None = None) -> str:
    """The text the model reads: the prompt itself, or (``chat=True``) the prompt as the user's turn of the chat
    template, with the generation prompt. Tokenise it with special tokens only when ``chat=False``."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, not {type(prompt).__name__}.")
    if not prompt.strip():
        raise ValueError("The prompt is empty or whitespace only; there is nothing to generate from.")
    if not chat:
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"chat=True, but this tokenizer ({type(tokenizer).__name__}) has no chat template; use "
                         "chat=False or set tokenizer.chat_template.")
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str, *, chat: bool = False,
               system_prompt: str | None = None) -> list[int]:
    """The prompt's token ids: plain (with the tokenizer's special tokens), or wrapped in its chat template."""
    text = prompt_text(tokenizer, prompt, chat=chat, system_prompt=system_prompt)
    ids = tokenizer(text, add_special_tokens=not chat)["input_ids"]
    if not ids:
        raise ValueError(f"The prompt {prompt!r} has no tokens.")
    return list(ids)


def continuation_ids(tokenizer: PreTrainedTokenizerBase, continuation: str | Sequence[int], vocab: int) -> list[int]:
    """A given continuation as token ids: text (tokenised without special tokens) or ids, checked against ``vocab``."""
    if isinstance(continuation, str):
        if not continuation:
            raise ValueError("continuation is empty; pass None to generate, or the text to attribute.")
        ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    else:
        values = continuation.reshape(-1).tolist() if isinstance(continuation, (Tensor, np.ndarray)) else continuation
        ids = [int(i) for i in values]
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise ValueError(f"continuation token id {bad[0]} is out of range for a vocabulary of {vocab}.")
    if not ids:
        raise ValueError("continuation has no tokens; pass None to generate, or the text / ids to attribute.")
    return list(ids)


def greedy_continuation(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, ids: Tensor,
                        max_new_tokens: int) -> list[int]:
    """Greedy continuation of ``ids`` (1, P) without touching the model's or the tokenizer's configuration."""
    own = model.generation_config
    eos = own.eos_token_id if own.eos_token_id is not None else tokenizer.eos_token_id
    pad = own.pad_token_id if own.pad_token_id is not None else tokenizer.pad_token_id
    if pad is None:
        pad = eos[0] if isinstance(eos, (list, tuple)) else eos
    # A fresh configuration: plain greedy decoding, whatever sampling settings the model's own one carries.
    config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, eos_token_id=eos,
                              pad_token_id=pad, bos_token_id=own.bos_token_id)
    kwargs: dict[str, Any] = {}
    if "use_model_defaults" in inspect.signature(model.generate).parameters:
        kwargs["use_model_defaults"] = False
    out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config, **kwargs)
    return out[0, ids.shape[1]:].tolist()


def max_positions(model: PreTrainedModel) -> int | None:
    """The longest sequence the model's position embeddings allow (None when its config does not say)."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
