"""NormXLogit in captum's interfaces: LLMAttributionResult for generations, an Attribution for classifiers."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from captum.attr import LLMAttributionResult, TextTokenInput  # noqa: E402
from captum.metrics import infidelity, sensitivity_max  # noqa: E402

import normxlogit as nx  # noqa: E402
from normxlogit.integrations.captum import NormXLogitAttribution, NormXLogitLLMAttribution, token_masking  # noqa: E402

TEXTS = ["a gripping , funny film .", "dull ."]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("method", ["normxlogit", "logat", "norm"])
def test_llm_result_has_the_generation_scores(make_tiny, family, method):
    model, tok = make_tiny(family, "causal-lm")
    inp = TextTokenInput("the cat sat", tok, skip_tokens=["[CLS]"])
    res = NormXLogitLLMAttribution(model, tok, method=method).attribute(inp, target="on the mat")
    g = nx.explain_generation(model, tok, "the cat sat", continuation="on the mat", method=method)
    assert isinstance(res, LLMAttributionResult)
    assert res.input_tokens == ["the", "cat", "sat", "[SEP]"] and res.output_tokens == ["on", "the", "mat"]
    # captum's layout: output tokens x the prompt's interpretable tokens ([CLS] skipped), earlier outputs left out
    expected = g.scores[:, 1: g.prompt_length]
    assert res.token_attr.shape == (3, 4)
    np.testing.assert_allclose(res.token_attr.numpy(), expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(res.seq_attr.numpy(), expected.sum(0), atol=1e-5, rtol=0)
    np.testing.assert_allclose(res.output_probs.numpy(), g.target_probs, atol=1e-6)


def test_llm_generates_greedily_and_takes_ids(make_tiny):
    model, tok = make_tiny("llama", "causal-lm")
    attr = NormXLogitLLMAttribution(model, tok, layer=1)
    res = attr.attribute(TextTokenInput("the cat sat", tok), gen_args={"max_new_tokens": 3})
    g = nx.explain_generation(model, tok, "the cat sat", max_new_tokens=3, layer=1)
    assert attr.generation.generated_ids == g.generated_ids and len(res.output_tokens) == 3
    np.testing.assert_allclose(res.token_attr.numpy(), g.scores[:, : g.prompt_length], atol=1e-5, rtol=0)
    again = attr.attribute(TextTokenInput("the cat sat", tok), target=torch.tensor(g.generated_ids))
    np.testing.assert_allclose(again.token_attr.numpy(), res.token_attr.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="greedily"):
        attr.attribute(TextTokenInput("the cat sat", tok), gen_args={"do_sample": True})
    with pytest.raises(TypeError, match="TextTokenInput"):
        attr.attribute("the cat sat")


def test_captum_plots_run(make_tiny):
    model, tok = make_tiny("gpt2", "causal-lm")
    res = NormXLogitLLMAttribution(model, tok).attribute(TextTokenInput("the cat sat", tok), target="on the mat")
    fig, ax = res.plot_token_attr()
    # a generated token per row, a prompt token per column
    assert (len(ax.get_yticks()), len(ax.get_xticks())) == (len(res.output_tokens), len(res.input_tokens))
    plt.close(fig)
    fig, ax = res.plot_seq_attr()
    assert len(ax.get_xticks()) == len(res.input_tokens) and len(ax.patches) > 0  # bars over the prompt
    plt.close(fig)


@pytest.mark.parametrize("method", ["normxlogit", "logat", "norm"])
def test_classifier_attribution_equals_explain(make_tiny, method):
    model, tok = make_tiny("bert", "classification")
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    attr = NormXLogitAttribution(model, tok, method=method)
    for target in (None, 2, torch.tensor([1, 0])):
        scores = attr.attribute(enc["input_ids"], target=target, additional_forward_args=enc["attention_mask"])
        assert scores.shape == enc["input_ids"].shape  # captum's shape: that of the inputs
        expected_targets = target.tolist() if isinstance(target, torch.Tensor) else target
        reference = nx.explain(model, tok, TEXTS, method=method, target=expected_targets)
        for row, ref, mask in zip(scores, reference, enc["attention_mask"].bool()):
            np.testing.assert_allclose(row[mask].numpy(), ref.scores, atol=1e-5, rtol=0)
            assert (row[~mask] == 0).all()  # padding scores 0


def test_classifier_attribution_in_captum_metrics(make_tiny):
    model, tok = make_tiny("bert", "classification")
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    attr = NormXLogitAttribution(model, tok)
    mask = enc["attention_mask"]
    target = attr.probabilities(enc["input_ids"], mask).argmax(-1)
    scores = attr.attribute(enc["input_ids"], target=target, additional_forward_args=mask)
    inf = infidelity(attr.forward_func, token_masking(tok, 0.3), enc["input_ids"], scores,
                     additional_forward_args=mask, target=target, n_perturb_samples=4)
    assert inf.shape == (2,) and torch.isfinite(inf).all()
    sens = sensitivity_max(attr.attribute, enc["input_ids"], perturb_func=token_masking(tok, 0.3, indicator=False),
                           n_perturb_samples=3, additional_forward_args=mask, target=target)
    assert sens.shape == (2,) and torch.isfinite(sens).all() and (sens >= 0).all()
    # a perturbation that masks nothing leaves the explanation unchanged: sensitivity 0
    still = sensitivity_max(attr.attribute, enc["input_ids"], perturb_func=lambda x: x, n_perturb_samples=2,
                            additional_forward_args=mask, target=target)
    assert torch.allclose(still, torch.zeros(2))


def test_classifier_bad_inputs(make_tiny):
    model, tok = make_tiny("bert", "classification")
    attr = NormXLogitAttribution(model, tok)
    with pytest.raises(TypeError, match="token ids"):
        attr.attribute(torch.randn(2, 5, 32))
    with pytest.raises(ValueError, match="shape of inputs"):
        attr.attribute(torch.tensor([[101, 2000, 102]]), additional_forward_args=torch.ones(1, 4))
    with pytest.raises(ValueError, match="probability"):
        token_masking(tok, 0.0)
