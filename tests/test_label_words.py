"""The label-word head: a prompted causal LM as a classifier (template=, label_words=), the contrastive read
(contrast=True), and evaluate's confidence over the label words, against plain references on tiny random decoders."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch
import transformers as tf
from tokenizers import ByteLevelBPETokenizer

import normxlogit as nx
from normxlogit.cli import main
from normxlogit.core.heads import HeadMismatchError
from normxlogit.core.label_words import LabelWordHead, chat_template, fill_template, label_word_head
from normxlogit.evaluation.perturbation import DEFAULT_RATIOS
import architectures_configs
from conftest import tiny_config

torch.set_num_threads(1)

TEMPLATE = "Review: {}\nSentiment (positive or negative):"
WORDS = [" negative", " positive"]
REVIEWS = [
    "a gripping , funny and thoroughly entertaining film .",
    "dull .",
    "the plot holds together until the last act , when it collapses .",
    "not bad at all , and the acting is great .",
]
CORPUS = REVIEWS * 20 + ["review : sentiment ( positive or negative ) : positive negative positive negative"] * 50


@pytest.fixture(scope="module")
def bpe():
    """A tiny byte-level BPE tokenizer (GPT-2's kind: a leading space is part of the word's token)."""
    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(CORPUS, vocab_size=400, min_frequency=2, special_tokens=["<|endoftext|>"])
    tok = tf.PreTrainedTokenizerFast(tokenizer_object=trainer._tokenizer, eos_token="<|endoftext|>",
                                     pad_token="<|endoftext|>", unk_token="<|endoftext|>",
                                     model_input_names=["input_ids", "attention_mask"])  # as GPT-2's
    return tok


@pytest.fixture(params=["llama-wordpiece", "gpt2-wordpiece", "llama-bpe", "gpt2-bpe"])
def lm(request, make_tiny, bpe):
    family, kind = request.param.split("-")
    if kind == "wordpiece":  # the shared MiniLM tokenizer: [CLS] ... [SEP] around every prompt
        return make_tiny(family, "causal-lm")
    torch.manual_seed(1)
    model = tf.AutoModelForCausalLM.from_config(tiny_config(family, len(bpe))).eval()
    return model, bpe


def label_ids(tok, words=WORDS) -> list[int]:
    ids = [tok(w, add_special_tokens=False)["input_ids"] for w in words]
    assert all(len(i) == 1 for i in ids)
    return [i[0] for i in ids]


def own_last_logits(model, tok, prompt: str, ids: list[int]) -> torch.Tensor:
    """The plain reference: the model's own logits of the label words at the prompt's last position."""
    with torch.no_grad():
        return model(**tok(prompt, return_tensors="pt")).logits[0, -1, ids].double()


def every_token_logits(model, tok, prompt: str, ids: list[int]) -> torch.Tensor:
    """The label words' logits read on every token's final state through the full LM head (T, C)."""
    with torch.no_grad():
        final = model(**tok(prompt, return_tensors="pt"), output_hidden_states=True).hidden_states[-1][0]
        return model.get_output_embeddings()(final)[:, ids].double()


def log_odds(logits: torch.Tensor, target: int) -> torch.Tensor:
    others = torch.cat([logits[..., :target], logits[..., target + 1:]], -1)
    return logits[..., target] - torch.logsumexp(others, -1)


# --- the head and the contrastive read against the model's own logits -----------------------------------------------
def test_label_word_head_equals_the_models_own_logits(lm):
    model, tok = lm
    ids = label_ids(tok)
    attrs = nx.explain(model, tok, REVIEWS, method="logat", template=TEMPLATE, label_words=WORDS)
    for review, a in zip(REVIEWS, attrs):
        prompt = TEMPLATE.replace("{}", review)
        assert a.input_ids == tok(prompt)["input_ids"] and a.text == review
        own = own_last_logits(model, tok, prompt, ids)
        assert a.prediction == a.target == int(own.argmax()) and a.position == len(a) - 1
        assert a.meta["label_words"] == WORDS and a.meta["prediction_label"] == WORDS[a.prediction]
        assert a.meta["template"] == TEMPLATE
        np.testing.assert_allclose(a.scores[-1], own[a.target], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(a.scores, every_token_logits(model, tok, prompt, ids)[:, a.target], rtol=1e-5,
                                   atol=1e-5)


@pytest.mark.parametrize("words", [WORDS, [" negative", " positive", " or"]])
def test_contrastive_read_equals_the_models_own_log_odds(lm, words):
    model, tok = lm
    ids = label_ids(tok, words)
    plain = nx.explain(model, tok, REVIEWS, method="normxlogit", template=TEMPLATE, label_words=words)
    contrast = nx.explain(model, tok, REVIEWS, method="logat", template=TEMPLATE, label_words=words, contrast=True)
    product = nx.explain(model, tok, REVIEWS, method="normxlogit", template=TEMPLATE, label_words=words,
                         contrast=True, target=1)
    for review, p, c, x in zip(REVIEWS, plain, contrast, product):
        prompt = TEMPLATE.replace("{}", review)
        own = own_last_logits(model, tok, prompt, ids)
        np.testing.assert_allclose(c.scores[-1], log_odds(own, c.target), rtol=1e-5, atol=1e-5)
        rows = every_token_logits(model, tok, prompt, ids)
        np.testing.assert_allclose(c.scores, log_odds(rows, c.target), rtol=1e-5, atol=1e-5)
        norms = p.scores / every_token_logits(model, tok, prompt, ids)[:, p.target].numpy()
        np.testing.assert_allclose(x.scores, norms * log_odds(rows, 1).numpy(), rtol=1e-4, atol=1e-5)
        if len(words) == 2:  # two classes: the log-odds are the plain logit difference
            np.testing.assert_allclose(c.scores, (rows[:, c.target] - rows[:, 1 - c.target]).numpy(), atol=1e-5)


def test_layerwise_contrastive_read_is_the_logit_lens(make_tiny):
    model, tok = make_tiny("llama", "causal-lm")
    ids = label_ids(tok)
    a = nx.explain(model, tok, REVIEWS[0], method="logat", template=TEMPLATE, label_words=WORDS, contrast=True,
                   layer=1)
    with torch.no_grad():
        out = model(**tok(TEMPLATE.replace("{}", REVIEWS[0]), return_tensors="pt"), output_hidden_states=True)
        lens = model.lm_head(model.model.norm(out.hidden_states[1][0]))[:, ids].double()
    np.testing.assert_allclose(a.scores, log_odds(lens, a.target), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["gemma2", "cohere", "granite"])
def test_soft_capping_and_scaling_are_applied(bpe, family):
    """Gemma-2's final soft-capping, Cohere's logit scale, Granite's logit scaling: the read reproduces the model."""
    torch.manual_seed(4)
    model = tf.AutoModelForCausalLM.from_config(architectures_configs.tiny_config(family, len(bpe))).eval()
    ids = label_ids(bpe)
    attrs = nx.explain(model, bpe, REVIEWS, method="logat", template=TEMPLATE, label_words=WORDS, contrast=True)
    for a in attrs:
        own = own_last_logits(model, bpe, TEMPLATE.replace("{}", a.text), ids)
        np.testing.assert_allclose(a.scores[-1], log_odds(own, a.target), rtol=1e-5, atol=1e-5)


def test_a_wrong_head_fails_the_self_check(make_tiny):
    model, tok = make_tiny("llama", "causal-lm")
    right = nx.explain(model, tok, REVIEWS, method="logat", template=TEMPLATE, label_words=WORDS,
                       head=lambda h: model.lm_head(h))  # a user's head= is read through the label words too
    np.testing.assert_allclose(right[0].scores, nx.explain(model, tok, REVIEWS[0], method="logat", template=TEMPLATE,
                                                           label_words=WORDS).scores, rtol=1e-5, atol=1e-6)
    for contrast in (False, True):
        with pytest.raises(HeadMismatchError, match="Self-check failed"):
            nx.explain(model, tok, REVIEWS, method="logat", template=TEMPLATE, label_words=WORDS, contrast=contrast,
                       head=lambda h: 2 * model.lm_head(h))


def test_only_the_label_word_rows_are_applied(make_tiny, monkeypatch):
    """No full-vocabulary product on any token: the output embedding never runs on the head's reads."""
    model, tok = make_tiny("gpt2", "causal-lm")
    calls = []
    handle = model.lm_head.register_forward_hook(lambda m, i, o: calls.append(tuple(o.shape)))
    try:
        nx.explain(model, tok, REVIEWS, method="normxlogit", template=TEMPLATE, label_words=WORDS, contrast=True)
    finally:
        handle.remove()
    assert calls and all(shape[1] == 1 for shape in calls)  # the model's own forward, at the last position only


# --- templates ---------------------------------------------------------------------------------------------------------
def test_only_the_inserted_text_is_ranked(lm):
    model, tok = lm
    for a in nx.explain(model, tok, REVIEWS, template=TEMPLATE, label_words=WORDS):
        prompt, [(start, end)] = fill_template(TEMPLATE, a.text)
        enc = tok(prompt, return_offsets_mapping=True)
        inside = [s < end and e > start for s, e in enc["offset_mapping"]]
        assert [not m for m in a.special_tokens_mask] == inside
        content = [i for i, m in zip(a.input_ids, a.special_tokens_mask) if not m]
        assert tok.decode(content).strip().replace(" ", "") == a.text.replace(" ", "")
        assert set(a.ranking()) == {i for i, m in enumerate(a.special_tokens_mask) if not m}


def test_sentence_pairs_with_two_slots(make_tiny):
    model, tok = make_tiny("gpt2", "causal-lm")
    template = "Premise: {}\nHypothesis: {}\nDoes the premise entail the hypothesis (yes or no)?"
    pair = ("a man plays the flute .", "a man makes music .")
    a = nx.explain(model, tok, [pair], "logat", template=template, label_words=[" no", " yes"])[0]
    prompt = template.replace("{}", pair[0], 1).replace("{}", pair[1], 1)
    assert a.input_ids == tok(prompt)["input_ids"] and a.text == pair
    words = [t for t, m in zip(a.tokens, a.special_tokens_mask) if not m]
    assert words == tok.tokenize(pair[0]) + tok.tokenize(pair[1])
    np.testing.assert_allclose(a.scores[-1], own_last_logits(model, tok, prompt, label_ids(tok, [" no", " yes"]))[
        a.target], rtol=1e-5)


def test_chat_template(make_tiny, bpe):
    model, _ = make_tiny("llama", "causal-lm")
    tok = copy.deepcopy(bpe)
    tok.chat_template = ("{% for m in messages %}<|endoftext|>{{ m['role'] }}\n{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|endoftext|>assistant\n{% endif %}")
    torch.manual_seed(2)
    model = tf.AutoModelForCausalLM.from_config(tiny_config("llama", len(tok))).eval()
    template = chat_template(tok, "Is this review positive or negative? {}", answer_prefix="Sentiment:")
    assert template.endswith("assistant\nSentiment:") and template.count("{}") == 1
    a = nx.explain(model, tok, "dull .", template=template, label_words=WORDS)
    prompt = template.replace("{}", "dull .")
    assert a.input_ids == tok(prompt)["input_ids"]
    assert [t for t, m in zip(a.tokens, a.special_tokens_mask) if not m] == tok.tokenize(" dull .")[-3:] or \
        tok.decode([i for i, m in zip(a.input_ids, a.special_tokens_mask) if not m]).strip() == "dull ."


# --- batching ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["normxlogit", "logat", "gradient_norm", "random"])
def test_padding_and_batch_size_do_not_change_the_scores(lm, method):
    model, tok = lm
    options = {"contrast": True} if method in ("normxlogit", "logat") else {}
    one = nx.explain(model, tok, REVIEWS, method=method, template=TEMPLATE, label_words=WORDS, batch_size=1,
                     **options)
    all_ = nx.explain(model, tok, REVIEWS, method=method, template=TEMPLATE, label_words=WORDS, batch_size=4,
                      **options)
    for a, b in zip(one, all_):
        assert a.prediction == b.prediction
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-4, atol=1e-5)


# --- the gradient methods and leave-one-out explain the label word ---------------------------------------------------
def test_gradients_differentiate_the_label_words_logit(lm):
    model, tok = lm
    ids = label_ids(tok)
    attrs = nx.explain(model, tok, REVIEWS, method="grad_x_input", template=TEMPLATE, label_words=WORDS, target=0)
    for a in attrs:
        enc = tok(TEMPLATE.replace("{}", a.text), return_tensors="pt")
        embeds = model.get_input_embeddings()(enc["input_ids"]).detach().requires_grad_()
        calls = []

        def swap(module, inputs, output):  # the word lookup only (GPT-2 looks token types up in the same table)
            calls.append(1)
            return embeds if len(calls) == 1 else output

        hook = model.get_input_embeddings().register_forward_hook(swap)
        try:
            logit = model(**enc).logits[0, -1, ids[0]]
        finally:
            hook.remove()
        (grad,) = torch.autograd.grad(logit, embeds)
        np.testing.assert_allclose(a.scores, (grad * embeds).abs().sum(-1)[0].detach().numpy(), rtol=1e-4, atol=1e-6)


def test_leave_one_out_drops_the_renormalised_label_word_probability(make_tiny):
    model, tok = make_tiny("llama", "causal-lm")
    ids = label_ids(tok)
    a = nx.explain(model, tok, "dull and slow .", method="leave_one_out", template=TEMPLATE, label_words=WORDS)
    enc = tok(TEMPLATE.replace("{}", "dull and slow ."), return_tensors="pt")
    with torch.no_grad():
        base = model(**enc).logits[0, -1, ids].softmax(-1)[a.target]
        for i, special in enumerate(a.special_tokens_mask):
            ids_i = enc["input_ids"].clone()
            ids_i[0, i] = tok.mask_token_id
            drop = base - model(input_ids=ids_i, attention_mask=enc["attention_mask"],
                                token_type_ids=enc["token_type_ids"]).logits[0, -1, ids].softmax(-1)[a.target]
            assert a.scores[i] == pytest.approx(0.0 if special else float(drop), abs=1e-5)


# --- evaluate: confidence over the label words, against a plain loop ------------------------------------------------
def reference(model, tok, attrs, ids, confidence, labels=None):
    """The clean protocol with deletion as a plain loop: one perturbed prompt per forward pass; only the review's
    tokens are ranked and deleted (the template's are checked to survive every perturbation)."""

    def read(input_ids):
        with torch.no_grad():
            last = model(input_ids=torch.tensor([input_ids])).logits[0, -1].double()
        probs = last[ids].softmax(-1) if confidence == "label_words" else last.softmax(-1)[ids]
        return probs, int(last[ids].argmax())

    curves = {}
    for kind in ("comprehensiveness", "sufficiency"):
        outs, preds, origs = [], [], []
        for a in attrs:
            template_ids = [i for i, m in zip(a.input_ids, a.special_tokens_mask) if m]
            candidates = [i for i in range(len(a)) if not a.special_tokens_mask[i]]
            ranking = sorted(candidates, key=lambda i: (-a.scores[i], i))
            probs, y_hat = read(a.input_ids)
            origs.append(float(probs[y_hat]))
            row_out, row_pred = [], []
            for k in DEFAULT_RATIOS:
                c = int(round(k * len(candidates), 6) // 1)
                drop = set(ranking[:c] if kind == "comprehensiveness" else ranking[c:])
                kept = [t for i, t in enumerate(a.input_ids) if i not in drop]
                assert [t for i, t in enumerate(a.input_ids) if i not in drop and a.special_tokens_mask[i]] == \
                    template_ids
                probs, guess = read(kept)
                row_out.append(float(probs[y_hat]))
                row_pred.append(guess)
            outs.append(row_out)
            preds.append(row_pred)
        outs, preds, origs = np.array(outs), np.array(preds), np.array(origs)
        curves[f"{kind}_cd"] = (origs[:, None] - outs).mean(0)
        if labels is not None:
            curves[f"{kind}_accuracy"] = (preds == np.asarray(labels)[:, None]).mean(0)
    return curves


@pytest.mark.parametrize("confidence", ["label_words", "vocabulary"])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_evaluate_equals_a_plain_loop(make_tiny, bpe, family, confidence):
    torch.manual_seed(3)
    model = tf.AutoModelForCausalLM.from_config(tiny_config(family, len(bpe))).eval()
    tok, ids = bpe, label_ids(bpe)
    labels = [1, 0, 0, 1]
    result = nx.evaluate(model, tok, REVIEWS, "normxlogit", template=TEMPLATE, label_words=WORDS, labels=labels,
                         confidence=confidence, contrast=True, batch_tokens=50)
    assert result.meta["confidence"] == confidence and result.meta["template"] == TEMPLATE
    assert result.meta["explain_options"] == {"contrast": True} and result.replacement == "delete"
    attrs = nx.explain(model, tok, REVIEWS, method="normxlogit", template=TEMPLATE, label_words=WORDS, contrast=True)
    assert result.original_prediction.tolist() == [a.prediction for a in attrs]
    expected = reference(model, tok, attrs, ids, confidence, labels)
    assert set(expected) == set(result.metrics)
    for metric, values in expected.items():
        np.testing.assert_allclose(result.curve(metric), values, atol=1e-6, err_msg=metric)
    # Given attributions carry their template: the same result, whatever the batches.
    again = nx.evaluate(model, tok, None, attrs, labels=labels, label_words=WORDS, confidence=confidence,
                        batch_tokens=10_000)
    np.testing.assert_allclose(again.curves.values, result.curves.values, atol=1e-7)


def test_label_word_confidence_is_the_renormalised_probability(make_tiny):
    model, tok = make_tiny("llama", "causal-lm")
    words = dict(template=TEMPLATE, label_words=WORDS)
    over_words = nx.evaluate(model, tok, REVIEWS, "random", confidence="label_words", **words)
    over_vocab = nx.evaluate(model, tok, REVIEWS, "random", **words)
    assert over_vocab.meta["confidence"] == "vocabulary"  # the default, as before label-word heads
    ids = label_ids(tok)
    for review, p_words, p_vocab in zip(REVIEWS, over_words.original, over_vocab.original):
        with torch.no_grad():
            last = model(**tok(TEMPLATE.replace("{}", review), return_tensors="pt")).logits[0, -1].double()
        y = int(last[ids].argmax())
        assert p_words == pytest.approx(float(last[ids].softmax(-1)[y]), rel=1e-6)
        assert p_vocab == pytest.approx(float(last.softmax(-1)[ids[y]]), rel=1e-6)


def test_evaluate_methods_and_the_cache(make_tiny, tmp_path):
    model, tok = make_tiny("gpt2", "causal-lm")
    options = dict(template=TEMPLATE, label_words=WORDS, confidence="label_words", labels=[1, 0, 0, 1])
    many = nx.evaluate_methods(model, tok, REVIEWS, ["logat", "gradient_norm"], cache=tmp_path,
                               method_options={"logat": {"contrast": True}}, **options)
    single = nx.evaluate(model, tok, REVIEWS, "logat", contrast=True, **options)
    np.testing.assert_allclose(many[0].curves.values, single.curves.values, atol=1e-7)
    assert many[0].meta["confidence"] == "label_words" and many[0].meta["explain_options"] == {"contrast": True}
    cached = nx.evaluate_methods(model, tok, REVIEWS, ["logat", "gradient_norm"], cache=tmp_path,
                                 method_options={"logat": {"contrast": True}}, **options)
    assert [r.aopc for r in cached] == [r.aopc for r in many]
    vocab = nx.evaluate_methods(model, tok, REVIEWS, ["logat"], cache=tmp_path,
                                **{**options, "confidence": "vocabulary"})
    assert vocab[0].meta["confidence"] == "vocabulary" and len(list(tmp_path.glob("*.json"))) == 3


# --- corpus scale and the command line ---------------------------------------------------------------------------------
def test_explain_dataset_with_a_template(make_tiny, tmp_path):
    model, tok = make_tiny("llama", "causal-lm")
    data = pd.DataFrame({"text": REVIEWS * 2})
    nx.explain_dataset(model, tok, data, output_dir=tmp_path / "out", method="normxlogit", template=TEMPLATE,
                       label_words=WORDS, contrast=True, shard_size=3, batch_size=2, progress=False)
    got = nx.load_dataset_attributions(tmp_path / "out")
    ref = nx.explain(model, tok, REVIEWS * 2, template=TEMPLATE, label_words=WORDS, contrast=True)
    for g, r in zip(got, ref):
        assert g.input_ids == r.input_ids and g.special_tokens_mask == r.special_tokens_mask and g.text == r.text
        assert g.meta["template"] == TEMPLATE and g.meta["label_words"] == WORDS
        np.testing.assert_allclose(g.scores, r.scores, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory, make_tiny):
    model, tok = make_tiny("llama", "causal-lm")
    path = tmp_path_factory.mktemp("tiny-llm")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_cli(llm_dir, make_tiny, capsys, tmp_path):
    model, tok = make_tiny("llama", "causal-lm")
    argv = ["explain", "dull .", "--model", llm_dir, "--template", TEMPLATE, "--label-words", *WORDS,
            "--method", "logat", "--contrast", "--format", "json"]
    assert main(argv) == 0
    (data,) = json.loads(capsys.readouterr().out)
    ref = nx.explain(model, tok, "dull .", method="logat", template=TEMPLATE, label_words=WORDS, contrast=True)
    np.testing.assert_allclose(data["scores"], ref.scores, rtol=1e-5, atol=1e-6)
    assert data["meta"]["label_words"] == WORDS
    pd.DataFrame({"sentence": REVIEWS}).to_csv(tmp_path / "d.tsv", sep="\t", index=False)
    assert main(["explain-dataset", str(tmp_path / "d.tsv"), "--text-column", "sentence", "--model", llm_dir,
                 "--output", str(tmp_path / "out"), "--template", TEMPLATE, "--label-words", *WORDS,
                 "--contrast", "--no-progress"]) == 0
    got = nx.load_dataset_attributions(tmp_path / "out")
    assert [g.meta["template"] for g in got] == [TEMPLATE] * len(REVIEWS)
    capsys.readouterr()
    assert main(argv[:-2] + ["--label-words", " negative", " normxlogit"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("normxlogit: error: The label word ' normxlogit' is") and "Traceback" not in err


# --- errors ---------------------------------------------------------------------------------------------------------------
def test_a_multi_token_label_word_says_how_it_splits(lm):
    model, tok = lm
    with pytest.raises(ValueError, match=r"The label word ' entertainingly' is \d+ tokens for this tokenizer \(\["):
        nx.explain(model, tok, REVIEWS, template=TEMPLATE, label_words=[" negative", " entertainingly"])


@pytest.mark.parametrize("kwargs,error,match", [
    ({"template": "Review:\nSentiment:"}, ValueError, "exactly once"),
    ({"template": "{} {} {}"}, ValueError, "exactly once"),
    ({"template": "A: {}\nB: {}\nSame?"}, ValueError, "has 2 {} but the inputs are single texts"),
    ({"template": 3}, TypeError, "template must be a string"),
    ({"label_words": [" positive"]}, ValueError, "at least two"),
    ({"label_words": [" positive", " positive"]}, ValueError, "repeat"),
    ({"method": "logat", "contrast": True, "label_words": None}, ValueError, "pass label_words="),
    ({"method": "logat", "contrast": "yes"}, TypeError, "contrast must be True or False"),
    ({"target": 2}, ValueError, "out of range"),
])
def test_bad_input_gives_clear_errors(make_tiny, kwargs, error, match):
    model, tok = make_tiny("llama", "causal-lm")
    kwargs = {"template": TEMPLATE, "label_words": WORDS, **kwargs}
    with pytest.raises(error, match=match):
        nx.explain(model, tok, REVIEWS, **kwargs)


@pytest.mark.parametrize("task", ["classification", "masked-lm"])
def test_label_words_need_a_causal_lm(make_tiny, task):
    model, tok = make_tiny("bert" if task == "masked-lm" else "gpt2", task)
    with pytest.raises(ValueError, match="label_words make a causal LM a classifier"):
        nx.explain(model, tok, REVIEWS, template=TEMPLATE, label_words=WORDS)
    with pytest.raises(ValueError, match="label_words are for causal LMs" if task == "classification" else
                       "as a causal LM"):
        nx.evaluate(model, tok, REVIEWS, "random", template=TEMPLATE, label_words=WORDS)


def test_contrast_on_a_regressor_and_a_classifier(make_tiny):
    model, tok = make_tiny("bert", "regression")
    with pytest.raises(ValueError, match="needs classes"):
        nx.explain(model, tok, REVIEWS, method="logat", contrast=True)
    model, tok = make_tiny("gpt2", "classification")  # a sequence classifier: its own classes
    a = nx.explain(model, tok, REVIEWS[1], method="logat", contrast=True)
    with torch.no_grad():
        own = model(**tok(REVIEWS[1], return_tensors="pt")).logits[0].double()
    np.testing.assert_allclose(a.scores[a.position], log_odds(own, a.target), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    ({"confidence": "label_words", "label_words": None}, "pass label_words= too"),
    ({"confidence": "probability"}, "confidence must be one of"),
    ({"protocol": "paper"}, "use protocol='clean' with a template"),
])
def test_evaluate_bad_input(make_tiny, kwargs, match):
    model, tok = make_tiny("llama", "causal-lm")
    kwargs = {"template": TEMPLATE, "label_words": WORDS, **kwargs}
    with pytest.raises(ValueError, match=match):
        nx.evaluate(model, tok, REVIEWS, "random", **kwargs)
    classifier, _ = make_tiny("gpt2", "classification")
    with pytest.raises(ValueError, match="confidence= is for causal LMs"):
        nx.evaluate(classifier, tok, REVIEWS, "random", confidence="vocabulary")


def test_a_prompt_longer_than_max_length_is_refused(make_tiny):
    model, tok = make_tiny("llama", "causal-lm")
    with pytest.raises(ValueError, match="would cut the template's end"):
        nx.explain(model, tok, REVIEWS[0], template=TEMPLATE, label_words=WORDS, max_length=12)


def test_label_word_head_type(make_tiny):
    model, tok = make_tiny("llama", "causal-lm")
    head = label_word_head(nx.resolve_head(model, "causal-lm"), tok, WORDS)
    assert isinstance(head, LabelWordHead) and head.task == "classification" and head.label_words == WORDS
    assert head.label_ids == label_ids(tok)
    states = torch.randn(5, model.config.hidden_size)
    with torch.no_grad():
        full = model.lm_head(states)[:, head.label_ids]
    torch.testing.assert_close(head(states), full, rtol=1e-5, atol=1e-5)


def test_a_shared_forward_cache_runs_each_input_once(make_tiny, monkeypatch):
    from normxlogit.evaluation import prompted

    model, tok = make_tiny("llama", "causal-lm")
    attrs = nx.explain(model, tok, REVIEWS, template=TEMPLATE, label_words=WORDS)
    plain = {c: nx.evaluate(model, tok, None, attrs, label_words=WORDS, confidence=c)
             for c in ("label_words", "vocabulary")}
    run, cache = [], {}
    original = prompted.causal_lm_outputs
    monkeypatch.setattr(prompted, "causal_lm_outputs", lambda *a: run.append(len(a[2])) or original(*a))
    for c in ("label_words", "vocabulary"):
        shared = nx.evaluate(model, tok, None, attrs, label_words=WORDS, confidence=c, forward_cache=cache)
        np.testing.assert_allclose(shared.curves.values, plain[c].curves.values, atol=1e-7)
    assert len(run) == 1 and run[0] == plain["vocabulary"].meta["forward_inputs"]  # the second call ran nothing
    other, _ = make_tiny("gpt2", "causal-lm")
    with pytest.raises(ValueError, match="another model"):
        nx.evaluate(other, tok, REVIEWS, "random", template=TEMPLATE, label_words=WORDS, forward_cache=cache)


# --- the chapter-6 study on a tiny model -------------------------------------------------------------------------------
def test_prompted_classifier_study(make_tiny, tmp_path):
    from normxlogit.studies.llm_classifiers import LABEL_WORDS, TEMPLATES, prompted_classifier_study

    model, tok = make_tiny("llama", "causal-lm")
    labels = [1, 0, 0, 1]
    kwargs = dict(methods=["random", "normxlogit (contrast)", "gradient_norm"], layers=(1,), n_boot=200,
                  cache=tmp_path)
    study = prompted_classifier_study(model, tok, REVIEWS, labels, **kwargs)
    words = list(LABEL_WORDS)
    for prompt, template in TEMPLATES.items():
        for confidence in ("label_words", "vocabulary"):
            direct = nx.evaluate(model, tok, REVIEWS, "normxlogit", template=template, label_words=words,
                                 labels=labels, confidence=confidence, contrast=True)
            got = study.results[prompt, "normxlogit (contrast)", confidence]
            np.testing.assert_allclose(got.curves.values, direct.curves.values, atol=1e-7)
            assert study.aopc.loc[(prompt, confidence, "normxlogit (contrast)"), "comprehensiveness_cd"] == \
                pytest.approx(direct.aopc["comprehensiveness_cd"], abs=1e-8)
        accuracy = np.mean(direct.original_prediction == np.array(labels))
        assert study.accuracy.loc[prompt, "accuracy"] == pytest.approx(accuracy)
    layer1 = nx.evaluate(model, tok, REVIEWS, "logat", template=TEMPLATES["zero-shot"], label_words=words,
                         labels=labels, confidence="label_words", layer=1)
    row = study.layers.query("method == 'logat' and layer == 1 and confidence == 'label_words'").iloc[0]
    assert row.comprehensiveness_cd == pytest.approx(layer1.aopc["comprehensiveness_cd"], abs=1e-8)
    # The diagnostics: the common level of a LogAt row is its mean over the review's tokens.
    a = nx.explain(model, tok, REVIEWS[2], "logat", template=TEMPLATES["few-shot"], label_words=words)
    content = a.scores[a.content_mask]
    diag = study.diagnostics.query("prompt == 'few-shot' and sentence == 2").iloc[0]
    assert diag.level == pytest.approx(content.mean(), rel=1e-5) and diag.spread == pytest.approx(content.std(),
                                                                                                  rel=1e-4)
    assert diag.common_share == pytest.approx(content.mean() ** 2 / np.mean(content ** 2), rel=1e-4)
    diff = study.versus_random.loc[("zero-shot", "label_words", "gradient_norm", "comprehensiveness_cd")]
    assert diff["low"] <= diff["minus random"] <= diff["high"]
    again = prompted_classifier_study(model, tok, REVIEWS, labels, **kwargs)  # read back from the cache
    assert again.aopc.equals(study.aopc)


def test_the_study_cache_is_kept_per_method(make_tiny, tmp_path, monkeypatch):
    """Adding a method to a study computes that method only: the others are read back from the cache."""
    from normxlogit.studies import llm_classifiers

    model, tok = make_tiny("gpt2", "causal-lm")
    kwargs = dict(templates={"zero-shot": llm_classifiers.ZERO_SHOT_TEMPLATE}, layers=(), n_boot=100, cache=tmp_path)
    first = llm_classifiers.prompted_classifier_study(model, tok, REVIEWS, [1, 0, 0, 1], methods=["random"], **kwargs)
    computed = []
    original = llm_classifiers.attribute
    monkeypatch.setattr(llm_classifiers, "attribute", lambda *a, **k: computed.append(a[3]) or original(*a, **k))
    both = llm_classifiers.prompted_classifier_study(model, tok, REVIEWS, [1, 0, 0, 1],
                                                     methods=["random", "gradient_norm"], **kwargs)
    assert computed == ["gradient_norm"]
    assert both.aopc.loc[("zero-shot", "label_words", "random")].equals(
        first.aopc.loc[("zero-shot", "label_words", "random")])
