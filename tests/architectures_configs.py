"""Tiny configurations (2 layers, 32 wide) of every family in the head table, and a small word-level tokenizer for
the decoders. Nothing is downloaded: every model is built from a config with random weights."""

from __future__ import annotations

import transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers, processors

H, HEADS, KV, INTER, LAYERS, POS = 32, 4, 2, 64, 2, 64

#: Families read with the MiniLM (WordPiece, [CLS] ... [SEP]) tokenizer; all others use :func:`decoder_tokenizer`.
ENCODERS = {"bert", "albert", "roberta", "xlm-roberta", "camembert", "mpnet", "electra", "deberta-v2", "deberta",
            "distilbert", "modernbert", "mobilebert", "roformer", "esm"}

#: The transformers class of each (family, task), None where transformers has none.
TASK_KEYS = {"classification": "seq", "regression": "seq", "masked-lm": "mlm", "causal-lm": "clm"}

# Words of the test texts: the decoder tokenizer knows these (others map to <unk>).
WORDS = ("the a an film plot story was is good bad dull funny gripping moving and until last act holds together "
         "it very not at all of to in . , ! ?").split()
PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"


def decoder_tokenizer(pad_is_eos: bool = False) -> tf.PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer of about 40 tokens that prepends ``<s>`` (as Llama's does). Ids: ``<pad>`` 0,
    ``<s>`` 1, ``</s>`` 2, ``<unk>`` 3. ``pad_is_eos``: pad with ``</s>`` (as GPT-2 setups do)."""
    vocab = {t: i for i, t in enumerate([PAD, BOS, EOS, UNK, *WORDS])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                                       special_tokens=[(BOS, 1)])
    tok = tf.PreTrainedTokenizerFast(tokenizer_object=raw, bos_token=BOS, eos_token=EOS, unk_token=UNK,
                                     pad_token=EOS if pad_is_eos else PAD, model_max_length=POS)
    tok.padding_side = "right"
    return tok


DECODER_VOCAB = 4 + len(WORDS)


def _ids(pad: int) -> dict:
    return dict(pad_token_id=pad, bos_token_id=1, eos_token_id=2)


def tiny_config(family: str, vocab_size: int, pad: int = 0, **extra) -> tf.PretrainedConfig:
    """A two-layer, 32-wide configuration of ``family`` (its ``model_type``)."""
    ids = _ids(pad)
    llama_like = dict(vocab_size=vocab_size, hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                      num_key_value_heads=KV, intermediate_size=INTER, max_position_embeddings=POS, **ids, **extra)
    bert_like = dict(vocab_size=vocab_size, hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                     intermediate_size=INTER, pad_token_id=pad, **extra)
    if family == "bert":
        return tf.BertConfig(**bert_like)
    if family in ("roberta", "xlm-roberta", "camembert"):
        cls = {"roberta": tf.RobertaConfig, "xlm-roberta": tf.XLMRobertaConfig, "camembert": tf.CamembertConfig}
        return cls[family](max_position_embeddings=130, **bert_like)
    if family == "mpnet":
        return tf.MPNetConfig(max_position_embeddings=130, **bert_like)
    if family == "albert":
        return tf.AlbertConfig(embedding_size=16, **bert_like)
    if family == "electra":
        return tf.ElectraConfig(embedding_size=16, **bert_like)
    if family == "deberta-v2":
        return tf.DebertaV2Config(relative_attention=True, position_buckets=16, pos_att_type=["p2c", "c2p"],
                                  max_relative_positions=64, **bert_like)
    if family == "deberta":
        return tf.DebertaConfig(relative_attention=True, pos_att_type=["p2c", "c2p"], max_relative_positions=64,
                                **bert_like)
    if family == "distilbert":
        return tf.DistilBertConfig(vocab_size=vocab_size, dim=H, n_layers=LAYERS, n_heads=HEADS, hidden_dim=INTER,
                                   pad_token_id=pad, **extra)
    if family == "mobilebert":
        return tf.MobileBertConfig(embedding_size=16, intra_bottleneck_size=16,
                                   num_feedforward_networks=1, **bert_like)
    if family == "esm":
        # token_dropout=False: with it (ESM-2's setting) transformers 4.57 rescales embeddings by the share of
        # [MASK] tokens over the *padded* length (EsmModel does not pass attention_mask to its embeddings), so the
        # model's own masked-LM output depends on padding, and the [MASK] embedding is zero (norm 0).
        return tf.EsmConfig(max_position_embeddings=130, position_embedding_type="rotary", mask_token_id=103,
                            token_dropout=False, emb_layer_norm_before=False, **bert_like)
    if family == "roformer":
        return tf.RoFormerConfig(embedding_size=16, max_position_embeddings=128, **bert_like)
    if family == "modernbert":
        return tf.ModernBertConfig(vocab_size=vocab_size, hidden_size=H, num_hidden_layers=LAYERS,
                                   num_attention_heads=HEADS, intermediate_size=INTER, max_position_embeddings=128,
                                   global_attn_every_n_layers=2, local_attention=16, pad_token_id=pad,
                                   bos_token_id=101, eos_token_id=102, cls_token_id=101, sep_token_id=102,
                                   attn_implementation="eager", **extra)
    if family == "gpt2":
        return tf.GPT2Config(vocab_size=vocab_size, n_embd=H, n_layer=LAYERS, n_head=HEADS, n_inner=INTER,
                             n_positions=POS, **ids, **extra)
    if family == "gpt_bigcode":
        return tf.GPTBigCodeConfig(vocab_size=vocab_size, n_embd=H, n_layer=LAYERS, n_head=HEADS, n_inner=INTER,
                                   n_positions=POS, multi_query=True, **ids, **extra)
    if family == "gpt_neo":
        return tf.GPTNeoConfig(vocab_size=vocab_size, hidden_size=H, num_layers=LAYERS, num_heads=HEADS,
                               intermediate_size=INTER, attention_types=[[["global", "local"], 1]], window_size=4,
                               max_position_embeddings=POS, **ids, **extra)
    if family == "gptj":
        return tf.GPTJConfig(vocab_size=vocab_size, n_embd=H, n_layer=LAYERS, n_head=HEADS, n_inner=INTER,
                             rotary_dim=4, n_positions=POS, **ids, **extra)
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(vocab_size=vocab_size, hidden_size=H, num_hidden_layers=LAYERS,
                                num_attention_heads=HEADS, intermediate_size=INTER, rotary_pct=0.5,
                                max_position_embeddings=POS, **ids, **extra)
    if family == "bloom":
        return tf.BloomConfig(vocab_size=vocab_size, hidden_size=H, n_layer=LAYERS, n_head=HEADS, **ids, **extra)
    if family == "falcon":
        return tf.FalconConfig(vocab_size=vocab_size, hidden_size=H, num_hidden_layers=LAYERS,
                               num_attention_heads=HEADS, max_position_embeddings=POS, **ids, **extra)
    if family == "opt":
        # word_embed_proj_dim != hidden_size: OPT-350m's project_out after the final norm.
        return tf.OPTConfig(vocab_size=vocab_size, hidden_size=H, num_hidden_layers=LAYERS, ffn_dim=INTER,
                            num_attention_heads=HEADS, max_position_embeddings=POS,
                            **ids, **{"word_embed_proj_dim": 16, **extra})
    if family == "biogpt":
        return tf.BioGptConfig(vocab_size=vocab_size, hidden_size=H, num_hidden_layers=LAYERS,
                               num_attention_heads=HEADS, intermediate_size=INTER, max_position_embeddings=POS,
                               **ids, **extra)
    if family == "phi":
        return tf.PhiConfig(partial_rotary_factor=0.5, **llama_like)
    if family == "stablelm":
        return tf.StableLmConfig(partial_rotary_factor=0.5, **llama_like)
    if family in ("gemma", "gemma2", "gemma3_text"):
        cls = {"gemma": tf.GemmaConfig, "gemma2": tf.Gemma2Config, "gemma3_text": tf.Gemma3TextConfig}[family]
        more = {} if family == "gemma" else dict(query_pre_attn_scalar=8, sliding_window=4,
                                                 final_logit_softcapping=3.0, attn_logit_softcapping=5.0)
        return cls(head_dim=8, **more, **llama_like)
    if family == "gemma3":
        text = tf.Gemma3TextConfig(head_dim=8, query_pre_attn_scalar=8, sliding_window=4,
                                   final_logit_softcapping=3.0, **llama_like)
        vision = tf.SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=28, patch_size=14)
        return tf.Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4,
                               boi_token_index=vocab_size - 3, eoi_token_index=vocab_size - 2,
                               image_token_index=vocab_size - 1, **{k: v for k, v in ids.items()},
                               **{k: v for k, v in extra.items()})
    if family == "cohere":
        return tf.CohereConfig(logit_scale=0.5, **llama_like)
    if family == "granite":
        return tf.GraniteConfig(logits_scaling=4.0, embedding_multiplier=2.0, residual_multiplier=0.5,
                                attention_multiplier=0.25, **llama_like)
    if family == "mixtral":
        return tf.MixtralConfig(num_local_experts=4, num_experts_per_tok=2, **llama_like)
    if family == "qwen3":
        return tf.Qwen3Config(head_dim=8, **llama_like)
    if family in ("qwen2_moe", "qwen3_moe"):
        cls = tf.Qwen2MoeConfig if family == "qwen2_moe" else tf.Qwen3MoeConfig
        more = dict(shared_expert_intermediate_size=32) if family == "qwen2_moe" else dict(head_dim=8)
        return cls(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, decoder_sparse_step=1, **more,
                   **llama_like)
    if family == "olmoe":
        return tf.OlmoeConfig(num_experts=4, num_experts_per_tok=2, **llama_like)
    if family == "phimoe":
        return tf.PhimoeConfig(num_local_experts=4, num_experts_per_tok=2, **llama_like)
    if family == "granitemoe":
        return tf.GraniteMoeConfig(num_local_experts=4, num_experts_per_tok=2, logits_scaling=4.0,
                                   embedding_multiplier=2.0, residual_multiplier=0.5, attention_multiplier=0.25,
                                   **llama_like)
    if family in ("glm", "glm4", "helium", "smollm3", "ministral", "olmo3", "nemotron"):
        cls = {"glm": tf.GlmConfig, "glm4": tf.Glm4Config, "helium": tf.HeliumConfig, "smollm3": tf.SmolLM3Config,
               "ministral": tf.MinistralConfig, "olmo3": tf.Olmo3Config, "nemotron": tf.NemotronConfig}[family]
        return cls(head_dim=8, **llama_like)
    if family == "deepseek_v3":
        return tf.DeepseekV3Config(moe_intermediate_size=16, n_shared_experts=1, n_routed_experts=4,
                                   num_experts_per_tok=2, n_group=1, topk_group=1, first_k_dense_replace=1,
                                   kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=4,
                                   v_head_dim=8, **{**llama_like, "num_key_value_heads": HEADS})
    simple = {"llama": tf.LlamaConfig, "mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config, "phi3": tf.Phi3Config,
              "olmo": tf.OlmoConfig, "olmo2": tf.Olmo2Config, "starcoder2": tf.Starcoder2Config}
    if family in simple:
        return simple[family](**llama_like)
    raise KeyError(f"no tiny config for {family!r}")
