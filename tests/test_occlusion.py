"""leave_one_out and occlude: equality with a plain mask-one-token-and-rerun loop, batch invariance, properties."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import normxlogit as nx
from normxlogit.core.inputs import model_inputs

from conftest import DECODERS, ENCODERS, FAMILIES

TEXTS = ["a gripping , funny film .", "dull .", "the plot holds together until the last act , then it falls ."]
MASKED = ["the film was [MASK] .", "a [MASK] and moving story ."]


def _cases():
    for family in FAMILIES:
        yield family, "classification"
    for family in ("bert", "roberta", "gpt2"):
        yield family, "regression"
    for family in ("bert", "distilbert"):
        yield family, "masked-lm"
    for family in DECODERS:
        yield family, "causal-lm"


@torch.no_grad()
def _output(model, tok, text: str, ids: list[int], position: int) -> torch.Tensor:
    """The model's own output for one unpadded input (``text``'s encoding with ``ids``), at the explained position."""
    enc = dict(tok(text, return_tensors="pt"), input_ids=torch.tensor([ids]))
    logits = model(**model_inputs(model, enc)).logits[0]
    return logits[position] if logits.dim() == 2 else logits


def _loop_leave_one_out(model, tok, text: str, task: str) -> np.ndarray:
    """The reference: mask one token at a time, rerun the model on that text alone."""
    enc = tok(text, return_special_tokens_mask=True)
    ids, special = enc["input_ids"], enc["special_tokens_mask"]
    position = ids.index(tok.mask_token_id) if task == "masked-lm" else len(ids) - 1 if task == "causal-lm" else 0
    if task == "classification" and model.config.model_type in DECODERS:
        position = len(ids) - 1  # the decoder classifier reads the last token; the model picks it itself
    original = _output(model, tok, text, ids, position)
    target = int(original.argmax())
    scores = np.zeros(len(ids))
    for i in range(len(ids)):
        if special[i]:
            continue
        variant = list(ids)
        variant[i] = tok.mask_token_id
        out = _output(model, tok, text, variant, position)
        if task == "regression":
            scores[i] = abs(float(original[0] - out[0]))
        else:
            scores[i] = float(original.softmax(-1)[target] - out.softmax(-1)[target])
    return scores


@pytest.mark.parametrize("family,task", list(_cases()))
def test_leave_one_out_equals_plain_loop(make_tiny, family, task):
    model, tok = make_tiny(family, task)
    texts = MASKED if task == "masked-lm" else TEXTS
    attrs = nx.explain(model, tok, texts, method="leave_one_out", batch_size=2, chunk_size=5)
    for text, attr in zip(texts, attrs):
        np.testing.assert_allclose(attr.scores, _loop_leave_one_out(model, tok, text, task), atol=1e-5)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_batch_and_chunk_invariance(make_tiny, family):
    model, tok = make_tiny(family, "classification")
    texts = TEXTS * 3
    runs = [nx.explain(model, tok, texts, method="leave_one_out", batch_size=b, chunk_size=c)
            for b, c in ((1, 1), (4, 7), (32, 1000))]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


def test_special_tokens_score_zero_and_regression_is_non_negative(make_tiny):
    model, tok = make_tiny("bert", "regression")
    for attr in nx.explain(model, tok, TEXTS, method="leave_one_out"):
        special = np.asarray(attr.special_tokens_mask, bool)
        assert (attr.scores[special] == 0).all()
        assert (attr.scores >= 0).all() and (attr.scores[~special] > 0).any()


def test_masking_a_mask_token_changes_nothing(make_tiny):
    # Replacing [MASK] by [MASK] is no change: score exactly 0, whatever the model.
    model, tok = make_tiny("bert", "classification")
    attr = nx.explain(model, tok, "a [MASK] film .", method="leave_one_out")
    assert attr.scores[attr.tokens.index("[MASK]")] == 0


def test_explicit_replacement(make_tiny):
    model, tok = make_tiny("bert", "classification")
    unk = nx.explain(model, tok, TEXTS, method="leave_one_out", replacement=tok.unk_token_id)
    default = nx.explain(model, tok, TEXTS, method="leave_one_out")
    assert not np.allclose(unk[0].scores, default[0].scores)
    attr = nx.explain(model, tok, "dull dull .", method="leave_one_out", replacement=tok.convert_tokens_to_ids("dull"))
    assert attr.scores[1] == 0 and attr.scores[2] == 0  # replacing "dull" by "dull" is no change


def test_replacement_token_fallbacks():
    assert nx.replacement_token_id(SimpleNamespace(mask_token_id=103, unk_token_id=100, pad_token_id=0)) == 103
    assert nx.replacement_token_id(SimpleNamespace(mask_token_id=None, unk_token_id=100, pad_token_id=0)) == 100
    assert nx.replacement_token_id(SimpleNamespace(mask_token_id=None, unk_token_id=None, pad_token_id=0)) == 0
    with pytest.raises(ValueError, match="replacement="):
        nx.replacement_token_id(SimpleNamespace(mask_token_id=None, unk_token_id=None, pad_token_id=None))


def test_chunk_size_must_be_positive(make_tiny):
    model, tok = make_tiny("bert", "classification")
    with pytest.raises(ValueError, match="chunk_size"):
        nx.explain(model, tok, "dull .", method="leave_one_out", chunk_size=0)


@pytest.mark.parametrize("family,task", [("bert", "classification"), ("gpt2", "classification"),
                                         ("roberta", "regression")])
def test_occlude_agrees_with_leave_one_out(make_tiny, family, task):
    model, tok = make_tiny(family, task)
    loo = nx.explain(model, tok, TEXTS, method="leave_one_out")
    nothing = nx.occlude(model, tok, TEXTS, [[] for _ in TEXTS])
    np.testing.assert_allclose(nothing.p_masked, nothing.p_original, atol=1e-6)
    one = nx.occlude(model, tok, TEXTS, [[1] for _ in TEXTS])
    assert [r[0] for r in one.masked_tokens] == [a.tokens[1] for a in loo]
    change = one.p_original - one.p_masked
    if task == "regression":
        change = change.abs()
    np.testing.assert_allclose(change, [a.scores[1] for a in loo], atol=1e-5)
    np.testing.assert_allclose(one.prediction, [a.prediction for a in loo], atol=1e-5)  # classes or values


def test_occlude_errors(make_tiny):
    model, tok = make_tiny("bert", "classification")
    with pytest.raises(ValueError, match="one list per text"):
        nx.occlude(model, tok, TEXTS, [[1]])
    with pytest.raises(ValueError, match="outside text 1"):
        nx.occlude(model, tok, TEXTS[:2], [[1], [40]])
    lm, tok = make_tiny("bert", "masked-lm")
    with pytest.raises(ValueError, match="masked-lm"):
        nx.occlude(lm, tok, MASKED, [[1], [1]])


def test_registered_with_metadata():
    spec = nx.get_method("leave_one_out")
    assert spec.signed and not spec.needs_grad and "leave_one_out" in nx.list_methods()
