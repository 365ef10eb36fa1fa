"""Layer-wise evidence alignment: the metrics on hand-worked rankings, and the batched scores against plain loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset

import normxlogit as nx
from normxlogit.core.heads import id_logits
from normxlogit.evaluation import alignment as evidence
from normxlogit.evaluation.alignment import average_precision, dp, layerwise_scores
from normxlogit.methods.value_zeroing import value_zeroing
from normxlogit.studies.paper import paper_reference


# --- metrics --------------------------------------------------------------------------------------------------------
def test_average_precision_by_hand():
    scores = [0.9, 0.1, 0.5, 0.3, 0.7]
    assert average_precision(scores, [4]) == pytest.approx(1 / 2)  # ranks: 0, 4, 2, 3, 1
    assert average_precision(scores, [4], exclude=[0]) == 1.0  # the target leaves the ranking
    assert average_precision(scores, [1, 2]) == pytest.approx((1 / 3 + 2 / 5) / 2)
    assert average_precision(scores, [0, 4]) == 1.0
    assert np.isnan(average_precision(scores, [0], exclude=[0]))  # no cue left


def test_average_precision_is_vectorised_and_ignores_nan():
    scores = np.array([[0.9, 0.1, 0.5, np.nan], [0.2, 0.4, 0.3, 0.1]])
    cues = np.array([[False, False, True, False], [True, False, False, False]])
    got = average_precision(scores, cues, exclude=np.array([[True, False, False, False], [False, True, False, True]]))
    assert got == pytest.approx([1.0, 1 / 2])  # row 1 ranks 0.3, 0.2 (0.4 and 0.1 excluded)
    assert average_precision(scores, [[2], [0]]) == pytest.approx([1 / 2, 1 / 3])


def test_dp_both_normalisations():
    scores = np.array([1.0, -2.0, 0.0, 3.0])
    soft = np.exp(scores) / np.exp(scores).sum()
    assert dp(scores, [1, 3]) == pytest.approx(soft[1] + soft[3])
    assert dp(scores, [1], "sum") == pytest.approx(2 / 6)
    kept = np.exp(scores[1:]) / np.exp(scores[1:]).sum()
    assert dp(scores, [3], exclude=[0]) == pytest.approx(kept[2])
    assert dp(scores, [0], exclude=[0]) == 0.0  # an excluded cue carries no mass
    assert np.isnan(dp([0.0, 0.0], [0], "sum"))
    with pytest.raises(ValueError, match="normalisation"):
        dp(scores, [0], "l1")


def test_metric_input_errors():
    with pytest.raises(ValueError, match="out of range"):
        average_precision([0.1, 0.2], [5])
    with pytest.raises(ValueError, match="one list per row"):
        average_precision(np.zeros((2, 3)), [[0]])


# --- the head's logits for a few ids ---------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "albert", "electra"])
def test_id_logits_equal_the_full_head(make_tiny, family):
    model, tokenizer = make_tiny(family, "masked-lm")
    enc = tokenizer(["the cat [MASK] here .", "dogs [MASK] ."], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = torch.stack(model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                   output_hidden_states=True).hidden_states)
        head = nx.resolve_head(model)
        ids = torch.tensor([[5, 900], [77, 1234]])
        fast = id_logits(head, hidden, ids)
        full = head(hidden, intermediate=True)
    expected = torch.stack([full[:, b, :, ids[b]] for b in range(2)], 1)  # (L+1, B, T, K)
    torch.testing.assert_close(fast, expected.float(), atol=1e-5, rtol=1e-5)


def test_id_logits_fall_back_for_a_custom_head(make_tiny):
    model, _ = make_tiny("bert", "masked-lm")
    head = nx.resolve_head(model, head=lambda h: h[..., :10] * 2)
    states = torch.randn(2, 3, 32)
    got = id_logits(head, states, torch.tensor([[1, 4], [0, 9]]))
    torch.testing.assert_close(got[1, :, 1], states[1, :, 9] * 2)


# --- layer-wise scores --------------------------------------------------------------------------------------------
SENTENCES = [("the keys to the cabinet are here .", "are", "is", ["keys"]),
             ("these dogs bark .", "dogs", "dog", ["these"]),
             ("the girl hurt herself .", "herself", "themselves", ["girl"])]


@pytest.fixture(scope="module")
def tiny_dataset(tokenizer):
    rows = []
    for k, (text, target, foil, cues) in enumerate(SENTENCES):
        enc = tokenizer(text, return_special_tokens_mask=True)
        tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"])
        position = tokens.index(target)
        ids = list(enc["input_ids"])
        ids[position] = tokenizer.mask_token_id
        rows.append({"paradigm": "p" + str(k % 2), "input_ids": ids, "attention_mask": enc["attention_mask"],
                     "special_tokens_mask": enc["special_tokens_mask"], "mask_position": position,
                     "target_id": tokenizer.convert_tokens_to_ids(target),
                     "foil_id": tokenizer.convert_tokens_to_ids(foil),
                     "cue_positions": [tokens.index(c) for c in cues]})
    return Dataset.from_list(rows)


def test_layerwise_scores_match_a_plain_loop(make_tiny, tiny_dataset):
    model, _ = make_tiny("bert", "masked-lm")
    result = layerwise_scores(model, tiny_dataset, batch_size=2)
    assert result.layers == [1, 2] and set(result.methods) == set(evidence.LAYER_METHODS)
    head = nx.resolve_head(model)
    for i, row in enumerate(tiny_dataset):
        ids = torch.tensor([row["input_ids"]])
        n = ids.shape[1]
        with torch.no_grad():
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
            norm0 = hidden[0][0].norm(dim=-1)
            vz = value_zeroing(model, ids, positions=torch.tensor([row["mask_position"]]))
            for k, layer in enumerate(result.layers):
                logits = head(hidden[layer][0], intermediate=True)
                expect = {
                    "norm": hidden[layer][0].norm(dim=-1),
                    "logat": logits[:, row["target_id"]],
                    "logat_foil": logits[:, row["foil_id"]],
                    "normxlogit": norm0 * logits[:, row["target_id"]],
                    "normxlogit_each": hidden[layer][0].norm(dim=-1) * logits[:, row["target_id"]],
                    "value_zeroing": vz[k, 0],
                }
                for method, values in expect.items():
                    np.testing.assert_allclose(result.scores[method][i, k, :n], values.numpy(), rtol=1e-4,
                                               atol=1e-5, err_msg=f"{method} layer {layer}")
                assert np.isnan(result.scores[method][i, k, n:]).all()
    # the exclusion mask: special tokens, the target, padding
    for i, row in enumerate(tiny_dataset):
        n = len(row["input_ids"])
        expected = np.array(row["special_tokens_mask"], dtype=bool)
        expected[row["mask_position"]] = True
        assert (result.exclude_mask[i, :n] == expected).all() and result.exclude_mask[i, n:].all()


def test_random_is_seeded_per_example_not_per_batch(make_tiny, tiny_dataset):
    model, _ = make_tiny("bert", "masked-lm")
    a = layerwise_scores(model, tiny_dataset, ["random"], batch_size=1).scores["random"]
    b = layerwise_scores(model, tiny_dataset, ["random"], batch_size=3).scores["random"]
    c = layerwise_scores(model, tiny_dataset, ["random"], batch_size=3, seed=1).scores["random"]
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(np.nan_to_num(a), np.nan_to_num(c))
    assert not np.allclose(a[:, 0], a[:, 1], equal_nan=True)  # a fresh draw per layer


def test_evaluate_alignment_table(make_tiny, tiny_dataset):
    model, _ = make_tiny("bert", "masked-lm")
    table = evidence.evaluate_alignment(model, tiny_dataset, ["random", "normxlogit"])
    assert list(table.columns) == ["method", "layer", "paradigm", "AP", "DP_softmax", "DP_sum", "n"]
    assert len(table) == 2 * 2 * 2 and table["n"].sum() == 2 * 2 * len(tiny_dataset)
    assert table[["AP", "DP_softmax", "DP_sum"]].apply(lambda c: c.between(0, 1)).all().all()
    rows = evidence.evaluate_alignment(model, tiny_dataset, ["normxlogit"], per_example=True)
    overall = evidence.summarise(rows)
    assert len(overall) == 2 and (overall["n"] == len(tiny_dataset)).all()
    # one cue per sentence: AP is 1 / the cue's rank among the remaining tokens
    scores = layerwise_scores(model, tiny_dataset, ["normxlogit"])
    for i, row in enumerate(tiny_dataset):
        s = scores.scores["normxlogit"][i, 1]
        ranked = [p for p in np.argsort(-np.nan_to_num(s, nan=-np.inf), kind="stable")
                  if not scores.exclude_mask[i, p]]
        rank = ranked.index(row["cue_positions"][0]) + 1
        assert rows.query("example == @i and layer == 2")["AP"].item() == pytest.approx(1 / rank)


def test_bad_input_is_refused(make_tiny, tiny_dataset):
    model, _ = make_tiny("bert", "masked-lm")
    with pytest.raises(ValueError, match="Unknown layer-wise method"):
        layerwise_scores(model, tiny_dataset, ["gradient"])
    with pytest.raises(ValueError, match="lacks column"):
        layerwise_scores(model, tiny_dataset.remove_columns("foil_id"))
    gpt, _ = make_tiny("gpt2", "causal-lm")
    with pytest.raises(ValueError, match="does not fit"):
        layerwise_scores(gpt, tiny_dataset, ["logat"])


def test_paper_reference_alignment():
    ref = paper_reference(6)
    row = ref.query("method == 'normxlogit' and layer == 3").iloc[0]
    assert row["paper_layers"] == "5-6" and row["paper_AP"] == pytest.approx((.35 + .38) / 2)
    assert len(paper_reference(12)) == 5 * 12
    with pytest.raises(ValueError):
        paper_reference(5)


# --- the BLiMP masked LM and its recipe ------------------------------------------------------------------------------
def test_minilm_mlm_has_a_tied_decoder_and_a_new_transform():
    import transformers as tf

    model, info = tf.BertForMaskedLM.from_pretrained(nx.default_model_path(), output_loading_info=True)
    new = set(info["missing_keys"])
    assert {"cls.predictions.transform.dense.weight", "cls.predictions.transform.LayerNorm.weight"} <= new
    assert all(k.startswith("cls.") for k in new)  # the encoder itself is loaded
    from normxlogit.training.masked_pairs import check_mlm_head

    check_mlm_head(model)  # the decoder is the word-embedding matrix


def test_blimp_recipe_is_the_authors(make_tiny):
    from normxlogit.training import get_recipe
    from normxlogit.training.zoo import BLIMP_RECIPE as RECIPE

    assert get_recipe("blimp") is RECIPE
    assert (RECIPE.task, RECIPE.batch_size, RECIPE.lr, RECIPE.warmup_ratio, RECIPE.seed) == ("masked-lm", 64, 3e-5,
                                                                                            0.1, 42)
    assert RECIPE.train_split == "finetune" and RECIPE.eval_split == "eval"


def test_pair_logits_equal_the_full_head(make_tiny, tiny_dataset):
    from normxlogit.training.masked_pairs import _columns, _pair_batch, pair_logits, predict_pairs

    model, tokenizer = make_tiny("bert", "masked-lm")
    data = _columns(tiny_dataset)
    ids, mask, positions, pair = _pair_batch(data, range(len(tiny_dataset)), tokenizer.pad_token_id, torch.device("cpu"))
    with torch.no_grad():
        got = pair_logits(model, ids, mask, positions, pair)
        full = model(input_ids=ids, attention_mask=mask).logits
    expected = full[torch.arange(len(pair)), positions].gather(-1, pair)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(predict_pairs(model, tiny_dataset), expected.numpy(), atol=1e-5)


def test_training_loop_runs_and_learns_the_pairs(make_tiny, tiny_dataset, monkeypatch):
    import copy
    import dataclasses

    from datasets import DatasetDict
    from normxlogit.training import masked_pairs as blimp_model
    from normxlogit.training.zoo import BLIMP_RECIPE

    model, tokenizer = make_tiny("bert", "masked-lm")
    model = copy.deepcopy(model)
    halves = DatasetDict(finetune=tiny_dataset, eval=tiny_dataset)
    monkeypatch.setattr(blimp_model, "evidence_data", lambda *args, **kwargs: (halves, {}))
    recipe = dataclasses.replace(BLIMP_RECIPE, epochs=30, batch_size=2,
                                 options={**BLIMP_RECIPE.options, "paradigms": ["p0", "p1"]})
    torch.manual_seed(0)
    stats = blimp_model.train_blimp_mlm(model, tokenizer, recipe, device=torch.device("cpu"))
    assert stats["steps"] == 30 * 2 and not model.training
    metrics = blimp_model.evaluate_blimp_mlm(model, tokenizer, recipe, device=torch.device("cpu"))
    assert metrics["accuracy"] == 1.0 and metrics["examples"] == 3 and "accuracy_p0" in metrics
