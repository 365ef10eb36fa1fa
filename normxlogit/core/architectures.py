"""The per-architecture table: how each model family's heads read hidden vectors.

:data:`HEADS` is keyed by ``config.model_type``. Each :class:`HeadSpec` says how the family's sequence head, masked-LM
head and causal-LM head map hidden vectors ``(N, H)`` to logits ``(N, C)``, which position the sequence head pools,
where a decoder keeps its final norm (for layer-wise reads), which linear layer ends the sequence head, and whether
the encoder layers have BERT's layout. All per-architecture knowledge of the package lives here (and, for methods
that recompute whole layers, in :mod:`normxlogit.core.layouts`). What the model applies after its head (logit
soft-capping, logit scaling) is read from its config by :mod:`normxlogit.core.heads`, and every read is checked
against the model's own output there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from torch import Tensor, nn

class UnsupportedModelError(ValueError):
    """The prediction head of this model cannot be found; the message says how to pass one."""


# A head reader maps hidden states (N, H) to logits (N, C), for a model ``m``.
Reader = Callable[[nn.Module, Tensor], Tensor]


def _as_first_token(module: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """Apply a head that reads position 0 of (B, T, H) to every vector of (N, H): each becomes its own position 0."""
    return lambda states: module(states.unsqueeze(1))


# --- sequence-classification heads, each applied to N vectors as if each were the pooled one -------------------
def _pooler_seq(m: nn.Module, h: Tensor) -> Tensor:
    # BERT, MobileBERT: the base model's pooler reads position 0 (BERT: dense + tanh; MobileBERT: the same, or the
    # vector itself when classifier_activation=False); then dropout (identity in eval) and the classifier.
    return m.classifier(m.dropout(_as_first_token(m.base_model.pooler)(h)))


def _albert_seq(m: nn.Module, h: Tensor) -> Tensor:
    base = m.albert
    return m.classifier(m.dropout(base.pooler_activation(base.pooler(h))))


def _first_token_classifier(m: nn.Module, h: Tensor) -> Tensor:
    # RoBERTa, XLM-R, CamemBERT, ELECTRA, MPNet, RoFormer, ESM: ``classifier`` itself takes features[:, 0]
    # (then dropout, dense, activation, dropout, out_proj).
    return _as_first_token(m.classifier)(h)


def _deberta_seq(m: nn.Module, h: Tensor) -> Tensor:
    # ContextPooler reads position 0 (dense + activation), then dropout and the classifier.
    return m.classifier(m.dropout(_as_first_token(m.pooler)(h)))


def _distilbert_seq(m: nn.Module, h: Tensor) -> Tensor:
    # hidden_state[:, 0] -> pre_classifier -> ReLU -> dropout -> classifier.
    return m.classifier(m.dropout(nn.functional.relu(m.pre_classifier(h))))


def _modernbert_seq(m: nn.Module, h: Tensor) -> Tensor:
    # ModernBERT's hidden_states[-1] is taken *before* the model's final_norm (last_hidden_state is after it), so the
    # reader applies final_norm itself; for an intermediate layer that is the logit lens. Then the prediction head
    # (dense, activation, LayerNorm), dropout and the classifier, on position 0 ("cls" pooling).
    if getattr(m.config, "classifier_pooling", "cls") != "cls":
        raise UnsupportedModelError(
            f"This ModernBERT classifier pools with classifier_pooling={m.config.classifier_pooling!r}: the head reads "
            "the attention-masked mean of all final hidden states, and because the head (dense, activation, "
            "LayerNorm, classifier) is not linear, no single token's vector gives the model's output. Only "
            "classifier_pooling='cls' can be explained token by token."
        )
    return m.classifier(m.drop(m.head(m.model.final_norm(h))))


def _score_seq(m: nn.Module, h: Tensor) -> Tensor:
    # Decoder classifiers apply ``score`` to every position and pick the last real token.
    return m.score(h)


def _biogpt_seq(m: nn.Module, h: Tensor) -> Tensor:
    # BioGPT's hidden_states[-1] is taken before the decoder's final layer_norm: the reader applies it.
    return m.score(m.biogpt.layer_norm(h))


# --- language-model heads --------------------------------------------------------------------------------------
def _bert_mlm(m: nn.Module, h: Tensor) -> Tensor:
    # BERT, MobileBERT, RoFormer (and their causal-LM classes): ``cls`` (transform + decoder) maps every position.
    return m.cls(h)


def _roberta_mlm(m: nn.Module, h: Tensor) -> Tensor:
    return m.lm_head(h)


def _albert_mlm(m: nn.Module, h: Tensor) -> Tensor:
    return m.predictions(h)


def _distilbert_mlm(m: nn.Module, h: Tensor) -> Tensor:
    return m.vocab_projector(m.vocab_layer_norm(m.activation(m.vocab_transform(h))))


def _electra_mlm(m: nn.Module, h: Tensor) -> Tensor:
    # ElectraForMaskedLM and ElectraForCausalLM (the generator head).
    return m.generator_lm_head(m.generator_predictions(h))


def _deberta_mlm(m: nn.Module, h: Tensor) -> Tensor:
    if getattr(m, "legacy", True):
        return m.cls(h)
    return m.lm_predictions(h, m.deberta.embeddings.word_embeddings)


def _modernbert_mlm(m: nn.Module, h: Tensor) -> Tensor:
    # final_norm (not in hidden_states[-1]), the prediction head, then the decoder.
    return m.decoder(m.head(m.model.final_norm(h)))


def _output_embeddings(m: nn.Module, h: Tensor) -> Tensor:
    # Causal LMs: ``lm_head`` (the output embeddings) maps every position already.
    return m.get_output_embeddings()(h)


def _biogpt_clm(m: nn.Module, h: Tensor) -> Tensor:
    return m.output_projection(m.biogpt.layer_norm(h))


@dataclass(frozen=True)
class HeadSpec:
    """How one model family reads its heads; ``None`` means the family has no such head (transformers has no class
    for that task), so the table claims nothing for it."""

    sequence: Reader | None = None
    masked_lm: Reader | None = None
    causal_lm: Reader | None = _output_embeddings
    pooling: Literal["first", "last"] = "first"
    decoder: bool = False  # pre-LN decoders: hidden_states[l < L] need the final norm before the head
    #: modules (attribute paths from the model) applied, in order, to an intermediate layer's hidden state before
    #: the head (the logit lens); None: found by name (``norm``, ``ln_f``, ``final_layer_norm``, ...); ``()``: none
    #: (post-LN encoders, and families whose reader applies the final norm itself because ``hidden_states[-1]``
    #: is taken before it)
    final_norm: tuple[str, ...] | None = None
    #: the last linear layer of the sequence head (fine-tuning rescales it for regression targets)
    output_layer: str = "classifier"
    #: ``"bert"`` where the encoder layers have BERT's layout (``attention.self.{query,key,value}``,
    #: ``attention.output``, ``intermediate``, ``output``; post-LN), which layer-recomputing methods need
    encoder_layout: str | None = None
    #: why a family cannot be supported (then every task raises this message)
    unsupported: str | None = None


def _encoder(sequence: Reader | None, masked_lm: Reader | None, causal_lm: Reader | None = None, *,
             output_layer: str = "classifier", encoder_layout: str | None = None) -> HeadSpec:
    """A post-LN encoder: its last hidden state is what the heads read, and no final norm exists."""
    return HeadSpec(sequence=sequence, masked_lm=masked_lm, causal_lm=causal_lm, pooling="first", decoder=False,
                    final_norm=(), output_layer=output_layer, encoder_layout=encoder_layout)


def _decoder(final_norm: str | tuple[str, ...], *, sequence: Reader | None = _score_seq,
             causal_lm: Reader = _output_embeddings) -> HeadSpec:
    """A pre-LN decoder whose ``hidden_states[-1]`` already went through its final norm (the head reads it as it is;
    an intermediate layer goes through ``final_norm`` first). ``sequence=None``: no sequence-classification class."""
    norm = (final_norm,) if isinstance(final_norm, str) else final_norm
    return HeadSpec(sequence=sequence, masked_lm=None, causal_lm=causal_lm, pooling="last", decoder=True,
                    final_norm=norm, output_layer="score")


_ENCODER_FIRST = _encoder(_first_token_classifier, _roberta_mlm, _roberta_mlm, output_layer="classifier.out_proj",
                          encoder_layout="bert")
_LLAMA_LIKE = _decoder("model.norm")  # Llama and every family built like it: ``model.norm``, ``lm_head``, ``score``

_ENCODER_DECODER = (
    "an encoder-decoder model. Its sequence head (classification_head) reads the *decoder's* final state at "
    "the position of the input's last </s>, and the decoder runs on the text shifted right by one token; the model "
    "returns encoder_hidden_states and decoder_hidden_states instead of one hidden_states stack; no per-token read of "
    "the input tokens' vectors reproduces that output, so LogAt's invariant cannot hold."
)

#: model_type -> how to read its heads. Add a family here (or pass ``head=``) to support a new architecture.
HEADS: dict[str, HeadSpec] = {
    # --- encoders (post-LN unless said otherwise; sequence heads read position 0) ---------------------------------
    "bert": _encoder(_pooler_seq, _bert_mlm, _bert_mlm, encoder_layout="bert"),  # + BertLMHeadModel
    "mobilebert": _encoder(_pooler_seq, _bert_mlm),
    "roformer": _encoder(_first_token_classifier, _bert_mlm, _bert_mlm, output_layer="classifier.out_proj"),
    "albert": _encoder(_albert_seq, _albert_mlm),
    "roberta": _ENCODER_FIRST,  # + RobertaForCausalLM
    "xlm-roberta": _ENCODER_FIRST,  # + XLMRobertaForCausalLM
    "camembert": _ENCODER_FIRST,  # + CamembertForCausalLM
    "mpnet": _encoder(_first_token_classifier, _roberta_mlm, output_layer="classifier.out_proj"),
    "electra": _encoder(_first_token_classifier, _electra_mlm, _electra_mlm, output_layer="classifier.out_proj",
                        encoder_layout="bert"),  # + ElectraForCausalLM
    "deberta-v2": _encoder(_deberta_seq, _deberta_mlm),
    "deberta": _encoder(_deberta_seq, _deberta_mlm),
    "distilbert": _encoder(_distilbert_seq, _distilbert_mlm),
    # ModernBERT is pre-LN: its final_norm is applied by the readers (hidden_states[-1] is taken before it).
    "modernbert": _encoder(_modernbert_seq, _modernbert_mlm),
    # ESM is pre-LN: hidden_states[-1] has gone through encoder.emb_layer_norm_after, intermediate layers need it.
    "esm": HeadSpec(sequence=_first_token_classifier, masked_lm=_roberta_mlm, causal_lm=None, pooling="first",
                    decoder=True, final_norm=("esm.encoder.emb_layer_norm_after",),
                    output_layer="classifier.out_proj"),
    # --- decoders: ``score`` on every position, pooled at the last non-pad token; ``lm_head`` on every position ---
    "gpt2": _decoder("transformer.ln_f"),
    "gpt_bigcode": _decoder("transformer.ln_f"),  # StarCoder (1), SantaCoder
    "gpt_neo": _decoder("transformer.ln_f"),
    "gptj": _decoder("transformer.ln_f"),
    "gpt_neox": _decoder("gpt_neox.final_layer_norm"),  # Pythia; lm_head is ``embed_out``
    "bloom": _decoder("transformer.ln_f"),
    "falcon": _decoder("transformer.ln_f"),
    # OPT-350m projects the normed state down (project_out) before the head; post-LN OPT has no final norm.
    "opt": _decoder(("model.decoder.final_layer_norm", "model.decoder.project_out")),
    # BioGPT: hidden_states[-1] is taken before biogpt.layer_norm, so the readers apply it (and it is not repeated
    # for intermediate layers). Its classifier pools at (number of non-pad tokens - 1), the last real token under
    # right padding.
    "biogpt": HeadSpec(sequence=_biogpt_seq, causal_lm=_biogpt_clm, pooling="last", decoder=True, final_norm=(),
                       output_layer="score"),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "mixtral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,  # final_logit_softcapping: applied by normxlogit.core.heads from the config
    "gemma3_text": _LLAMA_LIKE,  # Gemma 3 1B and the text model of the larger ones (softcapping as Gemma 2)
    # Gemma 3 multimodal (Gemma3ForConditionalGeneration, Gemma3ForSequenceClassification) on text-only input: the
    # language model sits one level deeper, and num_hidden_layers / pad_token_id live in config.text_config (the
    # classifier pools with text_config.pad_token_id). In transformers 4.57 Gemma3ForConditionalGeneration applies
    # no final_logit_softcapping (only Gemma3ForCausalLM does), so nothing may be applied after its lm_head.
    "gemma3": _decoder("model.language_model.norm"),
    "qwen2_moe": _LLAMA_LIKE,
    "qwen3_moe": _LLAMA_LIKE,
    "phimoe": _LLAMA_LIKE,
    "deepseek_v3": _LLAMA_LIKE,
    "glm": _LLAMA_LIKE,
    "glm4": _LLAMA_LIKE,
    "helium": _LLAMA_LIKE,
    "smollm3": _LLAMA_LIKE,
    "ministral": _LLAMA_LIKE,
    "nemotron": _LLAMA_LIKE,  # a LayerNorm1P named ``norm``
    "phi": _decoder("model.final_layernorm"),
    "phi3": _LLAMA_LIKE,
    "stablelm": _LLAMA_LIKE,  # a LayerNorm named ``norm``
    "starcoder2": _LLAMA_LIKE,  # a LayerNorm named ``norm``
    "olmo": _decoder("model.norm", sequence=None),  # no OlmoForSequenceClassification in transformers
    "olmo2": _decoder("model.norm", sequence=None),
    "olmo3": _decoder("model.norm", sequence=None),
    "olmoe": _decoder("model.norm", sequence=None),
    "granitemoe": _decoder("model.norm", sequence=None),  # logits_scaling, as Granite
    "cohere": _decoder("model.norm", sequence=None),  # logit_scale: applied by normxlogit.core.heads
    "granite": _decoder("model.norm", sequence=None),  # logits_scaling: applied by normxlogit.core.heads
    # --- families that cannot be supported ---------------------------------------------------------------------
    "funnel": HeadSpec(unsupported=(
        "Funnel Transformer mean-pools neighbouring positions between its encoder blocks (each block after the "
        "first halves the sequence), so from the second block on there is no vector per token: the sequence head "
        "(FunnelBaseModel) reads position 0 of the shortened sequence, and the masked-LM decoder rebuilds token "
        "vectors by repeating the pooled ones and adding the first block's states, so neither head reads one "
        "token's own final vector and hidden_states of different layers have different lengths.")),
    "bart": HeadSpec(unsupported="BART is " + _ENCODER_DECODER),
    "mbart": HeadSpec(unsupported="mBART is " + _ENCODER_DECODER),
    "t5": HeadSpec(unsupported="T5 is " + _ENCODER_DECODER),
    "mt5": HeadSpec(unsupported="mT5 is " + _ENCODER_DECODER),
}


def list_architectures() -> list[str]:
    """Model types whose heads are known (others work with ``head=``, or a generic reader that passes the self-check)."""
    return sorted(k for k, v in HEADS.items() if v.unsupported is None)
