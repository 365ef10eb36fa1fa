"""Reading a model's own prediction head ("head-on-top") on every token's hidden state.

All per-architecture knowledge lives in one table, :data:`HEADS`, keyed by ``config.model_type``. Each entry says
how the family's sequence-classification head, masked-LM head and causal-LM head map hidden vectors to logits, and
which position the sequence head normally pools. Anything not in the table can be served by passing a callable
``head(states) -> logits`` to :func:`resolve_head` (and to ``nx.explain``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from ..models import Task, detect_task

# A head reader maps hidden states (N, H) to logits (N, C), for a model ``m``.
Reader = Callable[[nn.Module, Tensor], Tensor]
Pooling = Literal["first", "last", "every"]


class UnsupportedModelError(ValueError):
    """The prediction head of this model cannot be found; the message says how to pass one."""


def _as_first_token(module: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """Apply a head that reads position 0 of (B, T, H) to every vector of (N, H): each becomes its own position 0."""
    return lambda states: module(states.unsqueeze(1))


# --- sequence-classification heads, each applied to N vectors as if each were the pooled one -------------------
def _bert_seq(m: nn.Module, h: Tensor) -> Tensor:
    # BertPooler reads position 0: dense + tanh; then dropout (identity in eval) and the classifier.
    return m.classifier(m.dropout(_as_first_token(m.bert.pooler)(h)))


def _albert_seq(m: nn.Module, h: Tensor) -> Tensor:
    base = m.albert
    return m.classifier(m.dropout(base.pooler_activation(base.pooler(h))))


def _first_token_classifier(m: nn.Module, h: Tensor) -> Tensor:
    # RoBERTa, XLM-R, CamemBERT, ELECTRA, MPNet: ``classifier`` itself takes features[:, 0].
    return _as_first_token(m.classifier)(h)


def _deberta_seq(m: nn.Module, h: Tensor) -> Tensor:
    # ContextPooler reads position 0 (dense + activation), then dropout and the classifier.
    return m.classifier(m.dropout(_as_first_token(m.pooler)(h)))


def _distilbert_seq(m: nn.Module, h: Tensor) -> Tensor:
    return m.classifier(m.dropout(nn.functional.relu(m.pre_classifier(h))))


def _score_seq(m: nn.Module, h: Tensor) -> Tensor:
    # Decoder classifiers apply ``score`` to every position and pick the last real token.
    return m.score(h)


# --- language-model heads --------------------------------------------------------------------------------------
def _bert_mlm(m: nn.Module, h: Tensor) -> Tensor:
    return m.cls(h)


def _roberta_mlm(m: nn.Module, h: Tensor) -> Tensor:
    return m.lm_head(h)


def _albert_mlm(m: nn.Module, h: Tensor) -> Tensor:
    return m.predictions(h)


def _distilbert_mlm(m: nn.Module, h: Tensor) -> Tensor:
    return m.vocab_projector(m.vocab_layer_norm(m.activation(m.vocab_transform(h))))


def _electra_mlm(m: nn.Module, h: Tensor) -> Tensor:
    return m.generator_lm_head(m.generator_predictions(h))


def _deberta_mlm(m: nn.Module, h: Tensor) -> Tensor:
    if getattr(m, "legacy", True):
        return m.cls(h)
    return m.lm_predictions(h, m.deberta.embeddings.word_embeddings)


def _output_embeddings(m: nn.Module, h: Tensor) -> Tensor:
    # Causal LMs: ``lm_head`` (the output embeddings) maps every position already.
    return m.get_output_embeddings()(h)


def _decoder_final_norm(m: PreTrainedModel) -> nn.Module | None:
    """The final norm of a decoder stack (applied before the head, so intermediate layers need it: a logit lens)."""
    base = m.base_model
    for name in ("norm", "ln_f", "final_layernorm", "final_layer_norm", "norm_f"):
        module = getattr(base, name, None)
        if isinstance(module, nn.Module):
            return module
    return None


@dataclass(frozen=True)
class HeadSpec:
    """How one model family reads its heads; ``None`` means the family has no such head in the table."""

    sequence: Reader | None = None
    masked_lm: Reader | None = None
    causal_lm: Reader | None = _output_embeddings
    pooling: Literal["first", "last"] = "first"
    decoder: bool = False  # pre-LN decoders: hidden_states[l < L] need the final norm before the head
    #: the last linear layer of the sequence head (fine-tuning rescales it for regression targets)
    output_layer: str = "classifier"
    #: ``"bert"`` where the encoder layers have BERT's layout (``attention.self.{query,key,value}``,
    #: ``attention.output``, ``intermediate``, ``output``; post-LN), which layer-recomputing methods need
    encoder_layout: str | None = None


_ENCODER_FIRST = HeadSpec(sequence=_first_token_classifier, masked_lm=_roberta_mlm,
                          output_layer="classifier.out_proj", encoder_layout="bert")
_DECODER = HeadSpec(sequence=_score_seq, masked_lm=None, pooling="last", decoder=True, output_layer="score")

#: model_type -> how to read its heads. Add a family here (or pass ``head=``) to support a new architecture.
HEADS: dict[str, HeadSpec] = {
    "bert": HeadSpec(sequence=_bert_seq, masked_lm=_bert_mlm, encoder_layout="bert"),
    "albert": HeadSpec(sequence=_albert_seq, masked_lm=_albert_mlm),
    "roberta": _ENCODER_FIRST,
    "xlm-roberta": _ENCODER_FIRST,
    "camembert": _ENCODER_FIRST,
    "mpnet": HeadSpec(sequence=_first_token_classifier, masked_lm=_roberta_mlm, output_layer="classifier.out_proj"),
    "electra": HeadSpec(sequence=_first_token_classifier, masked_lm=_electra_mlm, output_layer="classifier.out_proj",
                        encoder_layout="bert"),
    "deberta-v2": HeadSpec(sequence=_deberta_seq, masked_lm=_deberta_mlm),
    "deberta": HeadSpec(sequence=_deberta_seq, masked_lm=_deberta_mlm),
    "distilbert": HeadSpec(sequence=_distilbert_seq, masked_lm=_distilbert_mlm),
    "gpt2": _DECODER,
    "gpt_neo": _DECODER,
    "gptj": _DECODER,
    "llama": _DECODER,
    "mistral": _DECODER,
    "mixtral": _DECODER,
    "qwen2": _DECODER,
    "qwen3": _DECODER,
    "gemma": _DECODER,
    "gemma2": _DECODER,
    "phi": _DECODER,
    "phi3": _DECODER,
    "olmo": _DECODER,
    "opt": _DECODER,
}


def head_spec(model: PreTrainedModel) -> HeadSpec | None:
    """The table's entry for ``model``'s family (None when the family is not in the table)."""
    return HEADS.get(getattr(model.config, "model_type", ""))


def position_offset(model: PreTrainedModel) -> int:
    """Positions reserved before the first token: RoBERTa-style embeddings number positions from
    ``padding_idx + 1``, which shows as a ``padding_idx`` on the position-embedding table; 0 elsewhere."""
    embeddings = getattr(model.base_model, "embeddings", None)
    table = getattr(embeddings, "position_embeddings", None)
    padding_idx = getattr(table, "padding_idx", None)
    return int(padding_idx) + 1 if padding_idx is not None else 0


def output_layer(model: PreTrainedModel) -> nn.Linear:
    """The last linear layer of a sequence head (the table's ``output_layer``; BERT ``classifier``, RoBERTa
    ``classifier.out_proj``, decoders ``score``)."""
    spec = head_spec(model)
    paths = [spec.output_layer] if spec is not None else ["classifier.out_proj", "classifier", "score"]
    for path in paths:
        try:
            layer = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(layer, nn.Linear):
            return layer
    raise UnsupportedModelError(
        f"Cannot find the output layer of a {type(model).__name__}; add its family to normxlogit.core.heads.HEADS "
        "(field output_layer), or train it with a recipe of your own train_fn."
    )


def encoder_layers(model: PreTrainedModel, method: str) -> nn.ModuleList:
    """The encoder layers of a model whose layers have BERT's layout (the table's ``encoder_layout``); a clear
    error naming ``method`` for any other family."""
    spec = head_spec(model)
    model_type = getattr(model.config, "model_type", "")
    if spec is None or spec.encoder_layout != "bert":
        supported = ", ".join(k for k, v in HEADS.items() if v.encoder_layout == "bert")
        raise UnsupportedModelError(
            f"{method} is implemented for encoders with BERT's layer layout ({supported}); "
            f"{type(model).__name__} has model_type={model_type!r}, whose layers are laid out differently. "
            "NormXLogit, LogAt and the norm work for it."
        )
    if getattr(model.config, "position_embedding_type", "absolute") != "absolute":
        raise UnsupportedModelError(
            f"{method} here supports absolute position embeddings only; this model uses "
            f"position_embedding_type={model.config.position_embedding_type!r}."
        )
    return model.base_model.encoder.layer


def list_architectures() -> list[str]:
    """Model types whose heads are known (others work with ``head=``)."""
    return sorted(HEADS)


@dataclass
class Head:
    """A resolved head: maps hidden states (..., H) to logits (..., C) for one loaded model."""

    model: nn.Module
    reader: Callable[[Tensor], Tensor]
    task: Task
    pooling: Pooling
    final_norm: nn.Module | None

    def __call__(self, states: Tensor, *, intermediate: bool = False) -> Tensor:
        """Logits for every vector in ``states`` (any leading shape). ``intermediate``: apply a decoder's final norm."""
        lead, hidden = states.shape[:-1], states.shape[-1]
        flat = states.reshape(-1, hidden)
        if intermediate and self.final_norm is not None:
            flat = self.final_norm(flat)
        logits = self.reader(flat)
        return logits.reshape(*lead, logits.shape[-1])


def resolve_head(model: PreTrainedModel, task: Task | None = None, head: Callable[[Tensor], Tensor] | None = None) -> Head:
    """Find how to read ``model``'s prediction head on arbitrary token vectors.

    ``head``: a callable taking hidden states ``(N, H)`` and returning logits ``(N, C)``, for architectures the
    table does not know (or to override it).
    """
    task = task or detect_task(model)
    model_type = getattr(model.config, "model_type", "")
    spec = HEADS.get(model_type)
    is_lm = task in ("masked-lm", "causal-lm")
    if spec is None:
        # Sensible guesses for families outside the table: decoders with ``score`` and LMs with output embeddings.
        if task == "causal-lm" or hasattr(model, "score"):
            spec = _DECODER
        else:
            spec = HeadSpec(sequence=None, masked_lm=None, causal_lm=None)
    decoder = spec.decoder or task == "causal-lm"
    final_norm = _decoder_final_norm(model) if decoder else None
    pooling: Pooling = "every" if is_lm else spec.pooling
    if head is not None:
        return Head(model, head, task, pooling, final_norm)
    reader = {"classification": spec.sequence, "regression": spec.sequence, "masked-lm": spec.masked_lm,
              "causal-lm": spec.causal_lm}[task]
    if reader is None or (task == "causal-lm" and model.get_output_embeddings() is None):
        raise UnsupportedModelError(
            f"normxlogit does not know how to read the {task} head of a {type(model).__name__} "
            f"(model_type={model_type!r}). Pass head=callable mapping hidden states (N, hidden) to logits (N, classes), "
            f"e.g. head=lambda h: model.classifier(h.unsqueeze(1)), or add an entry to normxlogit.heads.HEADS. "
            f"Known model types: {', '.join(list_architectures())}."
        )
    return Head(model, lambda states: reader(model, states), task, pooling, final_norm)


def pooled_positions(attention_mask: Tensor, pooling: Pooling) -> Tensor:
    """Index of the position the sequence head reads, per row: 0, or the last real (attended) token."""
    if pooling == "last":
        lengths = attention_mask.long().sum(-1)
        return (lengths - 1).clamp(min=0)
    return torch.zeros(attention_mask.shape[0], dtype=torch.long, device=attention_mask.device)


# --- the head's logits for a few ids at every token ------------------------------------------------------------------
class _Captured(Exception):
    pass


def id_logits(head: Head, states: Tensor, ids: Tensor, *, intermediate: bool = True) -> Tensor:
    """``head(states)[..., ids]`` without the full-vocabulary product: (..., B, T, K) for ``ids`` (B, K).

    The head is run up to its output embedding (a linear layer over the vocabulary), whose input is captured; only
    the K wanted rows are then applied. Falls back to the full head (then gathers) when the head does not end in
    the model's output embeddings, e.g. a sequence classifier or a user-supplied head.
    """
    lead = states.shape[:-1]  # (..., B, T)
    decoder = head.model.get_output_embeddings() if hasattr(head.model, "get_output_embeddings") else None
    box: dict[str, Tensor] = {}
    full = None
    if isinstance(decoder, nn.Linear) and head.task in ("masked-lm", "causal-lm"):
        def grab(module, args):
            box["x"] = args[0]
            raise _Captured

        handle = decoder.register_forward_pre_hook(grab)
        try:
            full = head(states, intermediate=intermediate)
        except _Captured:
            pass
        finally:
            handle.remove()
    if "x" not in box:  # the decoder was never reached: use the full logits
        full = head(states, intermediate=intermediate) if full is None else full
        index = ids.view(*([1] * (len(lead) - 2)), ids.shape[0], 1, ids.shape[1]).expand(*lead, ids.shape[1])
        return full.gather(-1, index.to(full.device)).float()
    features = box["x"].reshape(*lead, -1)
    weight = decoder.weight[ids.to(decoder.weight.device)]  # (B, K, H')
    logits = torch.einsum("...bth,bkh->...btk", features, weight)
    if decoder.bias is not None:
        logits = logits + decoder.bias[ids.to(decoder.weight.device)][:, None, :]
    return logits.float()
