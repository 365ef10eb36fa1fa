"""Gradient baselines (captum) and the random baseline: the attribution path, exact gradients, invariances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import normxlogit as nx
from normxlogit.methods.gradients import (
    embedding_forward,
    raw_grad_x_input,
    raw_gradients,
    ig_baseline,
    raw_integrated_gradients,
)
from normxlogit.core.explain import forward_batch
from normxlogit.core.heads import resolve_head
from normxlogit.core.inputs import collate, model_max_length, tokenize

from conftest import DECODERS, ENCODERS, FAMILIES

TEXTS = ["a gripping , funny film .", "dull .", "the plot holds together until the last act ."]
PAIRS = [("a man plays a flute .", "a man is playing the flute ."), ("a cat .", "the market fell .")]
GRADIENT_METHODS = ["gradient_norm", "grad_x_input", "integrated_gradients"]


def make_batch(model, tok, texts, task=None, target=None):
    """The Batch nx.explain hands to methods, for ``texts`` in one padded batch."""
    head = resolve_head(model, task)
    rows = tokenize(tok, list(texts), model_max_length(model, tok))
    inputs, special = collate(tok, rows, torch.device("cpu"))
    return forward_batch(model, tok, head, inputs, special, target=target, layer=head_layers(model),
                         norm_source="embedding_output", indices=list(range(len(rows))), seed=0)


def head_layers(model):
    return getattr(model.config, "num_hidden_layers", None) or model.config.n_layer


def _cases():
    for family in FAMILIES:
        yield family, "classification"
        yield family, "regression"
    for family in ENCODERS[:2]:
        yield family, "masked-lm"
    for family in DECODERS:
        yield family, "causal-lm"


@pytest.mark.parametrize("family,task", list(_cases()))
def test_attribution_path_reproduces_the_models_logits(make_tiny, family, task):
    """Positions and token types are added once: the hooked forward on the word embeddings IS the model."""
    model, tok = make_tiny(family, task)
    texts = ["the film was [MASK] .", "a [MASK] story about a man ."] if task == "masked-lm" else TEXTS
    batch = make_batch(model, tok, texts)
    forward = embedding_forward(batch)
    embeddings, extra = forward.arguments(batch)
    with torch.no_grad():
        through_path = forward(embeddings, *extra)
        normal = batch.logits  # the model's own forward on input_ids, at the explained position
    torch.testing.assert_close(through_path, normal, atol=1e-5, rtol=1e-5)
    # Feeding the embedding *output* back (the authors' inputs_embeds route) adds positions twice: it differs.
    if family == "bert" and task == "classification":
        with torch.no_grad():
            twice = model(inputs_embeds=batch.hidden_states[0], attention_mask=batch.attention_mask,
                          token_type_ids=batch.inputs["token_type_ids"]).logits
        assert not torch.allclose(twice, normal, atol=1e-6, rtol=1e-3)


def test_gradients_equal_plain_autograd(make_tiny):
    model, tok = make_tiny("bert", "classification")
    batch = make_batch(model, tok, TEXTS, target=[2, 0, 1])
    grads = raw_gradients(batch)
    gxi = raw_grad_x_input(batch)
    for row, text in enumerate(TEXTS):
        enc = tok(text, return_tensors="pt")
        emb = model.get_input_embeddings()(enc["input_ids"]).detach().requires_grad_()
        handle = model.get_input_embeddings().register_forward_hook(lambda m, i, o: emb)
        try:
            logit = model(**enc).logits[0, [2, 0, 1][row]]
        finally:
            handle.remove()
        (expected,) = torch.autograd.grad(logit, emb)
        n = enc["input_ids"].shape[1]
        torch.testing.assert_close(grads[row, :n], expected[0], atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(gxi[row, :n], expected[0] * emb[0].detach(), atol=1e-6, rtol=1e-4)


def test_integrated_gradients_completeness_and_internal_batching(make_tiny):
    """IG from a zero baseline sums to f(x) - f(0); internal_batch_size changes memory, not the result."""
    model, tok = make_tiny("bert", "classification")
    batch = make_batch(model, tok, TEXTS[:2])
    ig = raw_integrated_gradients(batch, n_steps=50, internal_batch_size=None)  # all 100 rows in one pass
    for chunks in (7, "auto"):
        chunked = raw_integrated_gradients(batch, n_steps=50, internal_batch_size=chunks)
        torch.testing.assert_close(ig, chunked, atol=1e-6, rtol=1e-4)
    forward = embedding_forward(batch)
    embeddings, extra = forward.arguments(batch)
    with torch.no_grad():
        rows = torch.arange(2)
        f_x = forward(embeddings, *extra)[rows, batch.targets]
        f_0 = forward(torch.zeros_like(embeddings), *extra)[rows, batch.targets]
    # Padding positions get zero attribution (they cannot reach the output), so the sum runs over all positions.
    torch.testing.assert_close(ig.sum((1, 2)), f_x - f_0, atol=2e-3, rtol=2e-2)


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_scores_are_l1_norms_and_batching_invariant(make_tiny, method):
    model, tok = make_tiny("roberta", "classification")
    options = {"n_steps": 8} if method == "integrated_gradients" else {}
    alone = nx.explain(model, tok, TEXTS[1], method=method, **options)
    batched = nx.explain(model, tok, TEXTS, method=method, batch_size=3, **options)
    np.testing.assert_allclose(alone.scores, batched[1].scores, rtol=1e-4, atol=1e-7)
    assert isinstance(alone, nx.Attribution) and alone.method == method and (alone.scores >= 0).all()
    assert alone.target == alone.prediction


def test_norm_reduction_matches_raw_attributions(make_tiny):
    model, tok = make_tiny("bert", "classification")
    batch = make_batch(model, tok, TEXTS)
    raw = raw_grad_x_input(batch)
    attrs = nx.explain(model, tok, TEXTS, method="grad_x_input")
    for row, a in enumerate(attrs):
        np.testing.assert_allclose(a.scores, raw[row, : len(a)].detach().abs().sum(-1).numpy(), rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_methods_run_on_every_family(make_tiny, family):
    model, tok = make_tiny(family, "classification")
    for method in GRADIENT_METHODS:
        options = {"n_steps": 4, "internal_batch_size": 5} if method == "integrated_gradients" else {}
        attrs = nx.explain(model, tok, PAIRS if family in ENCODERS else TEXTS, method=method, **options)
        for a in attrs:
            assert np.isfinite(a.scores).all() and (a.scores >= 0).all() and a.scores.max() > 0


def test_regression_and_explicit_targets(make_tiny):
    model, tok = make_tiny("bert", "regression")
    a = nx.explain(model, tok, PAIRS[0], method="gradient_norm")
    assert a.target is None and isinstance(a.prediction, float) and a.scores.max() > 0
    clf, tok = make_tiny("bert", "classification")
    t0, t1 = (nx.explain(clf, tok, TEXTS[0], method="gradient_norm", target=t) for t in (0, 1))
    assert not np.allclose(t0.scores, t1.scores)


def test_gradient_methods_leave_parameters_untouched(make_tiny):
    model, tok = make_tiny("bert", "classification")
    nx.explain(model, tok, TEXTS, method="integrated_gradients", n_steps=4)
    assert all(p.grad is None for p in model.parameters())


def test_integrated_gradients_rejects_bad_options(make_tiny):
    model, tok = make_tiny("bert", "classification")
    with pytest.raises(ValueError, match="n_steps"):
        nx.explain(model, tok, TEXTS[0], method="integrated_gradients", n_steps=0)
    with pytest.raises(ValueError, match="internal_batch_size"):
        nx.explain(model, tok, TEXTS[0], method="integrated_gradients", internal_batch_size=0)


# --- random -----------------------------------------------------------------------------------------------------
def test_random_is_a_seeded_permutation_per_example(make_tiny):
    model, tok = make_tiny("bert", "classification")
    same_length = ["good film indeed .", "bad film indeed ."] * 4  # one length, eight examples
    attrs = nx.explain(model, tok, same_length, method="random", batch_size=3)
    orders = {tuple(a.ranking()) for a in attrs}
    assert len(orders) > 1, "examples of one length must not share one order"
    for a in attrs:
        assert sorted(np.rint(a.scores * len(a)).astype(int)) == list(range(1, len(a) + 1))  # k/n, no ties
    again = nx.explain(model, tok, same_length, method="random", batch_size=8)
    for a, b in zip(attrs, again):
        np.testing.assert_array_equal(a.scores, b.scores)  # independent of batching
    other_seed = nx.explain(model, tok, same_length, method="random", seed=1)
    assert any(not np.array_equal(a.scores, b.scores) for a, b in zip(attrs, other_seed))


def test_baselines_are_registered():
    methods = set(nx.list_methods())
    assert {"gradient_norm", "grad_x_input", "integrated_gradients", "random"} <= methods
    assert all(nx.get_method(m).needs_grad for m in GRADIENT_METHODS)
    assert not nx.get_method("random").needs_grad and not nx.get_method("random").signed


# --- signed variants: summed over the hidden dimension, as captum's tutorials and ferret do ----------------------


def _captum_reference(model, tok, text, algorithm, **kwargs):
    """captum on its own: attributions to ``inputs_embeds`` of a BERT classifier, summed over the hidden dimension."""
    from captum.attr import LayerIntegratedGradients

    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        target = int(model(**enc).logits.argmax(-1))
    if algorithm == "layer_ig":  # baselines given as token ids, attributed at the word-embedding layer
        lig = LayerIntegratedGradients(lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits,
                                       model.get_input_embeddings())
        attr = lig.attribute(enc["input_ids"], baselines=kwargs.pop("baseline_ids"), target=target,
                             additional_forward_args=(enc["attention_mask"],), **kwargs)
        return attr.sum(-1)[0].detach().numpy()
    embeds = model.get_input_embeddings()(enc["input_ids"]).detach().requires_grad_()
    forward = lambda e, mask: model(inputs_embeds=e, attention_mask=mask).logits  # noqa: E731
    attr = algorithm(forward).attribute(embeds, target=target, additional_forward_args=(enc["attention_mask"],),
                                        **kwargs)
    return attr.sum(-1)[0].detach().numpy()


def test_signed_grad_x_input_equals_captum(make_tiny):
    from captum.attr import InputXGradient

    model, tok = make_tiny("bert", "classification")
    attrs = nx.explain(model, tok, TEXTS, method="grad_x_input_signed")
    for text, a in zip(TEXTS, attrs):
        np.testing.assert_allclose(a.scores, _captum_reference(model, tok, text, InputXGradient), rtol=1e-4, atol=1e-6)
    assert (np.concatenate([a.scores for a in attrs]) < 0).any()  # signed: some tokens lower the output
    unsigned = nx.explain(model, tok, TEXTS, method="grad_x_input")
    for a, u in zip(attrs, unsigned):
        assert (np.abs(a.scores) <= u.scores + 1e-6).all()  # |sum| <= sum of |.|


def test_signed_integrated_gradients_equal_captum_for_each_baseline(make_tiny):
    from captum.attr import IntegratedGradients

    model, tok = make_tiny("bert", "classification")
    zero = nx.explain(model, tok, TEXTS, method="integrated_gradients_signed", n_steps=16, batch_size=2)
    for text, a in zip(TEXTS, zero):
        expected = _captum_reference(model, tok, text, IntegratedGradients, baselines=0.0, n_steps=16)
        np.testing.assert_allclose(a.scores, expected, rtol=1e-3, atol=1e-5)
    for baseline, token in (("pad", tok.pad_token_id), ("mask", tok.mask_token_id)):
        got = nx.explain(model, tok, TEXTS, method="integrated_gradients_signed", n_steps=16, baseline=baseline)
        for text, a in zip(TEXTS, got):
            ids = tok(text, return_tensors="pt")["input_ids"]
            base = ids.clone()
            base[0, 1:-1] = token  # [CLS] and [SEP] kept, as in captum's BERT tutorial
            expected = _captum_reference(model, tok, text, "layer_ig", baseline_ids=base, n_steps=16)
            np.testing.assert_allclose(a.scores, expected, rtol=1e-3, atol=1e-5)
    pad = nx.explain(model, tok, TEXTS[0], method="integrated_gradients_signed", n_steps=16, baseline="pad")
    assert not np.allclose(pad.scores, zero[0].scores)  # the baseline matters


def test_signed_integrated_gradients_completeness(make_tiny):
    """Summed over tokens, signed IG gives f(x) - f(baseline) (captum's Gauss-Legendre rule, 64 steps)."""
    model, tok = make_tiny("bert", "classification")
    batch = make_batch(model, tok, TEXTS[:2])
    forward = embedding_forward(batch)
    embeddings, extra = forward.arguments(batch)
    rows = torch.arange(2)
    for baseline in ("zero", "pad"):
        ig = raw_integrated_gradients(batch, n_steps=64, baseline=baseline)
        start = torch.zeros_like(embeddings) if baseline == "zero" else ig_baseline(batch, baseline)
        with torch.no_grad():
            gap = forward(embeddings, *extra)[rows, batch.targets] - forward(start, *extra)[rows, batch.targets]
        torch.testing.assert_close(ig.sum((1, 2)), gap, atol=2e-3, rtol=2e-2)


def test_ig_baseline_errors_say_what_to_use(make_tiny):
    model, tok = make_tiny("bert", "classification")
    with pytest.raises(ValueError, match="baseline must be one of zero, pad, mask"):
        nx.explain(model, tok, TEXTS[0], method="integrated_gradients_signed", baseline="blur")
    assert nx.get_method("grad_x_input_signed").signed and nx.get_method("integrated_gradients_signed").signed
    assert not nx.get_method("integrated_gradients").signed


def test_ig_token_budget_shrinks_with_model_size():
    """The automatic IG pass size follows activation memory: MiniLM's width x depth keeps the full budget, a model
    7.5x larger (SmolLM2-135M: 576 x 30) gets about 7.5x fewer tokens per pass, never under 256."""
    from types import SimpleNamespace

    from normxlogit.methods.gradients import IG_TOKEN_BUDGET, ig_token_budget

    def model(hidden: int, layers: int) -> SimpleNamespace:
        return SimpleNamespace(config=SimpleNamespace(hidden_size=hidden, num_hidden_layers=layers))

    assert ig_token_budget(model(384, 6)) == IG_TOKEN_BUDGET
    assert ig_token_budget(model(128, 2)) == IG_TOKEN_BUDGET  # smaller models are not given more
    assert ig_token_budget(model(576, 30)) == IG_TOKEN_BUDGET * 384 * 6 // (576 * 30)
    assert ig_token_budget(model(8192, 80)) == 256
    assert ig_token_budget(SimpleNamespace()) == IG_TOKEN_BUDGET
