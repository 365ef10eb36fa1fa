"""Fine-tuning a decoder (SmolLM2, Llama...) as a sequence classifier or regressor: ``sst2-smollm2``, ``stsb-smollm2``.

A ``*ForSequenceClassification`` decoder applies its ``score`` layer at every position and pools the last position
whose id is not ``config.pad_token_id``. Two things therefore have to be set before training:

* **a pad token that never ends a text**: SmolLM2's tokenizer pads with ``<|im_end|>``, its EOS, which also closes
  every chat turn; a text ending in it would be pooled one token early. The recipe pads with ``<|endoftext|>`` (a
  document separator that byte-level BPE never produces from text), in the tokenizer and in ``config.pad_token_id``;
* **right padding**: a Llama classifier numbers positions 0..T-1 whatever the mask says, so left padding would shift
  the rotary positions of every shorter text in a batch. The package's own batches are right-padded; training is too.

What is trained (``options["trainable"]``): ``"full"`` (every weight but the word embeddings), ``"lora"`` (low-rank
adapters on every linear layer of the blocks plus the new head, merged into the weights when training ends, so the
cached model is a plain transformers model), ``"top<k>"`` (the last ``k`` blocks, the final norm and the head) or
``"head"`` (the head alone). ``bench/decoder_finetune.py`` measures them against each other.
``options["curve_every"]`` (steps) records a learning curve on a seeded subset of the validation split
(``options["curve_size"]`` rows) in the model's metadata.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .recipes import Recipe
from .sequence import learning_curve, train_sequence_model

#: The base model of the decoder recipes (found locally first: ``$NORMXLOGIT_MODELS``, ``../shared/models``).
DECODER_BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
#: Tokens tried, in order, as the pad of a fine-tuned decoder: document separators no text tokenises to.
PAD_CANDIDATES = ("<|endoftext|>", "<|finetune_right_pad_id|>", "<pad>", "<|pad|>")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def prepare_decoder_tokenizer(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, add_bos_token: bool | None = None
) -> str:
    """Pad with a token that never ends a text (the first of :data:`PAD_CANDIDATES` in the vocabulary, else the
    existing pad), on the right, in the tokenizer and ``model.config``; returns the pad token.

    ``add_bos_token=True`` starts every text with the BOS token, and separates a sentence pair by a second one (what a
    Llama tokenizer does with pairs, as LLaMA-2's did in the paper); the flag is saved with the tokenizer. SmolLM2's
    BOS is ``<|im_start|>``, which opens every chat turn, so the model has seen it before any text.
    """
    vocab = tokenizer.get_vocab()
    pad = next((t for t in PAD_CANDIDATES if t in vocab and vocab[t] != tokenizer.eos_token_id), tokenizer.pad_token)
    if pad is None:
        raise ValueError("The tokenizer has no pad token and none of the usual separators; set tokenizer.pad_token.")
    tokenizer.pad_token = pad
    tokenizer.padding_side = "right"
    if add_bos_token is not None:
        if not hasattr(tokenizer, "add_bos_token"):
            raise ValueError(f"{type(tokenizer).__name__} has no add_bos_token switch; leave add_bos_token unset.")
        tokenizer.add_bos_token = add_bos_token  # a Llama fast tokenizer rebuilds its post-processor here
    model.config.pad_token_id = tokenizer.pad_token_id
    added = set(tokenizer("a text")["input_ids"]) - set(tokenizer("a text", add_special_tokens=False)["input_ids"])
    if tokenizer.pad_token_id in added:  # pragma: no cover - a tokenizer that adds the pad to every text
        raise ValueError(f"The tokenizer adds its pad token {pad!r} to every text; the classifier could not pool it.")
    return pad


def _blocks(model: PreTrainedModel) -> torch.nn.ModuleList:
    layers = getattr(model.base_model, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(f"{type(model).__name__} keeps its blocks elsewhere than base_model.layers; use 'full' or 'lora'.")
    return layers


def apply_trainable(model: PreTrainedModel, trainable: str, *, lora_rank: int = 8) -> PreTrainedModel:
    """Freeze what ``trainable`` leaves out (see the module docstring); returns the model to train (a peft model for
    ``"lora"``, which :func:`merge_lora` turns back into the plain one)."""
    head = model.score
    if trainable == "full":
        model.requires_grad_(True)
    elif trainable == "lora":
        from peft import LoraConfig, get_peft_model

        # No task_type: peft's SEQ_CLS would wrap the head in a copy (modules_to_save), which the sequence loop's
        # regression rescale could not find; the new head is trained as itself instead.
        config = LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.0, target_modules=list(LORA_TARGETS))
        wrapped = get_peft_model(model, config)
        head.requires_grad_(True)
        return wrapped
    elif trainable == "head" or re.fullmatch(r"top\d+", trainable):
        model.requires_grad_(False)
        if trainable != "head":
            k = int(trainable[3:])
            for block in _blocks(model)[-k:]:
                block.requires_grad_(True)
            model.base_model.norm.requires_grad_(True)
    else:
        raise ValueError(f"Unknown trainable={trainable!r}; use 'full', 'lora', 'top<k>' (e.g. 'top8') or 'head'.")
    head.requires_grad_(True)
    return model


def merge_lora(model: PreTrainedModel) -> PreTrainedModel:
    """The plain model with LoRA adapters merged into its weights (``model`` itself when it has none)."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def train_decoder_sequence(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, recipe: Recipe, *, device: torch.device
) -> dict[str, Any]:
    """The sequence-model loop of :func:`normxlogit.training.sequence.train_sequence_model` on a decoder: pad token
    and side set first, then the part named by ``recipe.options["trainable"]`` trained; LoRA merged in place."""
    pad = prepare_decoder_tokenizer(model, tokenizer, add_bos_token=recipe.options.get("add_bos_token"))
    trainable = recipe.options.get("trainable", "full")
    wrapped = apply_trainable(model, trainable, lora_rank=int(recipe.options.get("lora_rank", 8)))
    callback, curve = None, []
    if recipe.options.get("curve_every"):  # the learning curve, kept in the metadata (nx.pretrained_info)
        callback, curve = learning_curve(tokenizer, recipe, device=device, every=int(recipe.options["curve_every"]),
                                         size=int(recipe.options.get("curve_size", 256)))
    stats = train_sequence_model(wrapped, tokenizer, recipe, device=device, callback=callback)
    merged = merge_lora(wrapped)
    if merged is not model:  # peft swaps modules in place; the caller saves ``model``, so it must be the merged one
        raise RuntimeError("Merging the LoRA adapters did not leave the trained weights in the original model.")
    model.requires_grad_(True)
    model.eval()
    trained = sum(p.numel() for p in merged.parameters())
    return {**stats, "trainable": trainable, "pad_token": pad, "parameters": trained,
            **({"learning_curve": curve} if curve else {})}
