"""Where each model family keeps its layers, sublayers and sequence-head steps: the layer-structure companion of
:data:`normxlogit.core.heads.HEADS`.

``HEADS`` says how a family's heads read hidden states; :data:`FAMILIES` says how its encoder layers are built, so
that a method which recomputes the layers from their own modules (DecompX propagates token parts through them)
finds every linear map, LayerNorm and activation without knowing the family. Per-architecture facts live here and
in ``HEADS`` only, never in a method module.

Each entry gives, per ``hidden_states`` step, the list of post-LayerNorm :class:`Sublayer` s that step runs (one for
BERT-like encoders; ALBERT runs a group of shared layers), and the sequence head as a list of :data:`HeadStep` s
(linear layers and element-wise activations) from the pooled hidden vector to the logits. :func:`model_structure`
returns both, or raises :class:`~normxlogit.core.heads.UnsupportedModelError` saying why a family is not laid out
this way (:data:`UNSUPPORTED`). To support another post-LayerNorm encoder with absolute positions, add its
``model_type`` to :data:`FAMILIES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .heads import UnsupportedModelError


@dataclass(frozen=True)
class Sublayer:
    """One post-LayerNorm transformer layer: ``LN2(u + FFN(u))`` with ``u = LN1(x + Attention(x))``."""

    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    output: nn.Linear
    attention_norm: nn.LayerNorm
    ffn_in: nn.Linear
    activation: Callable[[Tensor], Tensor]
    ffn_out: nn.Linear
    output_norm: nn.LayerNorm
    heads: int


#: A sequence-head step: ``("linear", nn.Linear)`` or ``("activation", fn)`` (an element-wise function).
HeadStep = tuple[str, Union[nn.Linear, Callable[[Tensor], Tensor]]]


@dataclass(frozen=True)
class Family:
    """How to find a family's encoder layers (one list of sublayers per ``hidden_states`` step) and its sequence
    head. Both take the model and the name of the method asking (for the error messages)."""

    layers: Callable[[nn.Module, str], list[list[Sublayer]]]
    head: Callable[[nn.Module, str], list[HeadStep]]


#: Why the families that are not in :data:`FAMILIES` are not laid out as post-LayerNorm encoder layers.
UNSUPPORTED: dict[str, str] = {
    "deberta-v2": "its disentangled attention adds relative-position terms (c2p, p2c) to the attention scores, which "
                  "the layer recomputation here does not reproduce, and its embedding output is masked",
    "deberta": "its disentangled attention adds relative-position terms to the attention scores, which the layer "
               "recomputation here does not reproduce",
    "mpnet": "its attention adds a learned relative-position bias that the layer recomputation here does not "
             "reproduce",
    "gpt2": "it is a pre-LayerNorm causal decoder whose head reads the last token; the layer structure here is that "
            "of post-LayerNorm encoders with a [CLS]-style pooled head",
    "llama": "it is a decoder whose gated feed-forward (SiLU(gate) * up) multiplies two functions of the input, "
             "which has no linear decomposition into token parts; RMSNorm and rotary positions would also need "
             "their own rules",
}
for _decoder in ("mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "phi3"):
    UNSUPPORTED[_decoder] = UNSUPPORTED["llama"]
for _decoder in ("gpt_neo", "gptj", "opt", "phi", "olmo"):
    UNSUPPORTED[_decoder] = ("it is a pre-LayerNorm causal decoder; the layer structure here is that of "
                             "post-LayerNorm encoders")


def _absolute_positions_only(model: nn.Module, method: str) -> None:
    config = model.config
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        raise UnsupportedModelError(
            f"{method} here supports absolute position embeddings only; this model uses "
            f"position_embedding_type={config.position_embedding_type!r} (relative terms in the attention scores)."
        )
    if getattr(config, "is_decoder", False):
        raise UnsupportedModelError(f"{method} here explains bidirectional encoders; this model is configured as a "
                                    "decoder.")


def _bert_layers(model: nn.Module, method: str) -> list[list[Sublayer]]:
    _absolute_positions_only(model, method)
    return [[Sublayer(
        query=layer.attention.self.query, key=layer.attention.self.key, value=layer.attention.self.value,
        output=layer.attention.output.dense, attention_norm=layer.attention.output.LayerNorm,
        ffn_in=layer.intermediate.dense, activation=layer.intermediate.intermediate_act_fn,
        ffn_out=layer.output.dense, output_norm=layer.output.LayerNorm,
        heads=layer.attention.self.num_attention_heads,
    )] for layer in model.base_model.encoder.layer]


def _distilbert_layers(model: nn.Module, method: str) -> list[list[Sublayer]]:
    return [[Sublayer(
        query=block.attention.q_lin, key=block.attention.k_lin, value=block.attention.v_lin,
        output=block.attention.out_lin, attention_norm=block.sa_layer_norm,
        ffn_in=block.ffn.lin1, activation=block.ffn.activation, ffn_out=block.ffn.lin2,
        output_norm=block.output_layer_norm, heads=block.attention.n_heads,
    )] for block in model.base_model.transformer.layer]


def _albert_layers(model: nn.Module, method: str) -> list[list[Sublayer]]:
    _absolute_positions_only(model, method)
    config = model.config
    encoder = model.base_model.encoder
    per_group = config.num_hidden_layers / config.num_hidden_groups
    steps = []
    for i in range(config.num_hidden_layers):  # each step runs one group's layers; weights are shared across steps
        group = encoder.albert_layer_groups[int(i / per_group)]
        steps.append([Sublayer(
            query=layer.attention.query, key=layer.attention.key, value=layer.attention.value,
            output=layer.attention.dense, attention_norm=layer.attention.LayerNorm,
            ffn_in=layer.ffn, activation=layer.activation, ffn_out=layer.ffn_output,
            output_norm=layer.full_layer_layer_norm, heads=layer.attention.num_attention_heads,
        ) for layer in group.albert_layers])
    return steps


def _no_head(model: nn.Module, method: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"{method} explains sequence-classification and regression heads; {type(model).__name__} has none "
        "(load the model with nx.load_model(..., task='classification' or 'regression'))."
    )


def _bert_head(model: nn.Module, method: str) -> list[HeadStep]:
    pooler = getattr(model.base_model, "pooler", None)
    if pooler is None or not hasattr(model, "classifier"):
        raise _no_head(model, method)
    return [("linear", pooler.dense), ("activation", pooler.activation), ("linear", model.classifier)]


def _albert_head(model: nn.Module, method: str) -> list[HeadStep]:
    base = model.base_model
    if getattr(base, "pooler", None) is None or not hasattr(model, "classifier"):
        raise _no_head(model, method)
    return [("linear", base.pooler), ("activation", base.pooler_activation), ("linear", model.classifier)]


def _roberta_head(model: nn.Module, method: str) -> list[HeadStep]:
    head = getattr(model, "classifier", None)
    if head is None or not hasattr(head, "out_proj"):
        raise _no_head(model, method)
    return [("linear", head.dense), ("activation", torch.tanh), ("linear", head.out_proj)]


def _electra_head(model: nn.Module, method: str) -> list[HeadStep]:
    head = getattr(model, "classifier", None)
    if head is None or not hasattr(head, "out_proj"):
        raise _no_head(model, method)
    return [("linear", head.dense), ("activation", head.activation), ("linear", head.out_proj)]


def _distilbert_head(model: nn.Module, method: str) -> list[HeadStep]:
    if not hasattr(model, "pre_classifier"):
        raise _no_head(model, method)
    return [("linear", model.pre_classifier), ("activation", F.relu), ("linear", model.classifier)]


#: model_type -> where its layers and sequence head are. Add a post-LN encoder with absolute positions here.
FAMILIES: dict[str, Family] = {
    "bert": Family(_bert_layers, _bert_head),
    "roberta": Family(_bert_layers, _roberta_head),
    "xlm-roberta": Family(_bert_layers, _roberta_head),
    "camembert": Family(_bert_layers, _roberta_head),
    "electra": Family(_bert_layers, _electra_head),
    "distilbert": Family(_distilbert_layers, _distilbert_head),
    "albert": Family(_albert_layers, _albert_head),
}


def model_structure(model: nn.Module, method: str = "This method") -> tuple[list[list[Sublayer]], list[HeadStep]]:
    """The model's layers (per ``hidden_states`` step) and sequence head; a clear error naming ``method`` for a
    family that is not laid out as post-LayerNorm encoder layers with a pooled head."""
    model_type = getattr(model.config, "model_type", "")
    family = FAMILIES.get(model_type)
    if family is None:
        why = UNSUPPORTED.get(model_type, "its layers are not in the table normxlogit.core.layouts.FAMILIES")
        raise UnsupportedModelError(
            f"{method} is implemented for post-LayerNorm BERT-family encoders ({', '.join(sorted(FAMILIES))}); "
            f"{type(model).__name__} (model_type={model_type!r}) is not supported: {why}. "
            "NormXLogit, LogAt and the gradient baselines work for it."
        )
    return family.layers(model, method), family.head(model, method)


def supported_families() -> list[str]:
    """Model types whose layer structure is in :data:`FAMILIES`."""
    return sorted(FAMILIES)
