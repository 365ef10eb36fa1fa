"""The head read on every token: the pooled-position invariant and equality with a plain per-token loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import normxlogit as nx
from normxlogit.core.heads import resolve_head
from normxlogit.core.inputs import model_inputs

from conftest import DECODERS, ENCODERS, FAMILIES

TEXTS = ["a gripping , funny film .", "dull .", "the plot holds together until the last act ."]
MASKED = ["the film was [MASK] .", "a [MASK] and moving story ."]


def encode(model, tok, text):
    return model_inputs(model, tok(text, return_tensors="pt"))


def _cases():
    for family in FAMILIES:
        yield family, "classification"
        yield family, "regression"
    for family in ENCODERS:
        yield family, "masked-lm"
    for family in DECODERS:
        yield family, "causal-lm"


def _texts(task):
    return MASKED if task == "masked-lm" else TEXTS


@pytest.mark.parametrize("family,task", list(_cases()))
def test_logat_at_pooled_position_equals_model_output(make_tiny, family, task):
    model, tok = make_tiny(family, task)
    attrs = nx.explain(model, tok, _texts(task), method="logat")
    for a, text in zip(attrs, _texts(task)):
        enc = encode(model, tok, text)
        with torch.no_grad():
            logits = model(**enc).logits[0]
        if logits.dim() == 2:  # LMs: the explained position
            logits = logits[a.position]
        if task == "regression":
            # |head(h_pooled) - head(h_pooled)| = 0 at the pooled position; the prediction is the model's output.
            assert a.scores[a.position] == pytest.approx(0.0, abs=1e-5)
            assert a.prediction == pytest.approx(float(logits[0]), abs=1e-5)
        else:
            assert a.prediction == int(logits.argmax())
            assert a.scores[a.position] == pytest.approx(float(logits[a.target]), abs=1e-4)
    expected_position = {"masked-lm": None, "causal-lm": "last"}.get(task, "last" if family in DECODERS else "first")
    if expected_position == "first":
        assert all(a.position == 0 for a in attrs)
    elif expected_position == "last":
        assert all(a.position == len(a) - 1 for a in attrs)


@pytest.mark.parametrize("family,task", list(_cases()))
def test_normxlogit_is_norm_times_logat(make_tiny, family, task):
    model, tok = make_tiny(family, task)
    texts = _texts(task)
    for source in ("embedding_output", "word_embedding"):
        nxl = nx.explain(model, tok, texts, method="normxlogit", norm_source=source)
        lga = nx.explain(model, tok, texts, method="logat")
        nrm = nx.explain(model, tok, texts, method="norm", norm_source=source)
        for a, b, c in zip(nxl, lga, nrm):
            np.testing.assert_allclose(a.scores, b.scores * c.scores, rtol=1e-5, atol=1e-6)
            assert (c.scores > 0).all()


def _final_stack(model):
    """The module whose output the head reads (encoder stack before any pooler; decoder after its final norm)."""
    base = model.base_model
    for name in ("encoder", "transformer"):
        if hasattr(base, name) and isinstance(getattr(base, name), torch.nn.Module):
            return getattr(base, name)
    return base


def _reference_logat(model, tok, text, target, pooled, regression):
    """A plain loop: for each token i, run the whole model with the pooled position's final vector replaced by
    token i's, through a forward hook, and read the model's own output logit."""
    enc = encode(model, tok, text)
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
    final = out.hidden_states[-1][0]
    scores = []
    for i in range(final.shape[0]):
        def swap(module, args, output, i=i):
            output[0][0, pooled] = final[i]
            return output

        handle = _final_stack(model).register_forward_hook(swap)
        try:
            with torch.no_grad():
                logits = model(**enc).logits[0]
        finally:
            handle.remove()
        scores.append(abs(float(logits[0] - out.logits[0, 0])) if regression else float(logits[target]))
    return np.array(scores)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_vectorised_logat_equals_per_token_loop(make_tiny, family, task):
    model, tok = make_tiny(family, task)
    attrs = nx.explain(model, tok, TEXTS, method="logat", target=None if task == "regression" else 2)
    for a, text in zip(attrs, TEXTS):
        ref = _reference_logat(model, tok, text, a.target, a.position, task == "regression")
        np.testing.assert_allclose(a.scores, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family,task", [(f, "masked-lm") for f in ENCODERS] + [(f, "causal-lm") for f in DECODERS])
def test_lm_logat_equals_model_logits_at_every_position(make_tiny, family, task):
    model, tok = make_tiny(family, task)
    text = _texts(task)[0]
    a = nx.explain(model, tok, text, method="logat", target=1037)
    with torch.no_grad():
        logits = model(**encode(model, tok, text)).logits[0]
    np.testing.assert_allclose(a.scores, logits[:, 1037].numpy(), rtol=1e-4, atol=1e-5)


def test_decoder_intermediate_layer_applies_final_norm(make_tiny):
    """A logit lens: layer l < L reads lm_head(final_norm(h^l)); the last layer is already normed."""
    model, tok = make_tiny("llama", "causal-lm")
    text = TEXTS[0]
    a = nx.explain(model, tok, text, method="logat", layer=1, target=5)
    with torch.no_grad():
        hs = model(**encode(model, tok, text), output_hidden_states=True).hidden_states
        expected = model.lm_head(model.model.norm(hs[1][0]))[:, 5]
    np.testing.assert_allclose(a.scores, expected.numpy(), rtol=1e-4, atol=1e-5)
    assert a.layer == 1


def test_encoder_layerwise_reads_that_layer(make_tiny):
    model, tok = make_tiny("bert", "masked-lm")
    a = nx.explain(model, tok, MASKED[0], method="normxlogit", layer=1, target=7)
    e = nx.explain(model, tok, MASKED[0], method="normxlogit", layer=1, target=7, norm_source="layer")
    with torch.no_grad():
        hs = model(**encode(model, tok, MASKED[0]), output_hidden_states=True).hidden_states
        logit = model.cls(hs[1][0])[:, 7]
    np.testing.assert_allclose(a.scores, (hs[0][0].norm(dim=-1) * logit).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(e.scores, (hs[1][0].norm(dim=-1) * logit).numpy(), rtol=1e-4, atol=1e-5)


def test_user_head_callable(make_tiny):
    model, tok = make_tiny("bert", "classification")
    own = nx.explain(model, tok, TEXTS, method="logat")
    custom = nx.explain(model, tok, TEXTS, method="logat",
                        head=lambda h: model.classifier(torch.tanh(model.bert.pooler.dense(h))))
    for a, b in zip(own, custom):
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)


def test_unsupported_architecture_says_how_to_pass_a_head(make_tiny):
    model, tok = make_tiny("bert", "classification")
    model.config.model_type = "my-new-encoder"
    try:
        # A family outside the table gets a generic guess (classifier on the first token, which skips BERT's
        # pooler), used only if it passes the self-check: here it does not, so no score comes back.
        assert resolve_head(model).source == "generic"
        with pytest.raises(nx.core.heads.HeadMismatchError, match="head="):
            nx.explain(model, tok, "fine .")
        # ...and the escape hatch works.
        a = nx.explain(model, tok, "fine .", head=lambda h: model.classifier(model.bert.pooler(h.unsqueeze(1))))
        assert len(a.scores) == len(a.tokens)
    finally:
        model.config.model_type = "bert"
