"""The last silent mismatches (issue 21), each against the model's own output or a clear error:

1. decoder classifiers whose pad id collides with a token that ends the text (EOS): the explained target and LogAt at
   the explained position equal ``model(**tokenizer(text))`` on the text alone, whatever the batch; ``evaluate``'s
   perturbed forwards pool the same position as the model on each perturbed input alone;
2. heads that were never trained are refused (``load_model`` records them);
3. families whose embeddings or sequence lengths normxlogit cannot use get ``UnsupportedModelError``;
4. ``head=`` callables that return the wrong thing get one clear error;
5. ``evaluate`` measures the class the attributions explain.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as tf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import normxlogit as nx
from normxlogit.core.inputs import model_inputs
from normxlogit.evaluation.perturbation import DEFAULT_RATIOS

WORDS = ("a gripping , funny and thoroughly entertaining film . dull the plot holds together until last act when it "
         "collapses not bad at all").split()
#: 31 texts of 1..17 words, so that a text of interest is padded beside longer ones in every batch size.
OTHERS = [" ".join(WORDS[(7 * i + j) % len(WORDS)] for j in range(1 + (5 * i) % 17)) for i in range(31)]


def _bpe(special: list[str]) -> Tokenizer:
    """A byte-level BPE of 300 tokens trained on the words above (GPT-2's and Llama 3's kind), built locally."""
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator([" ".join(WORDS)] * 4 + OTHERS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return raw


@pytest.fixture(scope="module")
def gpt2_classifier():
    """A GPT-2 classifier whose config has no pad id, with a GPT-2 style tokenizer (no pad; EOS <|endoftext|>)."""
    eos = "<|endoftext|>"
    tok = tf.GPT2TokenizerFast(tokenizer_object=_bpe([eos]), bos_token=eos, eos_token=eos, unk_token=eos)
    torch.manual_seed(0)
    config = tf.GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=128,
                           num_labels=3, pad_token_id=None)
    return tf.GPT2ForSequenceClassification(config).eval(), tok


@pytest.fixture
def llama_classifier():
    """A Llama classifier whose tokenizer appends EOS and whose pad token the user set to EOS (the tokenizer's)."""
    tok = tf.LlamaTokenizerFast(tokenizer_object=_bpe(["<unk>", "<s>", "</s>"]), bos_token="<s>", eos_token="</s>",
                                unk_token="<unk>", add_bos_token=True, add_eos_token=True, legacy=False,
                                from_slow=False)
    tok.pad_token = tok.eos_token
    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128, num_labels=3,
                            pad_token_id=None)
    return tf.LlamaForSequenceClassification(config).eval(), tok


def own_logits(model, tok, text) -> torch.Tensor:
    """The model called on the text alone: ``model(**tokenizer(text))``."""
    with torch.no_grad():
        return model(**model_inputs(model, tok(text, return_tensors="pt"))).logits[0].float()


def assert_explains_the_model_alone(model, tok, texts, attrs, position) -> None:
    """Target = the model's own prediction on the text alone, LogAt there = its own logit, at ``position(ids)``."""
    for text, a in zip(texts, attrs):
        own = own_logits(model, tok, text)
        ids = tok(text)["input_ids"]
        assert a.position == position(ids), (text, a.position, ids)
        assert a.prediction == a.target == int(own.argmax()), (text, a.target, own)
        assert a.scores[a.position] == pytest.approx(float(own[a.target]), rel=1e-4, abs=1e-5)


# --- 1. pad ids that collide with the token ending the text ---------------------------------------------------------
GPT2_TEXTS = ["a gripping , funny film .<|endoftext|>", *OTHERS[:15], "dull .<|endoftext|>",
              *[t + "<|endoftext|>" for t in OTHERS[15:30]]]


def last(ids: list[int]) -> int:
    return len(ids) - 1


def test_gpt2_without_pad_id_pools_the_final_eos_as_alone(gpt2_classifier):
    model, tok = gpt2_classifier
    text = GPT2_TEXTS[0]
    assert tok(text)["input_ids"][-1] == tok.eos_token_id and model.config.pad_token_id is None
    assert_explains_the_model_alone(model, tok, [text], [nx.explain(model, tok, text, "logat")], last)
    assert model.config.pad_token_id is None  # the lent pad id is given back


@pytest.mark.parametrize("batch_size", [1, 8, 32])
def test_gpt2_without_pad_id_in_padded_batches(gpt2_classifier, batch_size):
    model, tok = gpt2_classifier
    assert len(GPT2_TEXTS) == 32
    attrs = nx.explain(model, tok, GPT2_TEXTS, "logat", batch_size=batch_size)
    assert_explains_the_model_alone(model, tok, GPT2_TEXTS, attrs, last)


def test_llama_with_pad_set_to_eos_on_the_tokenizer(llama_classifier):
    model, tok = llama_classifier  # config.pad_token_id None: alone, the model pools the final </s>
    texts = [OTHERS[3], *OTHERS]
    assert tok(texts[0])["input_ids"][-1] == tok.eos_token_id == tok.pad_token_id
    assert_explains_the_model_alone(model, tok, texts[:1], [nx.explain(model, tok, texts[0], "logat")], last)
    for batch_size in (1, 8, 32):
        attrs = nx.explain(model, tok, texts, "logat", batch_size=batch_size)
        assert_explains_the_model_alone(model, tok, texts, attrs, last)


def test_llama_whose_config_pad_is_eos_warns_and_explains_what_the_model_does(llama_classifier):
    model, tok = llama_classifier
    model.config.pad_token_id = tok.eos_token_id  # the user's own choice: the model pools the token before </s>
    text = OTHERS[3]
    ids = tok(text)["input_ids"]

    def before_eos(ids):
        return len(ids) - 2

    with pytest.warns(UserWarning, match=rf"end with '</s>'.*config\.pad_token_id.*reads position {len(ids) - 2} "
                                         rf".*not the final '</s>' at position {len(ids) - 1}.*set "
                                         r"model\.config\.pad_token_id to an id that occurs in no text"):
        alone = nx.explain(model, tok, text, "logat")
    assert_explains_the_model_alone(model, tok, [text], [alone], before_eos)
    texts = [text, *OTHERS]
    for batch_size in (1, 8, 32):
        with pytest.warns(UserWarning, match="config.pad_token_id"):
            attrs = nx.explain(model, tok, texts, "logat", batch_size=batch_size)
        assert_explains_the_model_alone(model, tok, texts, attrs, before_eos)


def _perturbed(enc: dict, drop: list[int], replacement: str, token_id: int | None) -> dict:
    e = {key: v.clone() for key, v in enc.items()}
    if replacement == "delete":
        keep = [i for i in range(e["input_ids"].shape[1]) if i not in set(drop)]
        if not keep:  # nothing left: evaluate() runs one padding token (the tokenizer's pad, else EOS) instead
            return {"input_ids": torch.tensor([[token_id]]), "attention_mask": torch.ones(1, 1, dtype=torch.long)}
        return {key: v[:, keep] for key, v in e.items()}
    if drop:
        e["input_ids"][0, drop] = token_id
    return e


def reference_outputs(model, tok, attrs, replacement, token_id):
    """The clean protocol as a plain loop, each perturbed input run alone: p(target) per example and ratio."""
    out = {}
    for kind in ("comprehensiveness", "sufficiency"):
        rows = []
        for a in attrs:
            enc = tok(a.text, return_tensors="pt")
            candidates = [i for i in range(len(a)) if not a.special_tokens_mask[i]]
            ranking = sorted(candidates, key=lambda i: (-a.scores[i], i))
            row = []
            for k in DEFAULT_RATIOS:
                c = int(round(k * len(candidates), 6) // 1)
                drop = ranking[:c] if kind == "comprehensiveness" else ranking[c:]
                with torch.no_grad():
                    logits = model(**model_inputs(model, _perturbed(enc, drop, replacement, token_id))).logits[0]
                row.append(float(logits.float().softmax(-1)[a.target]))
            rows.append(row)
        out[kind] = np.array(rows)
    return out


@pytest.mark.parametrize("replacement", ["delete", "unk"])
def test_evaluate_pools_each_perturbed_input_as_the_model_alone(gpt2_classifier, replacement):
    model, tok = gpt2_classifier  # unk is <|endoftext|>: replaced tokens become the EOS that ends the texts
    texts = GPT2_TEXTS[:2] + GPT2_TEXTS[16:18]
    attrs = nx.explain(model, tok, texts, "logat")
    result = nx.evaluate(model, tok, texts, attrs, replacement=replacement)
    want = reference_outputs(model, tok, attrs, replacement, tok.eos_token_id)  # unk = EOS here
    for kind in want:
        np.testing.assert_allclose(result.outputs[kind], want[kind], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result.original, want["comprehensiveness"][:, 0], rtol=1e-4, atol=1e-6)
    assert model.config.pad_token_id is None


def test_unused_id_prefers_the_natural_pad_and_avoids_every_row():
    from normxlogit.core.padding import unused_id

    rows = [{"input_ids": [5, 7, 9]}, {"input_ids": np.array([9, 2])}]
    assert unused_id(rows, [3, 0], 10) == 3
    assert unused_id(rows, [9, 5, None], 10) == 8  # every preferred id is used: the largest free one
    assert unused_id(rows, [9], 10, avoid=[8]) == 6
    with pytest.raises(ValueError, match="none is left"):
        unused_id([{"input_ids": list(range(4))}], [0], 4)


def test_occlude_reads_the_position_the_model_pools_alone(gpt2_classifier):
    model, tok = gpt2_classifier  # occlude replaces with <|endoftext|> (unk), the natural lent pad id
    texts = [GPT2_TEXTS[0], GPT2_TEXTS[1]]
    table = nx.occlude(model, tok, texts, [[1], [0]])
    for text, (_, row) in zip(texts, table.iterrows()):
        own = own_logits(model, tok, text)
        assert row["prediction"] == int(own.argmax())
        assert row["p_original"] == pytest.approx(float(own.softmax(-1).max()), rel=1e-4)
        enc = tok(text, return_tensors="pt")
        enc["input_ids"][0, [1] if text == texts[0] else [0]] = tok.unk_token_id
        with torch.no_grad():
            masked = model(**enc).logits[0].softmax(-1)
        assert row["p_masked"] == pytest.approx(float(masked[int(own.argmax())]), rel=1e-4)


# --- 2. heads that were never trained --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory, make_tiny):
    """A BERT classifier checkpoint on disk (it has no masked- or causal-LM head)."""
    model, tok = make_tiny("bert", "classification")
    path = tmp_path_factory.mktemp("bert-classifier")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_load_model_records_the_new_head_and_explain_refuses_it(classifier_dir):
    from normxlogit.models import new_weights

    model, tok = nx.load_model(classifier_dir, task="causal-lm")
    new = new_weights(model)
    assert new and all(name.startswith("cls.predictions.") for name in new)
    with pytest.raises(nx.UntrainedHeadError, match=r"explain refuses this BertLMHeadModel.*freshly initialised.*"
                                                      r"cls\.predictions\..*nx\.pretrained.*normxlogit finetune.*"
                                                      r"allow_untrained_head=True"):
        nx.explain(model, tok, "a gripping film .")
    with pytest.raises(nx.UntrainedHeadError, match="evaluate refuses"):
        nx.evaluate(model, tok, ["a gripping film ."], "random")
    with pytest.raises(nx.UntrainedHeadError, match="explain_generation refuses"):
        nx.explain_generation(model, tok, "a gripping film", max_new_tokens=2)


def test_explain_dataset_refuses_an_untrained_head(classifier_dir, tmp_path):
    import pandas as pd

    model, tok = nx.load_model(classifier_dir, task="masked-lm")
    with pytest.raises(nx.UntrainedHeadError, match="explain_dataset refuses this BertForMaskedLM"):
        nx.explain_dataset(model, tok, pd.DataFrame({"text": ["a [MASK] film ."]}), output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_refuses_an_untrained_head(classifier_dir, capsys):
    from normxlogit.cli import main

    assert main(["explain", "a [MASK] film", "--model", str(classifier_dir), "--task", "causal-lm"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "normxlogit: error: explain refuses" in captured.err and "cls.predictions." in captured.err


def test_trained_or_allowed_heads_are_explained(classifier_dir):
    from normxlogit.models import new_weights

    model, tok = nx.load_model(classifier_dir, task="classification")  # the checkpoint's own head
    assert new_weights(model) == []
    nx.explain(model, tok, "a gripping film .")
    allowed, tok = nx.load_model(classifier_dir, task="causal-lm", allow_untrained_head=True)
    assert new_weights(allowed) == []
    assert np.isfinite(nx.explain(allowed, tok, "a gripping film .").scores).all()
    # one training step on the new head, in the user's own loop, lifts the record
    model, tok = nx.load_model(classifier_dir, task="causal-lm")
    enc = tok("a gripping film .", return_tensors="pt")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(**enc, labels=enc["input_ids"]).loss.backward()
    optimizer.step()
    assert new_weights(model) == []
    nx.explain(model, tok, "a gripping film .")


def test_a_head_of_another_size_is_recorded_too(classifier_dir):
    from normxlogit.models import new_weights

    model, tok = nx.load_model(classifier_dir, num_labels=5, ignore_mismatched_sizes=True)
    assert {"classifier.weight", "classifier.bias"} <= set(new_weights(model))
    with pytest.raises(nx.UntrainedHeadError, match="classifier.weight"):
        nx.explain(model, tok, "a gripping film .")


# --- 4. head= callables that return the wrong thing ------------------------------------------------------------------
BAD_HEADS = {
    "one dimension": (lambda m: lambda h: m.classifier(h)[:, 0], ValueError, r"returned a tensor of shape \(2,\)\. "
                                                                             r"Keep the class dimension"),
    "dropped rows": (lambda m: lambda h: m.classifier(h)[:1], ValueError, r"returned a tensor of shape \(1, 3\)\. It "
                                                                         "must keep every row"),
    "pooled": (lambda m: lambda h: m.classifier(h).mean(0, keepdim=True), ValueError, r"shape \(1, 3\)"),
    "wrong classes": (lambda m: lambda h: m.classifier(h)[:, :2], ValueError, r"returned a tensor of shape \(2, 2\)"),
    "numpy": (lambda m: lambda h: m.classifier(h).detach().numpy(), TypeError, r"returned a numpy\.ndarray of shape "
                                                                              r"\(2, 3\)\. Return a torch tensor"),
    "a list": (lambda m: lambda h: m.classifier(h).tolist(), TypeError, r"returned a builtins\.list"),
    "not callable": (lambda m: 3, TypeError, r"head= must be a callable .*got int \(3\)"),
}


@pytest.mark.parametrize("case", list(BAD_HEADS))
def test_bad_head_callables_get_one_clear_error(make_tiny, case):
    model, tok = make_tiny("bert", "classification")
    make, error, match = BAD_HEADS[case]
    shape = "" if case == "not callable" else r"must return a torch\.Tensor of shape \(N, 3\).*hidden states of shape " \
                                              r"\(2, 32\).*"
    with pytest.raises(error, match=shape + match):
        nx.explain(model, tok, ["a gripping film .", "dull ."], "logat", head=make(model))
    with pytest.raises(error, match=match):  # the same check where head= is accepted
        nx.resolve_head(model, head=make(model))


def test_bad_head_for_regression_and_lm(make_tiny):
    model, tok = make_tiny("bert", "regression")
    with pytest.raises(ValueError, match=r"shape \(N, 1\): one row per hidden state, one column per output"):
        nx.explain(model, tok, "a gripping film .", head=lambda h: model.classifier(h)[:, 0])
    lm, tok = make_tiny("gpt2", "causal-lm")
    with pytest.raises(ValueError, match=r"\(N, vocabulary\).*returned a tensor of shape \(2,\)"):
        nx.explain(lm, tok, "a gripping film", head=lambda h: lm.lm_head(h).sum(-1))


def test_good_head_callable_still_works(make_tiny):
    model, tok = make_tiny("bert", "classification")
    head = lambda h: model.classifier(model.bert.pooler.activation(model.bert.pooler.dense(h)))  # noqa: E731
    got = nx.explain(model, tok, "a gripping film .", "logat", head=head)
    want = nx.explain(model, tok, "a gripping film .", "logat")
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-6)


# --- 5. evaluate measures the class the attributions explain ---------------------------------------------------------
EVAL_TEXTS = ["a gripping , funny film .", "dull ."]


def _mask_reference(model, tok, attrs):
    """p(target) on the text alone and with the top-ranked / other words masked, per example and ratio."""
    out = {}
    for kind in ("comprehensiveness", "sufficiency"):
        rows = []
        for a in attrs:
            candidates = [i for i in range(len(a)) if not a.special_tokens_mask[i]]
            ranking = sorted(candidates, key=lambda i: (-a.scores[i], i))
            row = []
            for k in DEFAULT_RATIOS:
                c = int(round(k * len(candidates), 6) // 1)
                enc = tok(a.text, return_tensors="pt")
                enc["input_ids"][0, ranking[:c] if kind == "comprehensiveness" else ranking[c:]] = tok.mask_token_id
                with torch.no_grad():
                    row.append(float(model(**enc).logits[0].softmax(-1)[a.target]))
            rows.append(row)
        out[kind] = np.array(rows)
    return out


def test_evaluate_measures_the_explained_class_of_given_attributions(make_tiny, tmp_path):
    model, tok = make_tiny("bert", "classification")
    predicted = [a.prediction for a in nx.explain(model, tok, EVAL_TEXTS)]
    others = [(p + 1) % 3 for p in predicted]  # classes the model did not predict
    attrs = nx.explain(model, tok, EVAL_TEXTS, "logat", target=others)
    result = nx.evaluate(model, tok, EVAL_TEXTS, attrs)
    assert result.target.tolist() == others and result.original_prediction.tolist() == predicted
    want = _mask_reference(model, tok, attrs)
    for kind in want:
        np.testing.assert_allclose(result.outputs[kind], want[kind], rtol=1e-4, atol=1e-6)
    own = [float(own_logits(model, tok, t).softmax(-1)[c]) for t, c in zip(EVAL_TEXTS, others)]
    np.testing.assert_allclose(result.original, own, rtol=1e-5)
    result.save(tmp_path / "r.json")
    assert nx.FaithfulnessResult.load(tmp_path / "r.json").target.tolist() == others


def test_evaluate_passes_target_to_the_explainer_and_the_measurement(make_tiny):
    model, tok = make_tiny("bert", "classification")
    by_name = nx.evaluate(model, tok, EVAL_TEXTS, "logat", target=[2, 0])
    given = nx.evaluate(model, tok, EVAL_TEXTS, nx.explain(model, tok, EVAL_TEXTS, "logat", target=[2, 0]))
    assert by_name.target.tolist() == [2, 0] == given.target.tolist()
    for kind in by_name.outputs:
        np.testing.assert_allclose(by_name.outputs[kind], given.outputs[kind], rtol=1e-6)
    default = nx.evaluate(model, tok, EVAL_TEXTS, "logat")
    assert default.target.tolist() == default.original_prediction.tolist()


def test_evaluate_refuses_targets_it_cannot_measure(make_tiny):
    import dataclasses

    model, tok = make_tiny("bert", "classification")
    attrs = nx.explain(model, tok, EVAL_TEXTS, "logat")
    with pytest.raises(ValueError, match=r"Attribution 1 explains target 7, but this model has 3 classes"):
        nx.evaluate(model, tok, EVAL_TEXTS, [attrs[0], dataclasses.replace(attrs[1], target=7)])
    with pytest.raises(ValueError, match="Attribution 0 has no target"):
        nx.evaluate(model, tok, EVAL_TEXTS, [dataclasses.replace(attrs[0], target=None), attrs[1]])
    lm, tok = make_tiny("llama", "causal-lm")
    words = ["good", "bad"]
    ids = [tok.convert_tokens_to_ids(w) for w in words]
    # with label_words, target= indexes the label words (the label-word head's classes), not the vocabulary
    with pytest.raises(ValueError, match=r"target \d+ is out of range: this model has 2 classes"):
        nx.evaluate(lm, tok, ["a gripping film"], "logat", label_words=words,
                    target=[tok.convert_tokens_to_ids("film")])
    # a label word the model did not predict is measured as asked
    chosen = nx.evaluate(lm, tok, ["a gripping film", "dull"], "logat", label_words=words)
    other = [1 - int(p) for p in chosen.original_prediction]
    flipped = nx.evaluate(lm, tok, ["a gripping film", "dull"], "logat", label_words=words, target=other)
    assert flipped.target.tolist() == other and flipped.original_prediction.tolist() == \
        chosen.original_prediction.tolist()
    for text, k, p in zip(["a gripping film", "dull"], other, flipped.original):
        assert p == pytest.approx(float(own_logits(lm, tok, text)[-1].softmax(-1)[ids[k]]), rel=1e-4)


# --- 3. families whose embeddings or lengths normxlogit cannot use ---------------------------------------------------
def _canine(task):
    config = tf.CanineConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                             downsampling_rate=4, num_hash_functions=2, num_hash_buckets=64,
                             **({"num_labels": 1, "problem_type": "regression"} if task == "regression"
                                else {"num_labels": 3}))
    torch.manual_seed(0)
    return tf.CanineForSequenceClassification(config).eval()


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_a_model_without_an_embedding_table_is_unsupported(tokenizer, task):
    model = _canine(task)
    with pytest.raises(nx.UnsupportedModelError, match=r"CanineForSequenceClassification.*no input-embedding table"):
        nx.explain(model, tokenizer, "a gripping film .")
    with pytest.raises(nx.UnsupportedModelError, match="no input-embedding table"):
        nx.evaluate(model, tokenizer, ["a gripping film ."], "random")


def test_the_embedding_check_is_by_failure_not_by_name(make_tiny):
    class NoTableForSequenceClassification(tf.BertForSequenceClassification):
        def get_input_embeddings(self):
            raise NotImplementedError("no table")

    model, tok = make_tiny("bert", "classification")
    other = NoTableForSequenceClassification(model.config).eval()
    with pytest.raises(nx.UnsupportedModelError, match="NoTableForSequenceClassification .*no input-embedding table"):
        nx.explain(other, tok, "a gripping film .")


def _nystromformer(tokenizer, landmarks: int):
    config = tf.NystromformerConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=4, intermediate_size=64, num_landmarks=landmarks,
                                    segment_means_seq_len=16, max_position_embeddings=130)
    torch.manual_seed(0)
    return tf.NystromformerForMaskedLM(config).eval()


def test_a_length_the_model_cannot_take_is_named(tokenizer):
    model = _nystromformer(tokenizer, landmarks=4)
    with pytest.raises(nx.UnsupportedModelError, match=r"cannot run a batch of 1 text\(s\) padded to 6 tokens.*"
                                                       r"num_landmarks=4, segment_means_seq_len=16.*max_length="):
        nx.explain(model, tokenizer, "a [MASK] film .")
    # 2 x 8 tokens fit the reshape (2 * 8 = 16): transformers runs it, mixing the two rows; the text alone does not
    with pytest.raises(nx.UnsupportedModelError, match="segment_means_seq_len=16"):
        nx.explain(model, tokenizer, ["a [MASK] film is good .", "a [MASK] film was bad ."])


def test_hidden_states_that_are_not_one_per_token_are_refused(make_tiny):
    class DownsamplingForSequenceClassification(tf.BertForSequenceClassification):  # a family outside the table that pools the sequence
        def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **kwargs):
            out = super().forward(input_ids, attention_mask, token_type_ids, **kwargs)
            out.hidden_states = tuple(h[:, ::2] for h in out.hidden_states)
            return out

    model, tok = make_tiny("bert", "classification")
    other = DownsamplingForSequenceClassification(model.config).eval()
    other.load_state_dict(model.state_dict())
    with pytest.raises(nx.UnsupportedModelError, match=r"keeps hidden states of \[3\] positions for 6 input tokens"):
        nx.explain(other, tok, "a gripping film .")


def test_outputs_that_depend_on_the_batch_are_refused(make_tiny):
    from normxlogit.core.compat import check_batch_invariance

    model, _ = make_tiny("bert", "classification")
    check_batch_invariance(model, torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 2.0000001]]), 2, 5)
    with pytest.raises(nx.UnsupportedModelError, match=r"another output alone than in a batch of 2 text\(s\) padded "
                                                       r"to 5 tokens"):
        check_batch_invariance(model, torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 2.5]]), 2, 5)


def test_a_config_length_limit_truncates_with_a_warning(tokenizer):
    torch.manual_seed(0)  # MPT builds its ALiBi bias for max_seq_len positions and fails on longer inputs
    model = tf.MptForCausalLM(tf.MptConfig(d_model=32, n_heads=4, n_layers=2, max_seq_len=8,
                                           vocab_size=len(tokenizer))).eval()
    with pytest.warns(UserWarning, match="truncated to 8"):
        a = nx.explain(model, tokenizer, "a gripping , funny and thoroughly entertaining film .", "logat")
    assert len(a.tokens) == 8
    with pytest.raises(ValueError, match="max_length must be between 2 and the model's limit 8"):
        nx.explain(model, tokenizer, "a gripping film .", max_length=12)


def test_a_guessed_head_that_cannot_read_the_hidden_states_is_named(tokenizer):
    config = tf.ReformerConfig(hidden_size=32, num_attention_heads=2, attention_head_size=16, feed_forward_size=64,
                               attn_layers=["local", "local"], axial_pos_shape=(4, 8), axial_pos_embds_dim=(16, 16),
                               local_attn_chunk_length=4, vocab_size=len(tokenizer), pad_token_id=0, is_decoder=True,
                               max_position_embeddings=32)
    torch.manual_seed(0)  # reversible layers: the output layer reads two streams side by side (64 wide)
    model = tf.ReformerModelWithLMHead(config).eval()
    with pytest.raises(nx.UnsupportedModelError, match=r"generic head guess .*cannot read its hidden states.*"
                                                       r"Pass head="):
        nx.explain(model, tokenizer, "a gripping , funny film .", "logat", task="causal-lm")  # 8 tokens
    # 6 tokens: Reformer pads them to its chunk length, 8 positions
    with pytest.raises(nx.UnsupportedModelError, match=r"keeps hidden states of \[8\] positions for 6 input tokens "
                                                       r"\(it pads the sequence to a multiple of a chunk"):
        nx.explain(model, tokenizer, "a gripping film .", "logat", task="causal-lm")
