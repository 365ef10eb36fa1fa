"""NormXLogit, LogAt and norm as inseq methods: the package's own scores, from one forward pass, with its self-check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as tf

import normxlogit as nx

inseq = pytest.importorskip("inseq", reason="pip install 'normxlogit[inseq]'")
nxi = pytest.importorskip("normxlogit.integrations.inseq")

from conftest import tiny_config  # noqa: E402
from test_generation import SMOLLM  # noqa: E402

PROMPT, TEXT = "the cat sat", "the cat sat on the mat"


@pytest.fixture(scope="module")
def byte_tokenizer():
    """A byte-level BPE tokenizer (GPT-2's scheme, a few merges): text round-trips, as inseq's forced generations
    need (the MiniLM tokenizer of the other tiny models adds [CLS]/[SEP] around every text)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "c"), ("a", "t"), ("Ġc", "at"), ("Ġ", "s")]
    tokens = ["<|endoftext|>"] + list(bytes_to_unicode().values()) + ["".join(m) for m in merges]
    backend = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return tf.PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def lm(request, byte_tokenizer):
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(tiny_config(request.param, len(byte_tokenizer))).eval()
    return model, byte_tokenizer


def _same(inseq_out, model, tok, prompt, **options):
    """inseq's grid against nx.explain_generation on the same tokens: (max abs difference, the nx result)."""
    ids, start, scores = nxi.inseq_scores(inseq_out)
    g = nx.explain_generation(model, tok, prompt, continuation=ids[start:], **options)
    assert g.source_ids == ids and g.prompt_length == start
    scores = scores.numpy()
    assert (np.isnan(scores) == np.isnan(g.scores)).all()  # NaN exactly where the source is not before the token
    return float(np.nanmax(np.abs(scores - g.scores))), g


@pytest.mark.parametrize("method", ["normxlogit", "logat", "norm"])
def test_inseq_gives_the_packages_scores(lm, method):
    model, tok = lm
    assert method in inseq.list_feature_attribution_methods()
    out = inseq.load_model(model, method, tokenizer=tok).attribute(PROMPT, generated_texts=TEXT, show_progress=False)
    diff, g = _same(out, model, tok, PROMPT, method=method)
    assert diff <= 1e-5 and len(g) == len(tok(" on the mat")["input_ids"])


def test_one_forward_pass_for_the_whole_generation(lm):
    model, tok = lm
    wrapped = inseq.load_model(model, "normxlogit", tokenizer=tok)
    calls = []
    hook = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        wrapped.attribute(PROMPT, generated_texts=TEXT, show_progress=False)
    finally:
        hook.remove()
    assert len(calls) == 1  # not one per generated token


def test_layer_option_from_load_and_from_attribute(lm):
    model, tok = lm
    from_load = inseq.load_model(model, "logat", tokenizer=tok, layer=1)
    diff, g = _same(from_load.attribute(PROMPT, generated_texts=TEXT, show_progress=False), model, tok, PROMPT,
                    method="logat", layer=1)
    assert diff <= 1e-5 and g.layer == 1
    last = nx.explain_generation(model, tok, PROMPT, continuation=g.generated_ids, method="logat")
    assert np.nanmax(np.abs(last.scores - g.scores)) > 1e-3  # the layer really changes the read
    per_call = inseq.load_model(model, "logat", tokenizer=tok).attribute(PROMPT, generated_texts=TEXT, layer=1,
                                                                          show_progress=False)
    assert _same(per_call, model, tok, PROMPT, method="logat", layer=1)[0] <= 1e-5


def test_self_check_runs_inside_inseq(lm):
    model, tok = lm
    wrong = lambda h: model.get_output_embeddings()(h) * 2.0  # noqa: E731 - a head that is not the model's
    wrapped = inseq.load_model(model, "normxlogit", tokenizer=tok, head=wrong)
    with pytest.raises(nx.GenerationInvariantError, match="does not reproduce"):
        wrapped.attribute(PROMPT, generated_texts=TEXT, show_progress=False)


def test_show_and_save(lm, tmp_path):
    model, tok = lm
    out = inseq.load_model(model, "normxlogit", tokenizer=tok).attribute(PROMPT, generated_texts=TEXT,
                                                                          show_progress=False)
    html = out.show(display=False, return_html=True)
    ids, start, scores = nxi.inseq_scores(out)
    assert all(f">{t.token}</th>" in html for t in out.sequence_attributions[0].target[start:])  # generated columns
    assert f">{round(float(scores[0, 0]), 3)}<" in html  # the first source's score for the first token
    out.save(tmp_path / "attr.json")
    back = inseq.FeatureAttributionOutput.load(tmp_path / "attr.json")
    np.testing.assert_allclose(nxi.inseq_scores(back)[2].numpy(), nxi.inseq_scores(out)[2].numpy(), atol=1e-6)
    assert back.info["attribution_method"] == "normxlogit"


def test_encoder_decoder_is_refused(byte_tokenizer):
    tok = byte_tokenizer
    config = tf.T5Config(vocab_size=len(tok), d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8,
                         decoder_start_token_id=0, pad_token_id=0, eos_token_id=0)
    model = tf.T5ForConditionalGeneration(config).eval()
    wrapped = inseq.load_model(model, "normxlogit", tokenizer=tok)
    with pytest.raises(ValueError, match="decoder-only"):
        wrapped.attribute("a b", generation_args={"max_new_tokens": 2}, show_progress=False)


@pytest.mark.skipif(not SMOLLM.exists(), reason="needs ../shared/models/SmolLM2-135M-Instruct")
def test_smollm2_generation_through_inseq():
    """inseq generates (greedy), then attributes in one pass; the scores are explain_generation's."""
    model, tok = nx.load_model("HuggingFaceTB/SmolLM2-135M-Instruct", task="causal-lm")
    wrapped = inseq.load_model(model, "normxlogit", tokenizer=tok)
    prompt = "The capital of France is"
    out = wrapped.attribute(prompt, generation_args={"max_new_tokens": 6, "do_sample": False}, show_progress=False)
    diff, g = _same(out, model, tok, prompt)
    assert diff <= 1e-5 and "Paris" in g.generated_text and g.meta["invariant_gap"] < 1e-4
    # A batch: inseq pads on the left; each row's scores are still the package's (inseq reports, as for its own
    # methods, the columns from the longest prompt's end on, so compare those).
    prompts = [prompt, "Two plus two equals four, and three plus three"]
    batch = wrapped.attribute(prompts, generation_args={"max_new_tokens": 4, "do_sample": False}, show_progress=False)
    for i, text in enumerate(prompts):
        ids, _, scores = nxi.inseq_scores(batch, i)
        g = nx.explain_generation(model, tok, text, continuation=ids[len(tok(text)["input_ids"]):])
        rows = g.scores[len(g) - len(scores):]
        assert g.source_ids == ids and (np.isnan(rows) == np.isnan(scores.numpy())).all()
        # Left padding changes the batch's float32 rounding: equal to a few ulps of scores up to ~100.
        np.testing.assert_allclose(rows, scores.numpy(), rtol=1e-5, atol=1e-5, equal_nan=True)
