"""Value Zeroing: the batched re-implementation against the model itself and a slow per-token recomputation."""

from __future__ import annotations

import pytest
import torch

import normxlogit as nx
from normxlogit.core.heads import encoder_layers
from normxlogit.methods.value_zeroing import layer_outputs, value_zeroing

TEXTS = ["the keys to the cabinet [MASK] on the table .", "those [MASK] were tired ."]
VZ_FAMILIES = ["bert", "roberta", "electra"]


def _inputs(tokenizer):
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    positions = (enc["input_ids"] == tokenizer.mask_token_id).float().argmax(-1)
    return enc, positions


def _hidden(model, enc):
    with torch.no_grad():
        return model(**enc, output_hidden_states=True).hidden_states


@pytest.mark.parametrize("family", VZ_FAMILIES)
def test_zeroing_nothing_reproduces_every_layer(make_tiny, family):
    model, tokenizer = make_tiny(family, "masked-lm")
    enc, _ = _inputs(tokenizer)
    hidden = _hidden(model, enc)
    real = enc["attention_mask"].bool()
    with torch.no_grad():
        for l, block in enumerate(encoder_layers(model, "Value Zeroing"), start=1):
            out = layer_outputs(block, hidden[l - 1], enc["attention_mask"])  # one variant, every query
            assert out.shape == (2, 1, real.shape[1], hidden[l].shape[-1])
            torch.testing.assert_close(out[:, 0][real], hidden[l][real], atol=1e-5, rtol=1e-5)


def _slow_value_zeroing(model, enc, positions, layer: int) -> torch.Tensor:
    """Zero token j's value vector with a hook on the layer's value projection, rerun the whole model, per j."""
    block = encoder_layers(model, "Value Zeroing")[layer - 1]
    reference = _hidden(model, enc)[layer]
    rows = torch.arange(len(positions))
    length = enc["input_ids"].shape[1]
    scores = torch.zeros(len(positions), length)
    for j in range(length):
        def zero_j(module, args, output, j=j):
            output = output.clone()
            output[:, j] = 0
            return output

        handle = block.attention.self.value.register_forward_hook(zero_j)
        try:
            altered = _hidden(model, enc)[layer]
        finally:
            handle.remove()
        cos = torch.nn.functional.cosine_similarity(altered[rows, positions], reference[rows, positions], dim=-1)
        scores[:, j] = 1 - cos
    return scores * enc["attention_mask"]


@pytest.mark.parametrize("family", VZ_FAMILIES)
def test_scores_match_a_slow_recomputation(make_tiny, family):
    model, tokenizer = make_tiny(family, "masked-lm")
    enc, positions = _inputs(tokenizer)
    fast = value_zeroing(model, enc["input_ids"], enc["attention_mask"], positions)
    assert fast.shape == (model.config.num_hidden_layers, 2, enc["input_ids"].shape[1])
    for layer in range(1, model.config.num_hidden_layers + 1):
        slow = _slow_value_zeroing(model, enc, positions, layer)
        torch.testing.assert_close(fast[layer - 1], slow, atol=2e-5, rtol=1e-3)
    assert (fast >= -1e-6).all() and fast.amax() > 0


def test_every_query_matches_one_query_and_padding_is_zero(make_tiny):
    model, tokenizer = make_tiny("bert", "masked-lm")
    enc, positions = _inputs(tokenizer)
    full = value_zeroing(model, enc["input_ids"], enc["attention_mask"])  # (L, B, T, T)
    one = value_zeroing(model, enc["input_ids"], enc["attention_mask"], positions, layers=[2])
    torch.testing.assert_close(full[1, torch.arange(2), positions], one[0], atol=1e-6, rtol=1e-5)
    padded = ~enc["attention_mask"].bool()
    zeroed_padding = full.masked_select(padded[None, :, None, :].expand_as(full))  # columns: zeroed tokens
    assert padded.any() and (zeroed_padding == 0).all()


def test_scores_do_not_depend_on_batching(make_tiny):
    model, tokenizer = make_tiny("bert", "masked-lm")
    enc, positions = _inputs(tokenizer)
    together = value_zeroing(model, enc["input_ids"], enc["attention_mask"], positions)
    alone = tokenizer(TEXTS[1], return_tensors="pt")
    single = value_zeroing(model, alone["input_ids"], alone["attention_mask"], positions[1:])
    n = alone["input_ids"].shape[1]
    torch.testing.assert_close(together[:, 1, :n], single[:, 0], atol=1e-6, rtol=1e-5)


def test_registered_method_agrees_with_the_function(make_tiny):
    model, tokenizer = make_tiny("bert", "masked-lm")
    enc, positions = _inputs(tokenizer)
    direct = value_zeroing(model, enc["input_ids"], enc["attention_mask"], positions)
    for layer in (1, -1):
        attrs = nx.explain(model, tokenizer, TEXTS, method="value_zeroing", layer=layer)
        for i, attr in enumerate(attrs):
            assert attr.layer == layer % (model.config.num_hidden_layers + 1)
            assert attr.position == int(positions[i])
            expected = direct[attr.layer - 1, i, : len(attr.scores)].numpy()
            assert abs(attr.scores - expected).max() < 1e-6
    with pytest.raises(ValueError, match="layer=1..L"):
        nx.explain(model, tokenizer, TEXTS, method="value_zeroing", layer=0)


def test_works_for_a_sequence_classifier(make_tiny):
    model, tokenizer = make_tiny("bert", "classification")
    enc = tokenizer(["a fine film ."], return_tensors="pt")
    scores = value_zeroing(model, enc["input_ids"], enc["attention_mask"], torch.tensor([0]))
    assert scores.shape == (2, 1, enc["input_ids"].shape[1]) and torch.isfinite(scores).all()


@pytest.mark.parametrize("family", ["distilbert", "gpt2", "llama", "albert"])
def test_clear_error_outside_the_bert_family(make_tiny, family):
    task = "causal-lm" if family in ("gpt2", "llama") else "masked-lm"
    model, tokenizer = make_tiny(family, task)
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(nx.UnsupportedModelError, match="BERT.s layer layout"):
        value_zeroing(model, ids)
    assert nx.HEADS[model.config.model_type].encoder_layout != "bert"


def test_bad_layers_are_refused(make_tiny):
    model, _ = make_tiny("bert", "masked-lm")
    with pytest.raises(ValueError, match="layers run 1..2"):
        value_zeroing(model, torch.tensor([[101, 5, 102]]), layers=[0])
