"""Every family of the head table, every task transformers gives it, on a tiny random model.

For each ``model_type`` in ``nx.list_architectures()`` and each task (classification, regression = a one-output
sequence head, masked LM, causal LM): if transformers has a class for it, the table reads it and

- ``explain(..., method="logat")`` runs (its self-check raises ``HeadMismatchError`` on a wrong read) and LogAt at
  the explained position equals the model's own logit for the target (regression: 0), to 1e-4 relative;
- NormXLogit = norm x LogAt;
- scores do not depend on padding (a text alone, or beside a longer one) nor on the batch size (1 vs 3);
- decoders: a text ending in the EOS token, with a pad token of its own and with pad = EOS (as GPT-2 setups do);
- an intermediate layer's read equals the model's own modules computing head(final_norm(h_l)) (a forward hook feeds
  h_l to the model in place of its last layer's output, so its own final norm, head and logit post-processing run),
  and for decoders also an explicit ``lm_head/score(final_norm(h_l))``;
- a wrong ``head=`` (zeros, or the right head scaled) raises ``HeadMismatchError``.

If transformers has no class for the task, the table must not claim it. Families marked unsupported raise
``UnsupportedModelError`` with their reason.
"""

from __future__ import annotations

import functools
import inspect

import numpy as np
import pytest
import torch
import transformers as tf
from torch import nn
from transformers.models.auto import modeling_auto as auto

import normxlogit as nx
from normxlogit.core.architectures import HEADS
from normxlogit.core.heads import HeadMismatchError, UnsupportedModelError, resolve_head

from architectures_configs import DECODER_VOCAB, ENCODERS, decoder_tokenizer, tiny_config

TASKS = ("classification", "regression", "masked-lm", "causal-lm")
_MAPPINGS = {
    "classification": auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    "regression": auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    "masked-lm": auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    "causal-lm": auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
}
_READER = {"classification": "sequence", "regression": "sequence", "masked-lm": "masked_lm", "causal-lm": "causal_lm"}

FAMILIES = nx.list_architectures()
UNSUPPORTED = sorted(k for k, v in HEADS.items() if v.unsupported)

ENC_TEXTS = ["a gripping , funny film .", "dull .", "the plot holds together until the last act ."]
DEC_TEXTS = ["a gripping , funny film .", "dull !", "the plot holds together until the last act ."]
MASKED = ["the film was [MASK] .", "a [MASK] and moving story ."]
EOS_TEXTS = ["the film was good . </s>", "the plot holds together until the last act of the story ."]
LONG = "the plot holds together until the last act , and it is very funny and moving and not dull at all ."

#: Explicit final norms for the decoder check ``lm_head/score(final_norm(h_l))`` (test-side knowledge, from the
#: transformers modeling code; the hook-based check needs none).
FINAL_NORM = {
    "gpt2": "transformer.ln_f", "gpt_bigcode": "transformer.ln_f", "gpt_neo": "transformer.ln_f",
    "gptj": "transformer.ln_f", "bloom": "transformer.ln_f", "falcon": "transformer.ln_f",
    "gpt_neox": "gpt_neox.final_layer_norm", "biogpt": "biogpt.layer_norm", "phi": "model.final_layernorm",
    "opt": "model.decoder.final_layer_norm", "gemma3": "model.language_model.norm",
}


def model_class(family: str, task: str):
    name = _MAPPINGS[task].get(family)
    return getattr(tf, name) if name else None


def is_decoder_family(family: str) -> bool:
    return family not in ENCODERS


#: (family, task) -> a failure that lies outside the table (normxlogit.core.explain / heads), reported upstream.
#: (family, task) cases that fail today, with the reason (none: keep it that way)
KNOWN_GAPS: dict[tuple[str, str], str] = {}


def _cases(with_marks: bool = True, decoders_only: bool = False):
    for family in FAMILIES:
        for task in TASKS:
            if model_class(family, task) is None or (decoders_only and not is_decoder_family(family)):
                continue
            gap = KNOWN_GAPS.get((family, task))
            if gap and with_marks:
                yield pytest.param(family, task, marks=pytest.mark.xfail(reason=gap, raises=AttributeError))
            else:
                yield family, task


CASES = list(_cases())
PLAIN_CASES = list(_cases(with_marks=False))
DECODER_CASES = list(_cases(decoders_only=True))
MISSING = [(f, t) for f in FAMILIES for t in TASKS if model_class(f, t) is None]


# --- building -------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def dec_tokenizer(pad_is_eos: bool = False):
    return decoder_tokenizer(pad_is_eos)


@functools.lru_cache(maxsize=None)
def _build(family: str, task: str, vocab: int, variant: tuple = ()) -> nn.Module:
    torch.manual_seed(0)
    extra = {"num_labels": 1, "problem_type": "regression"} if task == "regression" else {"num_labels": 3}
    if task == "causal-lm" and family in ENCODERS:
        extra["is_decoder"] = True  # BertLMHeadModel, RobertaForCausalLM, ...: causal attention
    extra.update(dict(variant))
    config = tiny_config(family, vocab, **extra)
    model = model_class(family, task)(config).eval()
    _randomise_norms(model)
    return model


def _randomise_norms(model: nn.Module) -> None:
    """Norms start as the identity affine map (weight 1, bias 0), under which a norm applied twice equals a norm
    applied once; random affine parameters make a missing or repeated final norm visible."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if "norm" not in type(module).__name__.lower():
                continue
            for name, param in module.named_parameters(recurse=False):
                noise = torch.randn(param.shape, generator=generator)
                param.add_(0.5 * noise if name == "weight" else 0.3 * noise)


@pytest.fixture
def build(tokenizer):
    """``build(family, task, **variant)`` -> (model, tokenizer, texts)."""

    def make(family: str, task: str, **variant):
        tok = tokenizer if family in ENCODERS else dec_tokenizer()
        vocab = len(tokenizer) if family in ENCODERS else DECODER_VOCAB
        model = _build(family, task, vocab, tuple(sorted(variant.items())))
        texts = MASKED if task == "masked-lm" else (ENC_TEXTS if family in ENCODERS else DEC_TEXTS)
        return model, tok, texts

    return make


def task_kw(family: str, task: str) -> dict:
    # Gemma3ForConditionalGeneration's class name does not say its task (read it text-only as a causal LM).
    return {"task": task} if (family, task) == ("gemma3", "causal-lm") else {}


def encode(model, tok, text):
    enc = tok(text, return_tensors="pt")
    accepted = inspect.signature(model.forward).parameters
    return {k: v for k, v in enc.items() if k in accepted}


def own_logits(model, tok, text):
    with torch.no_grad():
        return model(**encode(model, tok, text)).logits[0]


def pad_id(model):
    return getattr(model.config.get_text_config(), "pad_token_id", None)


def expected_position(family, task, model, ids: list[int], mask_id) -> int:
    if task == "masked-lm":
        return ids.index(mask_id)
    if task == "causal-lm" or not is_decoder_family(family):
        return len(ids) - 1 if task == "causal-lm" else 0
    pad = pad_id(model)
    # transformers' decoder classifiers: the rightmost token that is not the pad token (BioGPT: count of non-pad - 1)
    if family == "biogpt":
        return sum(i != pad for i in ids) - 1
    return max(i for i, t in enumerate(ids) if t != pad)


def close(got: float, want: float, rel: float = 1e-4) -> bool:
    return abs(got - want) <= rel * max(1.0, abs(want))


def check_invariant(family, task, model, tok, texts, attrs):
    """LogAt at the explained position is the model's own logit for the target (regression: 0)."""
    for a, text in zip(attrs, texts):
        logits = own_logits(model, tok, text)
        ids = encode(model, tok, text)["input_ids"][0].tolist()
        assert a.position == expected_position(family, task, model, ids, tok.mask_token_id), (a.position, ids)
        if logits.dim() == 2:
            logits = logits[a.position]
        if task == "regression":
            assert abs(a.scores[a.position]) <= 1e-4 * max(1.0, abs(float(logits[0])))
            assert close(a.prediction, float(logits[0]))
        else:
            assert a.prediction == int(logits.argmax())
            got, want = float(a.scores[a.position]), float(logits[a.target])
            assert close(got, want), f"{family}/{task}: LogAt {got} at position {a.position}, model {want}"


# --- the table claims exactly the tasks transformers has ------------------------------------------------------
@pytest.mark.parametrize("family,task", MISSING)
def test_table_does_not_claim_a_task_without_a_class(family, task):
    assert getattr(HEADS[family], _READER[task]) is None, f"{family} has no {task} class in transformers"


@pytest.mark.parametrize("family,task", PLAIN_CASES)
def test_table_claims_every_task_with_a_class(family, task):
    assert getattr(HEADS[family], _READER[task]) is not None


# --- the invariant ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family,task", CASES)
def test_logat_at_explained_position_equals_model_output(build, family, task):
    model, tok, texts = build(family, task)
    attrs = nx.explain(model, tok, texts, method="logat", **task_kw(family, task))
    check_invariant(family, task, model, tok, texts, attrs)
    if task != "regression":  # a requested target too
        target = 1 if task.endswith("lm") else 2
        attrs = nx.explain(model, tok, texts, method="logat", target=target, **task_kw(family, task))
        assert all(a.target == target for a in attrs)
        check_invariant(family, task, model, tok, texts, attrs)


@pytest.mark.parametrize("family,task", CASES)
def test_normxlogit_is_norm_times_logat(build, family, task):
    model, tok, texts = build(family, task)
    kw = task_kw(family, task)
    nxl = nx.explain(model, tok, texts, method="normxlogit", **kw)
    lga = nx.explain(model, tok, texts, method="logat", **kw)
    nrm = nx.explain(model, tok, texts, method="norm", **kw)
    for a, b, c in zip(nxl, lga, nrm):
        np.testing.assert_allclose(a.scores, b.scores * c.scores, rtol=1e-5, atol=1e-6)
        assert (c.scores > 0).all()


@pytest.mark.parametrize("family,task", CASES)
def test_padding_and_batch_size_invariance(build, family, task):
    model, tok, texts = build(family, task)
    kw = task_kw(family, task)
    longer = LONG if task != "masked-lm" else LONG.replace("funny", "[MASK]")
    for text in texts[:2]:
        alone = nx.explain(model, tok, text, method="normxlogit", **kw)
        beside = nx.explain(model, tok, [text, longer], method="normxlogit", **kw)[0]
        assert alone.position == beside.position
        np.testing.assert_allclose(beside.scores, alone.scores, rtol=1e-5, atol=1e-5)
    one = nx.explain(model, tok, texts, method="normxlogit", batch_size=1, **kw)
    three = nx.explain(model, tok, texts, method="normxlogit", batch_size=3, **kw)
    for a, b in zip(one, three):
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-5)
        assert a.position == b.position and a.target == b.target


@pytest.mark.parametrize("pad_is_eos", [False, True], ids=["own-pad", "pad-is-eos"])
@pytest.mark.parametrize("family,task", DECODER_CASES)
def test_decoder_text_ending_in_eos(build, family, task, pad_is_eos):
    model, _, _ = build(family, task)
    tok = dec_tokenizer(pad_is_eos)
    assert tok(EOS_TEXTS[0])["input_ids"][-1] == tok.eos_token_id
    configs = [model.config] + ([model.config.text_config] if hasattr(model.config, "text_config") else [])
    saved = [c.pad_token_id for c in configs]
    try:
        for c in configs:
            c.pad_token_id = tok.pad_token_id
        attrs = nx.explain(model, tok, EOS_TEXTS, method="logat", **task_kw(family, task))
        check_invariant(family, task, model, tok, EOS_TEXTS, attrs)
    finally:
        for c, value in zip(configs, saved):
            c.pad_token_id = value


# --- layer-wise reads -------------------------------------------------------------------------------------------
def _last_block(model: nn.Module) -> nn.Module:
    """The module whose output is the last layer's hidden state (before any final norm), found by shape alone."""
    layers = len(model(**_probe_inputs(model), output_hidden_states=True).hidden_states) - 1
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == layers and "vision" not in name:
            return module[-1]
    for name, module in model.named_modules():  # ALBERT: one shared layer group applied `layers` times
        if name.endswith("albert_layer_groups"):
            return module[-1]
    raise AssertionError(f"no layer list in {type(model).__name__}")


def _probe_inputs(model):
    ids = torch.tensor([[1, 5, 6, 7]])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _with_last_layer(model, enc, replacement: torch.Tensor) -> torch.Tensor:
    """The model's logits when its last layer outputs ``replacement`` (B, T, H): its own final norm and head run."""
    block = _last_block(model)
    calls = {"n": 0, "total": 0}

    def count(module, args, output):
        calls["total"] += 1

    handle = block.register_forward_hook(count)
    with torch.no_grad():
        model(**enc)
    handle.remove()

    def swap(module, args, output):
        calls["n"] += 1
        if calls["n"] < calls["total"]:
            return None
        if isinstance(output, torch.Tensor):
            return replacement
        return (replacement,) + tuple(output[1:])

    handle = block.register_forward_hook(swap)
    try:
        with torch.no_grad():
            return model(**enc).logits[0]
    finally:
        handle.remove()


@pytest.mark.parametrize("family,task", CASES)
def test_intermediate_layer_is_the_models_own_head_on_that_layer(build, family, task):
    model, tok, texts = build(family, task)
    text = texts[0]
    layer = 1  # of 2: an intermediate layer
    target = None if task == "regression" else (3 if task.endswith("lm") else 1)
    a = nx.explain(model, tok, text, method="logat", layer=layer, target=target, **task_kw(family, task))
    assert a.layer == layer
    enc = encode(model, tok, text)
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
    h = out.hidden_states[layer]
    if task.endswith("lm"):
        expected = _with_last_layer(model, enc, h)[:, target].numpy()
    else:
        pooled = a.position
        expected = []
        for i in range(h.shape[1]):
            replaced = h.clone()
            replaced[0, pooled] = h[0, i]
            logits = _with_last_layer(model, enc, replaced)
            expected.append(abs(float(logits[0] - out.logits[0, 0])) if task == "regression" else float(logits[target]))
        expected = np.array(expected)
    np.testing.assert_allclose(a.scores, expected, rtol=1e-4, atol=1e-5)

    if is_decoder_family(family) and task != "regression":
        # the explicit logit lens: lm_head/score(final_norm(h_l)), then the model's logit post-processing
        norm = model.get_submodule(FINAL_NORM.get(family, "model.norm"))
        normed = norm(h[0])
        if family == "opt":
            normed = model.model.decoder.project_out(normed)
        head = model.score if task != "causal-lm" else model.get_output_embeddings()
        with torch.no_grad():
            logits = head(normed)
            cfg = model.config  # what the model's forward reads (multimodal Gemma 3 applies no soft-capping)
            if task == "causal-lm":
                logits = logits * getattr(model, "logit_scale", 1.0) / getattr(cfg, "logits_scaling", 1.0)
                if getattr(cfg, "final_logit_softcapping", None):
                    cap = cfg.final_logit_softcapping
                    logits = torch.tanh(logits / cap) * cap
        np.testing.assert_allclose(a.scores, logits[:, target].numpy(), rtol=1e-4, atol=1e-5)


# --- a wrong head is caught -------------------------------------------------------------------------------------
@pytest.mark.parametrize("family,task", CASES)
def test_wrong_head_raises_head_mismatch(build, family, task):
    model, tok, texts = build(family, task)
    kw = task_kw(family, task)
    right = resolve_head(model, kw.get("task"))
    classes = right(nx_hidden(model, tok, texts[0])).shape[-1]
    # the table's own reader passed as head= is accepted...
    ok = nx.explain(model, tok, texts, method="logat", head=lambda s: right(s), **kw)
    check_invariant(family, task, model, tok, texts, ok)
    # ...a reader of zeros, or the right one scaled, is not
    with pytest.raises(HeadMismatchError):
        nx.explain(model, tok, texts, method="logat", head=lambda s: torch.zeros(s.shape[0], classes), **kw)
    with pytest.raises(HeadMismatchError):
        nx.explain(model, tok, texts, method="logat", head=lambda s: 1.5 * right(s) + 0.5, **kw)


def nx_hidden(model, tok, text):
    """The final hidden state of ``text`` (1, T, H), as the head reads it."""
    with torch.no_grad():
        return model(**encode(model, tok, text), output_hidden_states=True).hidden_states[-1]



# --- configurations within a family -----------------------------------------------------------------------------
@pytest.mark.parametrize("family,task,variant", [
    # legacy=False: the head multiplies by the word embeddings itself (transformers ties its ``dense`` to the
    # word embeddings when tie_word_embeddings=True, which breaks the model's own forward, so untie)
    pytest.param("deberta", "masked-lm", {"legacy": False, "tie_word_embeddings": False}),
    pytest.param("deberta-v2", "masked-lm", {"legacy": False, "tie_word_embeddings": False}),
    ("mobilebert", "classification", {"classifier_activation": False}),
    ("opt", "causal-lm", {"do_layer_norm_before": False, "word_embed_proj_dim": 32}),
    ("opt", "classification", {"do_layer_norm_before": False, "word_embed_proj_dim": 32}),
    ("gpt_neox", "causal-lm", {"use_parallel_residual": False}),
    ("falcon", "causal-lm", {"new_decoder_architecture": True, "num_kv_heads": 2}),
    ("falcon", "causal-lm", {"alibi": True, "parallel_attn": False}),
])
def test_family_variants(build, family, task, variant):
    model, tok, texts = build(family, task, **variant)
    attrs = nx.explain(model, tok, texts, method="logat")
    check_invariant(family, task, model, tok, texts, attrs)
    lens = nx.explain(model, tok, texts[0], method="logat", layer=1, target=None if task == "regression" else 1)
    assert np.isfinite(lens.scores).all()


def test_modernbert_mean_pooling_is_a_clear_error(build):
    model, tok, texts = build("modernbert", "classification", classifier_pooling="mean")
    with pytest.raises(UnsupportedModelError, match="classifier_pooling='mean'"):
        nx.explain(model, tok, texts, method="logat")


# --- unsupported families ---------------------------------------------------------------------------------------
def _unsupported_model(family):
    torch.manual_seed(0)
    small = dict(vocab_size=64, d_model=32, pad_token_id=0, bos_token_id=1, eos_token_id=2, num_labels=3)
    if family in ("bart", "mbart"):
        cls = tf.BartConfig if family == "bart" else tf.MBartConfig
        config = cls(encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                     encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64, **small)
        name = "BartForSequenceClassification" if family == "bart" else "MBartForSequenceClassification"
    elif family in ("t5", "mt5"):
        cls = tf.T5Config if family == "t5" else tf.MT5Config
        config = cls(num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=8, d_ff=32,
                     decoder_start_token_id=0, **small)
        name = "T5ForSequenceClassification" if family == "t5" else "MT5ForSequenceClassification"
    elif family == "funnel":
        config = tf.FunnelConfig(vocab_size=64, block_sizes=[1, 1], d_model=32, n_head=2, d_head=8, d_inner=32,
                                 num_labels=3, pad_token_id=0)
        name = "FunnelForSequenceClassification"
    else:
        raise KeyError(family)
    return getattr(tf, name)(config).eval()


def test_unsupported_families_are_listed_apart():
    assert set(UNSUPPORTED).isdisjoint(FAMILIES)
    for family in UNSUPPORTED:
        assert len(HEADS[family].unsupported) > 40


@pytest.mark.parametrize("family", UNSUPPORTED)
def test_unsupported_family_says_why(family):
    model = _unsupported_model(family)
    tok = dec_tokenizer()
    with pytest.raises(UnsupportedModelError, match="not supported") as err:
        nx.explain(model, tok, DEC_TEXTS, method="logat")
    assert HEADS[family].unsupported[:40] in str(err.value)
