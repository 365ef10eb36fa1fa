"""DecompX: completeness on every supported family, invariances, a slow per-part reference, and clear errors."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as tf

import normxlogit as nx
from normxlogit.core.heads import HEADS, UnsupportedModelError
from normxlogit.core.layouts import FAMILIES, UNSUPPORTED, model_structure
from normxlogit.methods.decompx import decompose, plan_chunks
from normxlogit.methods.decompx_rules import add_bias_

from conftest import tiny_config

torch.set_num_threads(1)

TEXTS = ["a gripping , funny film .", "dull .", "it is not the worst movie of the year , but it is close ."]
SUPPORTED = ["bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert", "albert"]


def _build(family: str, task: str, tokenizer, **config_extra) -> tf.PreTrainedModel:
    """A seeded tiny model of ``family`` (conftest's configs; XLM-R and CamemBERT built like RoBERTa)."""
    torch.manual_seed(0)
    extra = {"num_labels": 1, "problem_type": "regression"} if task == "regression" else {"num_labels": 3}
    extra.update(config_extra)
    if family in ("xlm-roberta", "camembert"):
        cls = tf.XLMRobertaConfig if family == "xlm-roberta" else tf.CamembertConfig
        config = cls(vocab_size=len(tokenizer), pad_token_id=0, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=130, **extra)
    else:
        config = tiny_config(family, len(tokenizer), **extra)
    return tf.AutoModelForSequenceClassification.from_config(config).eval()


def _randomise_biases(model: tf.PreTrainedModel, seed: int = 1) -> tf.PreTrainedModel:
    """Fresh models have zero biases and unit LayerNorms; give them seeded values so every bias rule is exercised."""
    model = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name.lower():
                param.add_(0.2 * torch.randn(param.shape, generator=generator))
    return model


@pytest.fixture(scope="module")
def models(tokenizer):
    cache: dict = {}

    def get(family: str, task: str = "classification"):
        if (family, task) not in cache:
            cache[family, task] = _randomise_biases(_build(family, task, tokenizer))
        return cache[family, task]

    return get


def _encode(tokenizer, texts=TEXTS):
    return dict(tokenizer(texts, padding=True, return_tensors="pt"))


# --- completeness: contributions + bias part = the model's logits, every class ----------------------------------
@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("family", SUPPORTED)
def test_contributions_sum_to_every_logit(models, tokenizer, family, task):
    model = models(family, task)
    enc = _encode(tokenizer)
    with torch.no_grad():
        logits = model(**{k: v for k, v in enc.items() if k != "token_type_ids" or family != "distilbert"}).logits
    for bias in ("absdot", "separate"):
        out = decompose(model, enc, bias=bias)
        assert out.contributions.shape == (3, enc["input_ids"].shape[1], logits.shape[1])
        torch.testing.assert_close(out.logits, logits)
        torch.testing.assert_close(out.total, logits, rtol=1e-4, atol=1e-4 * float(logits.abs().max()))
        assert out.completeness_error() < 1e-4
        padding = enc["attention_mask"] == 0
        assert (out.contributions[padding] == 0).all()
        if bias == "absdot":  # every bias is shared out among the tokens
            assert out.bias.abs().max() < 1e-6
        else:
            assert out.bias.abs().max() > 1e-3  # the randomised biases reach the logits through the bias part


def test_bias_modes_and_fused_feed_forward_agree(models, tokenizer):
    model = models("bert")
    enc = _encode(tokenizer)
    plain = decompose(model, enc, bias="separate", fused_ffn=False)
    fused = decompose(model, enc, bias="separate", fused_ffn=True)
    torch.testing.assert_close(fused.contributions, plain.contributions, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused.bias, plain.bias, rtol=1e-5, atol=1e-5)
    absdot = decompose(model, enc, bias="absdot", fused_ffn=False)
    torch.testing.assert_close(decompose(model, enc, bias="absdot", fused_ffn=True).contributions,
                               absdot.contributions, rtol=1e-5, atol=1e-5)
    # The modes differ only in where the biases go: both are complete, their token scores differ.
    assert not torch.allclose(absdot.contributions, plain.contributions, atol=1e-3)


def test_bias_rules_and_chunk_plan():
    parts = torch.zeros(2, 3, 4)  # (positions, parts incl. the bias part, width)
    parts[0, 0] = torch.tensor([1.0, 0, 0, 0])
    parts[0, 1] = torch.tensor([0, -3.0, 0, 0])
    bias = torch.tensor([1.0, 1.0, 0, 0])
    out = add_bias_(parts.clone(), bias, "absdot")
    torch.testing.assert_close(out[0, 0], parts[0, 0] + 0.25 * bias)  # shares |<part, b>| = 1 : 3
    torch.testing.assert_close(out[0, 1], parts[0, 1] + 0.75 * bias)
    torch.testing.assert_close(out[1, 2], bias)  # nothing to share with: the bias part keeps it
    torch.testing.assert_close(out.sum(1), parts.sum(1) + bias)
    torch.testing.assert_close(add_bias_(parts.clone(), bias, "separate")[:, 2], bias.expand(2, 4))
    assert plan_chunks([5, 9, 5, 9, 7], width=1, chunk_size=None, budget=10**6) == [[1, 3], [4], [0, 2]]
    assert plan_chunks([5, 9, 5, 9, 7], width=1, chunk_size=None, budget=9 * 10) == [[1], [3], [4], [0, 2]]
    assert plan_chunks([5, 9, 5, 9, 7], width=1, chunk_size=2, budget=1) == [[1, 3], [4, 0], [2]]


# --- a slow reference: one part at a time, real quantities captured from the model's own modules ----------------
def _share(parts: list[torch.Tensor], bias: torch.Tensor, mode: str) -> None:
    """Add ``bias`` to a list of parts (last = bias part), in place, by the DecompX rule."""
    if mode == "separate":
        parts[-1] += bias
        return
    weights = torch.stack([(p @ bias).abs() for p in parts[:-1]])  # (K-1, positions)
    total = weights.sum(0)
    for k in range(len(parts) - 1):
        parts[k] += torch.where(total > 0, weights[k] / torch.where(total > 0, total, 1), 0)[:, None] * bias
    parts[-1] += torch.where(total > 0, 0.0, 1.0)[:, None] * bias


def _slow_decompx(model, input_ids: torch.Tensor, mode: str):
    """DecompX for one unpadded BERT-layout sentence, looping over parts, with hooks on the model's modules."""
    captured: dict = {}
    handles = []
    base = model.base_model
    for l, layer in enumerate(base.encoder.layer):
        handles.append(layer.attention.output.LayerNorm.register_forward_pre_hook(
            lambda mod, args, l=l: captured.__setitem__(("ln1", l), args[0][0])))
        handles.append(layer.output.LayerNorm.register_forward_pre_hook(
            lambda mod, args, l=l: captured.__setitem__(("ln2", l), args[0][0])))
        handles.append(layer.intermediate.dense.register_forward_hook(
            lambda mod, args, out, l=l: captured.__setitem__(("z", l), out[0])))
    head_dense = base.pooler.dense if hasattr(base, "pooler") and base.pooler is not None else model.classifier.dense
    handles.append(head_dense.register_forward_hook(lambda mod, args, out: captured.__setitem__("head", out[0])))
    try:
        with torch.no_grad():
            out = model(input_ids=input_ids, output_hidden_states=True, output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    length = input_ids.shape[1]
    h0 = out.hidden_states[0][0]
    parts = [torch.zeros_like(h0) for _ in range(length + 1)]
    for k in range(length):
        parts[k][k] = h0[k]

    def layer_norm(parts, real, norm):
        std = (real.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()
        parts = [(p - p.mean(-1, keepdim=True)) / std * norm.weight for p in parts]
        _share(parts, norm.bias, mode)
        return parts

    with torch.no_grad():
        for l, layer in enumerate(base.encoder.layer):
            sa = layer.attention.self
            heads, size = sa.num_attention_heads, sa.attention_head_size
            probs = out.attentions[l][0]  # (heads, T, T): the model's own attention weights
            w_o = layer.attention.output.dense.weight
            new = []
            for p in parts:  # one part at a time
                values = (p @ sa.value.weight.T).view(length, heads, size)
                context = torch.einsum("hij,jhd->ihd", probs, values).reshape(length, heads * size)
                new.append(p + context @ w_o.T)
            _share(new, w_o @ sa.value.bias + layer.attention.output.dense.bias, mode)
            parts = layer_norm(new, captured["ln1", l], layer.attention.output.LayerNorm)
            z = captured["z", l]
            ratio = layer.intermediate.intermediate_act_fn(z) / z
            inner = [p @ layer.intermediate.dense.weight.T for p in parts]
            _share(inner, layer.intermediate.dense.bias, mode)
            ffn = [(q * ratio) @ layer.output.dense.weight.T for q in inner]
            _share(ffn, layer.output.dense.bias, mode)
            parts = layer_norm([p + f for p, f in zip(parts, ffn)], captured["ln2", l], layer.output.LayerNorm)
        pooled = [p[:1] for p in parts]  # position 0, kept 2-D for _share
        pre = [p @ head_dense.weight.T for p in pooled]
        _share(pre, head_dense.bias, mode)
        z = captured["head"][None]
        activation = base.pooler.activation if head_dense is not getattr(model.classifier, "dense", None) \
            else model.classifier.activation
        ratio = activation(z) / z
        final = model.classifier if isinstance(model.classifier, torch.nn.Linear) else model.classifier.out_proj
        logits = [(p * ratio) @ final.weight.T for p in pre]
        _share(logits, final.bias, mode)
    return torch.cat(logits[:-1]), logits[-1][0], out.logits[0]


@pytest.mark.parametrize("family", ["bert", "electra"])
@pytest.mark.parametrize("mode", ["absdot", "separate"])
def test_matches_slow_per_part_reference(tokenizer, family, mode):
    model = _randomise_biases(_build(family, "classification", tokenizer, attn_implementation="eager"))
    model.config._attn_implementation = "eager"
    ids = tokenizer(TEXTS[0], return_tensors="pt")["input_ids"]
    slow_tokens, slow_bias, logits = _slow_decompx(model, ids, mode)
    torch.testing.assert_close(slow_tokens.sum(0) + slow_bias, logits, rtol=1e-4, atol=1e-5)  # complete too
    fast = decompose(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, bias=mode)
    torch.testing.assert_close(fast.contributions[0], slow_tokens, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast.bias[0], slow_bias, rtol=1e-4, atol=1e-5)


# --- invariances --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_padding_batch_size_and_chunk_invariance(models, tokenizer, family):
    model = models(family)
    texts = TEXTS + ["fine ."]
    alone = [nx.explain(model, tokenizer, t, method="decompx") for t in texts]
    for batch_size in (1, 4):
        together = nx.explain(model, tokenizer, texts, method="decompx", batch_size=batch_size)
        for a, b in zip(alone, together):
            assert a.tokens == b.tokens
            torch.testing.assert_close(torch.tensor(b.scores), torch.tensor(a.scores), rtol=1e-5, atol=1e-5)
    enc = _encode(tokenizer, texts)
    whole = decompose(model, enc)
    for chunk in (1, 3):
        torch.testing.assert_close(decompose(model, enc, chunk_size=chunk).contributions, whole.contributions,
                                   rtol=1e-5, atol=1e-6)
    # a text beside a much longer one: the short one's scores do not depend on its padding
    short, long = TEXTS[1], " ".join(TEXTS * 3)
    pair = nx.explain(model, tokenizer, [short, long], method="decompx", batch_size=2)
    torch.testing.assert_close(torch.tensor(pair[0].scores), torch.tensor(alone[1].scores), rtol=1e-5, atol=1e-5)


# --- the registered method ----------------------------------------------------------------------------------------
def test_registered_method_reads_the_target_logit(models, tokenizer):
    assert "decompx" in nx.list_methods()
    spec = nx.get_method("decompx")
    assert spec.signed and not spec.needs_grad
    model = models("bert")
    enc = _encode(tokenizer)
    out = decompose(model, enc)
    for target in (0, 2):
        attrs = nx.explain(model, tokenizer, TEXTS, method="decompx", target=target)
        for i, a in enumerate(attrs):
            n = len(a.tokens)
            torch.testing.assert_close(torch.tensor(a.scores).float(), out.contributions[i, :n, target],
                                       rtol=1e-5, atol=1e-5)
            # the scores sum to the explained logit (absdot: no bias part left)
            assert abs(a.scores.sum() - a.meta["target_logit"]) < 1e-4 * max(1.0, abs(a.meta["target_logit"]))


def test_regression_scores_are_signed_contributions_to_the_output(models, tokenizer):
    model = models("roberta", "regression")
    out = decompose(model, _encode(tokenizer), bias="separate")
    attrs = nx.explain(model, tokenizer, TEXTS, method="decompx", bias="separate")
    for i, a in enumerate(attrs):
        n = len(a.tokens)
        torch.testing.assert_close(torch.tensor(a.scores).float(), out.contributions[i, :n, 0], rtol=1e-5, atol=1e-6)
        assert abs(a.scores.sum() + float(out.bias[i, 0]) - a.prediction) < 1e-4 * max(1.0, abs(a.prediction))
    assert (out.contributions[..., 0] < 0).any() and (out.contributions[..., 0] > 0).any()  # signed, not |.|


def test_evaluate_methods_runs_decompx(models, tokenizer):
    model = models("bert")
    results = nx.evaluate_methods(model, tokenizer, TEXTS, ["decompx", "normxlogit"], ratios=(0.0, 0.5, 1.0))
    assert [r.method for r in results] == ["decompx", "normxlogit"]


# --- the layer-structure table in core -----------------------------------------------------------------------------
def test_layouts_table_is_consistent_with_heads():
    assert set(FAMILIES) <= set(HEADS)  # every family laid out in core.layouts has its heads in core.heads
    assert not set(FAMILIES) & set(UNSUPPORTED)


def test_model_structure_lists_every_layer(models):
    for family in SUPPORTED:
        model = models(family)
        layers, head = model_structure(model, "DecompX")
        assert len(layers) == model.config.num_hidden_layers and all(len(step) >= 1 for step in layers)
        assert [kind for kind, _ in head] == ["linear", "activation", "linear"]
        assert head[-1][1].out_features == model.config.num_labels


# --- clear errors -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["gpt2", "llama", "deberta-v2"])
def test_unsupported_families_say_why(make_tiny, family):
    model, tokenizer = make_tiny(family, "classification")
    with pytest.raises(UnsupportedModelError, match="DecompX is implemented for post-LayerNorm BERT-family"):
        nx.explain(model, tokenizer, TEXTS[0], method="decompx")


def test_other_unsupported_settings(make_tiny, tokenizer):
    mlm, _ = make_tiny("bert", "masked-lm")
    with pytest.raises(UnsupportedModelError, match="sequence classification and regression"):
        nx.explain(mlm, tokenizer, "the film was [MASK] .", method="decompx")
    relative = _build("bert", "classification", tokenizer, position_embedding_type="relative_key")
    with pytest.raises(UnsupportedModelError, match="absolute position"):
        decompose(relative, _encode(tokenizer))
    with pytest.raises(ValueError, match="bias must be one of"):
        decompose(_build("bert", "classification", tokenizer), _encode(tokenizer), bias="cls")


# --- the real fine-tuned MiniLM -----------------------------------------------------------------------------------
def _sst2_cached() -> bool:
    try:
        from normxlogit.training import cached_path

        return (cached_path("sst2") / "normxlogit.json").is_file()
    except Exception:  # pragma: no cover - depends on the environment
        return False


@pytest.mark.skipif(not _sst2_cached(), reason="the fine-tuned SST-2 MiniLM is not cached yet (nx.pretrained('sst2'))")
def test_complete_on_fine_tuned_minilm():
    model, tokenizer = nx.pretrained("sst2")
    enc = _encode(tokenizer)
    with torch.no_grad():
        logits = model(**enc).logits
    for bias in ("absdot", "separate"):
        out = decompose(model, enc, bias=bias)
        torch.testing.assert_close(out.total, logits, rtol=1e-4, atol=1e-4 * float(logits.abs().max()))
        assert out.completeness_error() < 1e-5
