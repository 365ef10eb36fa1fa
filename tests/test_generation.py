"""explain_generation on tiny random decoders, the local-model loader (GGUF included), and the CLI command."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf
from captum.attr import IntegratedGradients

import normxlogit as nx
from normxlogit.generation.explain import INVARIANT_TOLERANCE
from normxlogit.generation.reading import gathered_logits
from normxlogit import local_models
from normxlogit.cli import main
from conftest import tiny_config
from gguf_fixture import CHAT_TEMPLATE, write_tiny_gguf

torch.set_num_threads(1)

PROMPT = "the cat sat on the mat because"
CONTINUATION = "it was warm and dry"


@pytest.fixture(params=["llama", "gpt2"])
def lm(request, make_tiny):
    return make_tiny(request.param, "causal-lm")


def _final_norm_and_head(model):
    if model.config.model_type == "gpt2":
        return model.transformer.ln_f, model.lm_head
    return model.model.norm, model.lm_head


def _valid(r: nx.GenerationAttribution) -> np.ndarray:
    return np.arange(len(r.source_tokens))[None, :] < (r.prompt_length + np.arange(len(r)))[:, None]


# --- the invariant and the reference loop --------------------------------------------------------------------------
def test_invariant_at_every_generated_step(lm):
    model, tok = lm
    r = nx.explain_generation(model, tok, PROMPT, max_new_tokens=6, method="logat")
    assert len(r) == 6 and r.meta["invariant_gap"] < 1e-4 and r.layer == model.config.num_hidden_layers
    with torch.no_grad():
        logits = model(torch.tensor([r.source_ids])).logits[0]
    P = r.prompt_length
    for t, y in enumerate(r.generated_ids):
        own = logits[P + t - 1]
        assert int(own.argmax()) == y  # greedy
        assert r.scores[t, P + t - 1] == pytest.approx(float(own[y]), rel=1e-4, abs=1e-5)
        assert r.target_logits[t] == pytest.approx(float(own[y]), rel=1e-5, abs=1e-6)
        assert r.target_probs[t] == pytest.approx(float(own.softmax(-1)[y]), rel=1e-4)


@pytest.mark.parametrize("layer", [-1, 1, 0])
def test_equals_per_step_reference_loop(lm, layer):
    """For each generated token, a separate forward over its prefix and the full head read on every position."""
    model, tok = lm
    head = nx.resolve_head(model, "causal-lm")
    results = {m: nx.explain_generation(model, tok, PROMPT, continuation=CONTINUATION, method=m, layer=layer)
               for m in ("logat", "normxlogit")}
    r = results["logat"]
    P, L = r.prompt_length, model.config.num_hidden_layers
    index = layer % (L + 1)
    ids = torch.tensor([r.source_ids])
    for t, y in enumerate(r.generated_ids):
        with torch.no_grad():
            out = model(ids[:, : P + t], output_hidden_states=True)
            expected = head(out.hidden_states[index][0], intermediate=index < L)[:, y]
            norms = out.hidden_states[0][0].norm(dim=-1)
        np.testing.assert_allclose(r.scores[t, : P + t], expected.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(results["normxlogit"].scores[t, : P + t], (norms * expected).numpy(),
                                   rtol=1e-4, atol=1e-5)
        assert np.isnan(r.scores[t, P + t:]).all()


def test_gathered_rows_equal_full_vocabulary(lm):
    model, tok = lm
    head = nx.resolve_head(model, "causal-lm")
    torch.manual_seed(1)
    states = torch.randn(2, 7, model.config.hidden_size)
    ids = torch.tensor([5, 17, 5, 1000])
    with torch.no_grad():
        full = head(states, intermediate=True)[..., ids]
        lean = gathered_logits(head, states, ids, intermediate=True)
    assert lean.shape == (2, 7, 4)
    torch.testing.assert_close(lean, full, rtol=1e-5, atol=1e-6)
    # The output embedding is back to normal afterwards.
    assert head(states[0]).shape[-1] == model.config.vocab_size


def test_no_full_vocabulary_logits_at_every_position(lm):
    model, tok = lm
    shapes = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, a, out: shapes.append(tuple(out.shape)))
    try:
        r = nx.explain_generation(model, tok, PROMPT, continuation=CONTINUATION, method="normxlogit")
    finally:
        hook.remove()
    G, T, V = len(r), len(r.source_tokens), model.config.vocab_size
    full_rows = [int(np.prod(s[:-1])) for s in shapes if s[-1] == V]
    assert full_rows and max(full_rows) <= G + 1  # only the model's own logits at the continuation positions
    assert (T, G) in shapes  # the one (T, H) x (H, G) product


def test_layerwise_read_equals_manual_logit_lens(lm):
    model, tok = lm
    norm, lm_head = _final_norm_and_head(model)
    L = model.config.num_hidden_layers
    ids = None
    for layer in range(L + 1):
        r = nx.explain_generation(model, tok, PROMPT, continuation=CONTINUATION, method="logat", layer=layer)
        if ids is None:
            ids = torch.tensor([r.source_ids])
            with torch.no_grad():
                hidden = model(ids, output_hidden_states=True).hidden_states
        with torch.no_grad():
            h = hidden[layer][0]
            manual = lm_head(norm(h) if layer < L else h)[:, r.generated_ids].T.numpy()
        valid = _valid(r)
        np.testing.assert_allclose(r.scores[valid], manual[valid], rtol=1e-4, atol=1e-5)
        assert r.layer == layer


def test_norm_sources(lm):
    model, tok = lm
    a = nx.explain_generation(model, tok, PROMPT, continuation=CONTINUATION, method="normxlogit")
    b = nx.explain_generation(model, tok, PROMPT, continuation=CONTINUATION, method="normxlogit",
                              norm_source="word_embedding")
    logat = nx.explain_generation(model, tok, PROMPT, continuation=CONTINUATION, method="logat")
    ids = torch.tensor([a.source_ids])
    with torch.no_grad():
        word = model.get_input_embeddings()(ids)[0].norm(dim=-1).numpy()
    valid = _valid(a)
    np.testing.assert_allclose(b.scores[valid], (word[None, :] * logat.scores)[valid], rtol=1e-5)
    assert a.meta["norm_source"] == "embedding_output" and b.meta["norm_source"] == "word_embedding"
    # GPT-2 adds position embeddings to hidden_states[0]; Llama's embedding output is the word embedding.
    same = np.allclose(a.scores[valid], b.scores[valid])
    assert same == (model.config.model_type == "llama")


# --- baselines -----------------------------------------------------------------------------------------------------
def _logit_fn(model, position: int, token: int):
    return lambda emb: model(inputs_embeds=emb).logits[:, position, token]


def test_gradient_baselines_equal_per_token_backward(lm):
    model, tok = lm
    sal = nx.explain_generation(model, tok, PROMPT, continuation=CONTINUATION, method="gradient_norm",
                                batch_tokens=20)  # chunks of generated tokens
    gxi = nx.explain_generation(model, tok, PROMPT, continuation=CONTINUATION, method="grad_x_input")
    ids = torch.tensor([sal.source_ids])
    P = sal.prompt_length
    for t, y in enumerate(sal.generated_ids):
        emb = model.get_input_embeddings()(ids).detach().requires_grad_()
        (grad,) = torch.autograd.grad(_logit_fn(model, P + t - 1, y)(emb).sum(), emb)
        np.testing.assert_allclose(sal.scores[t, : P + t], grad[0, : P + t].abs().sum(-1).numpy(), rtol=1e-4,
                                   atol=1e-6)
        np.testing.assert_allclose(gxi.scores[t, : P + t], (grad * emb)[0, : P + t].abs().sum(-1).detach().numpy(),
                                   rtol=1e-4, atol=1e-6)
    assert np.isnan(sal.scores[~_valid(sal)]).all() and (sal.scores[_valid(sal)] >= 0).all()


def test_integrated_gradients_equal_captum_per_token(make_tiny):
    model, tok = make_tiny("llama", "causal-lm")
    r = nx.explain_generation(model, tok, "the cat sat", continuation="on it", method="integrated_gradients",
                              n_steps=8, batch_tokens=30)  # forces several passes
    assert r.meta["n_steps"] == 8
    ids = torch.tensor([r.source_ids])
    P = r.prompt_length
    emb = model.get_input_embeddings()(ids).detach()
    for t, y in enumerate(r.generated_ids):
        ig = IntegratedGradients(_logit_fn(model, P + t - 1, y)).attribute(emb.clone(), baselines=0.0, n_steps=8,
                                                                         method="gausslegendre")
        np.testing.assert_allclose(r.scores[t, : P + t], ig[0, : P + t].abs().sum(-1).detach().numpy(), rtol=1e-3,
                                   atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_integrated_gradients_in_bounded_chunks_equal_one_pass(make_tiny, family):
    """internal_batch_size bounds the sequences per forward/backward pass (the memory), not the scores."""
    model, tok = make_tiny(family, "causal-lm")
    prompt, answer, n_steps = "the cat sat on the mat and", " it was warm there", 6
    whole = nx.explain_generation(model, tok, prompt, continuation=answer, method="integrated_gradients",
                                  n_steps=n_steps, internal_batch_size=None)
    G, T = len(whole), len(whole.source_ids)
    sizes: list[int] = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, args, out: sizes.append(out.shape[0]))
    try:
        for chunk, tokens in ((1, None), (4, None), ("auto", 3 * T), ("auto", None)):
            sizes.clear()
            r = nx.explain_generation(model, tok, prompt, continuation=answer, method="integrated_gradients",
                                      n_steps=n_steps, internal_batch_size=chunk, batch_tokens=tokens)
            np.testing.assert_allclose(r.scores[_valid(r)], whole.scores[_valid(whole)], rtol=1e-5, atol=1e-7)
            limit = chunk if isinstance(chunk, int) else (tokens or nx.generation.baselines.GRAD_TOKEN_BUDGET) // T
            gradient_passes = sizes[2:]  # after explain_generation's forward pass and the embedding lookup
            assert sum(gradient_passes) == G * n_steps and max(gradient_passes) <= max(1, limit)
            if chunk == 1:
                assert len(gradient_passes) == G * n_steps
    finally:
        hook.remove()
    with pytest.raises(ValueError, match="internal_batch_size must be"):
        nx.explain_generation(model, tok, prompt, continuation=answer, method="integrated_gradients",
                              internal_batch_size=0)


@pytest.mark.parametrize("replacement", [None, "delete", 7])
def test_leave_one_out_equals_single_variants(lm, replacement):
    model, tok = lm
    r = nx.explain_generation(model, tok, "the cat sat", continuation="on it", method="leave_one_out",
                              replacement=replacement, batch_tokens=16)
    rep = nx.replacement_token_id(tok) if replacement is None else replacement
    assert r.meta["replacement"] == rep
    ids = r.source_ids
    P = r.prompt_length

    def prob(seq, position, token):
        with torch.no_grad():
            return float(model(torch.tensor([seq])).logits[0, position].softmax(-1)[token])

    for t, y in enumerate(r.generated_ids):
        p = P + t
        for i in range(p):
            if rep == "delete":
                variant, position = ids[:i] + ids[i + 1: p], p - 2
            else:
                variant, position = ids[:i] + [rep] + ids[i + 1: p], p - 1
            expected = r.target_probs[t] - prob(variant, position, y)
            assert r.scores[t, i] == pytest.approx(expected, abs=1e-5)
        assert np.isnan(r.scores[t, p:]).all()


def test_every_method_gives_the_same_result_type(lm):
    model, tok = lm
    for method in nx.list_generation_methods():
        r = nx.explain_generation(model, tok, "the cat", max_new_tokens=2, method=method)
        assert isinstance(r, nx.GenerationAttribution) and r.method == method
        assert r.scores.shape == (len(r), len(r.source_tokens)) and r.scores.dtype == np.float64
        assert np.isfinite(r.scores[_valid(r)]).all() and np.isnan(r.scores[~_valid(r)]).all()


# --- generation must not touch the caller's objects ------------------------------------------------------------------
def test_generate_changes_no_configuration(tokenizer):
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(tiny_config("llama", len(tokenizer))).eval()
    # Sampling settings in the model's own generation config must not leak into the greedy generation.
    model.generation_config.do_sample = True
    model.generation_config.temperature = 0.7
    model.generation_config.repetition_penalty = 5.0
    model.train()
    tok = copy.deepcopy(tokenizer)
    tok.padding_side = "left"
    before = (model.config.to_dict(), model.generation_config.to_dict(), tok.padding_side, tok.pad_token,
              tok.special_tokens_map, tok.init_kwargs.copy())
    r = nx.explain_generation(model, tok, PROMPT, max_new_tokens=5)
    after = (model.config.to_dict(), model.generation_config.to_dict(), tok.padding_side, tok.pad_token,
             tok.special_tokens_map, tok.init_kwargs)
    assert before == after and model.training
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([r.source_ids])).logits[0]
    P = r.prompt_length
    assert [int(logits[P + t - 1].argmax()) for t in range(len(r))] == r.generated_ids


def test_chat_template(make_tiny):
    model, tokenizer = make_tiny("llama", "causal-lm")
    tok = copy.deepcopy(tokenizer)
    with pytest.raises(ValueError, match="no chat template"):
        nx.explain_generation(model, tok, "hello", chat=True)
    tok.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} {% endfor %}" \
                        "{% if add_generation_prompt %}[assistant]{% endif %}"
    r = nx.explain_generation(model, tok, "hello there", chat=True, max_new_tokens=2)
    text = tok.apply_chat_template([{"role": "user", "content": "hello there"}], add_generation_prompt=True,
                                   tokenize=False)
    assert r.source_ids[: r.prompt_length] == tok(text, add_special_tokens=False)["input_ids"]
    assert r.meta["chat"] is True


def test_bfloat16(make_tiny):
    model, tok = make_tiny("llama", "causal-lm")
    half = copy.deepcopy(model).to(torch.bfloat16)
    r = nx.explain_generation(half, tok, PROMPT, continuation=CONTINUATION, method="normxlogit")
    assert r.meta["dtype"] == "bfloat16" and r.meta["invariant_gap"] < INVARIANT_TOLERANCE[torch.bfloat16]
    assert np.isfinite(r.scores[_valid(r)]).all()
    for method in ("gradient_norm", "leave_one_out"):
        assert np.isfinite(nx.explain_generation(half, tok, "the cat", continuation="sat", method=method)
                           .scores[0, :2]).all()


def test_wrong_head_fails_the_run_time_check(make_tiny):
    model, tok = make_tiny("llama", "causal-lm")
    with pytest.raises(nx.GenerationInvariantError, match=r"LlamaForCausalLM.*'llama'.*model's own logit is"):
        nx.explain_generation(model, tok, PROMPT, max_new_tokens=2, head=lambda h: 2 * model.lm_head(h))


# --- bad input -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,error,match", [
    ({"prompt": ""}, ValueError, "empty"),
    ({"prompt": "   "}, ValueError, "empty"),
    ({"prompt": 3}, TypeError, "string"),
    ({"max_new_tokens": 0}, ValueError, "max_new_tokens"),
    ({"max_new_tokens": -2}, ValueError, "max_new_tokens"),
    ({"max_new_tokens": 500}, ValueError, "positions"),
    ({"method": "nope"}, ValueError, "Unknown method"),
    ({"n_steps": 3}, TypeError, "takes no option 'n_steps'"),
    ({"layer": 7}, ValueError, "out of range"),
    ({"norm_source": "layer"}, ValueError, "norm_source"),
    ({"continuation": ""}, ValueError, "continuation"),
    ({"continuation": [10**7]}, ValueError, "out of range"),
    ({"method": "integrated_gradients", "n_steps": 0}, ValueError, "n_steps"),
    ({"method": "leave_one_out", "replacement": "mask"}, ValueError, "replacement"),
])
def test_bad_input_gives_clear_errors(make_tiny, kwargs, error, match):
    model, tok = make_tiny("llama", "causal-lm")
    args = {"prompt": PROMPT, "max_new_tokens": 2} | kwargs
    with pytest.raises(error, match=match):
        nx.explain_generation(model, tok, args.pop("prompt"), **args)


@pytest.mark.parametrize("family,task", [("bert", "classification"), ("bert", "masked-lm"),
                                         ("gpt2", "classification")])
def test_non_causal_models_are_refused(make_tiny, family, task):
    model, tok = make_tiny(family, task)
    with pytest.raises(ValueError, match="needs a decoder-only causal LM"):
        nx.explain_generation(model, tok, PROMPT)


# --- the result object ---------------------------------------------------------------------------------------------
def test_result_views_and_strict_json(make_tiny, tmp_path):
    model, tok = make_tiny("gpt2", "causal-lm")
    r = nx.explain_generation(model, tok, PROMPT, max_new_tokens=4)
    path = tmp_path / "r.json"
    r.save(path)
    text = path.read_text()
    assert "NaN" not in text and "null" in text
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    back = nx.GenerationAttribution.load(path)
    np.testing.assert_array_equal(back.scores, r.scores)  # NaN where NaN
    assert back.source_tokens == r.source_tokens and back.meta == r.meta and back.generated_ids == r.generated_ids
    df = r.to_dataframe()
    assert len(df) == int(np.isfinite(r.scores).sum()) and set(df["step"]) == set(range(len(r)))
    assert (df["source_position"] < df["generated_position"]).all()
    assert r.to_dataframe(wide=True).shape == r.scores.shape
    page = r.to_html(step=1)
    assert page.count("<details") == len(r) and page.count("<details open") == 1
    assert "overflow-wrap:anywhere" in page and "overflow-x:auto" in page and r._repr_html_() == r.to_html()
    # Labels, not headings (they would outrank the page's sections); the scrolling matrix shows edge shadows.
    assert "<h" not in page.replace("<hr", "") and "<strong>All steps</strong>" in page
    assert "radial-gradient" in page and "no-repeat local" in page
    with pytest.raises(IndexError):
        r.to_html(step=len(r))
    unsigned = nx.explain_generation(model, tok, PROMPT, continuation=r.generated_ids, method="gradient_norm")
    assert not unsigned.signed and r.signed
    assert "rgba(117, 107, 177" in unsigned.to_html() and "rgba(31, 119, 180" not in unsigned.to_html()
    shown = str(r)
    assert PROMPT in shown and "top sources" in shown and len(shown.splitlines()) == 4 + len(r)
    assert r.top(0, 2)[0][2] == np.nanmax(np.where(np.asarray(r.special_tokens_mask, bool), np.nan, r.scores[0]))


# --- loading local models ------------------------------------------------------------------------------------------
@pytest.fixture
def places(tmp_path, monkeypatch):
    """An isolated cache, no $NORMXLOGIT_MODELS, and a fake project root whose ../shared/models is empty."""
    monkeypatch.setenv("NORMXLOGIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(local_models.MODELS_ENV, raising=False)
    root = tmp_path / "work" / "project"
    (tmp_path / "work" / "shared" / "models").mkdir(parents=True)
    root.mkdir()
    monkeypatch.setattr(nx.settings, "project_root", lambda: root)
    return tmp_path


def _save_tiny(folder: Path, tokenizer, seed: int) -> Path:
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(tiny_config("llama", len(tokenizer)))
    folder.mkdir(parents=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _same_weights(model, folder: Path) -> bool:
    ref = tf.AutoModelForCausalLM.from_pretrained(folder)
    return torch.equal(model.lm_head.weight, ref.lm_head.weight)


def test_loader_search_order(places, tokenizer, monkeypatch):
    shared = _save_tiny(places / "work" / "shared" / "models" / "tiny-llm", tokenizer, seed=1)
    # ../shared/models, by short name and by hub id
    for name in ("tiny-llm", "someorg/tiny-llm"):
        model, _ = nx.load_model(name, task="causal-lm")
        assert _same_weights(model, shared)
    # $NORMXLOGIT_MODELS comes before ../shared/models
    env = _save_tiny(places / "mine" / "tiny-llm", tokenizer, seed=2)
    monkeypatch.setenv(local_models.MODELS_ENV, str(places / "mine"))
    assert _same_weights(nx.load_model("someorg/tiny-llm", task="causal-lm")[0], env)
    # an explicit path comes first
    explicit = _save_tiny(places / "explicit" / "tiny-llm", tokenizer, seed=3)
    assert _same_weights(nx.load_model(str(explicit), task="causal-lm")[0], explicit)
    assert local_models.find_local_model("tiny-llm") == env


def test_loader_offline_error_names_the_places(places):
    with pytest.raises(nx.ModelLoadError, match=r"No local copy was found.*NORMXLOGIT_MODELS \(not set\).*shared"):
        nx.load_model("nobody/no-such-model-xyz", task="causal-lm")
    empty = places / "work" / "shared" / "models" / "empty-model"
    empty.mkdir()
    with pytest.raises(nx.ModelLoadError, match="neither a config.json"):
        nx.load_model("empty-model", task="causal-lm")


def test_loader_dtype_and_device_map(places, tokenizer):
    folder = _save_tiny(places / "tiny-llm", tokenizer, seed=1)
    model, tok = nx.load_model(folder, task="causal-lm", dtype="bf16", device_map="auto")
    assert model.dtype == torch.bfloat16
    r = nx.explain_generation(model, tok, "the cat", max_new_tokens=2, method="grad_x_input")
    assert np.isfinite(r.scores[0, : r.prompt_length]).all()
    with pytest.raises(ValueError, match="either device= or device_map="):
        nx.load_model(folder, task="causal-lm", device="cpu", device_map="auto")
    with pytest.raises(ValueError, match="Unknown dtype"):
        nx.load_model(folder, task="causal-lm", dtype="int3")


def test_gguf_is_converted_once_and_cached(places, monkeypatch):
    folder = places / "work" / "shared" / "models" / "Tiny-GGUF"
    folder.mkdir()
    reference = write_tiny_gguf(folder / "tiny.Q8.gguf")
    model, tok = nx.load_model("SomeOrg/Tiny-GGUF", task="causal-lm")
    ids = torch.tensor([tok(" the cat sat")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits)
    # The file's own special tokens, not transformers' swapped BOS/EOS, and no BOS added.
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (
        "<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>")
    assert ids[0, 0] != tok.bos_token_id and tok.chat_template == CHAT_TEMPLATE
    cached = local_models.gguf_cache_path(folder / "tiny.Q8.gguf")
    assert Path(model.name_or_path) == cached and (cached / local_models.CONVERSION_FILE).exists()
    assert not [p for p in cached.parent.iterdir() if p.name.endswith(".tmp")]  # no half-written copy left
    # Later loads reuse the copy (by name, by folder, by file) without converting again.
    monkeypatch.setattr(local_models, "_convert", lambda *a: pytest.fail("converted twice"))
    for name in ("Tiny-GGUF", str(folder), str(folder / "tiny.Q8.gguf")):
        again, _ = nx.load_model(name, task="causal-lm")
        assert Path(again.name_or_path) == cached
    r = nx.explain_generation(again, tok, "the cat", chat=True, max_new_tokens=3)
    assert r.meta["invariant_gap"] < 1e-4


SMOLLM = nx.settings.project_root().parent / "shared" / "models" / "SmolLM2-135M-Instruct"


@pytest.mark.skipif(not SMOLLM.exists(), reason="needs ../shared/models/SmolLM2-135M-Instruct")
def test_smollm2_answers_and_keeps_the_invariant():
    """The real model (converted from GGUF on the first run, about 30-80 s; cached afterwards)."""
    model, tok = nx.load_model("HuggingFaceTB/SmolLM2-135M-Instruct", task="causal-lm")
    r = nx.explain_generation(model, tok, "What is the capital of France?", chat=True, max_new_tokens=8)
    assert "Paris" in r.generated_text and r.meta["invariant_gap"] < 1e-4
    lens = nx.explain_generation(model, tok, "What is the capital of France?", chat=True,
                                 continuation=r.generated_ids, layer=15)
    assert lens.layer == 15 and np.isfinite(lens.scores[_valid(lens)]).all()


# --- command line --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory, make_tiny):
    model, tok = make_tiny("llama", "causal-lm")
    path = tmp_path_factory.mktemp("tiny-llm")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_cli_formats(llm_dir, capsys, tmp_path):
    assert main(["explain-generation", "the cat sat", "--model", llm_dir, "--max-new-tokens", "3",
                 "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["method"] == "normxlogit" and len(data["scores"]) == 3
    assert main(["explain-generation", "the cat sat", "--model", llm_dir, "--continuation", "on it",
                 "--method", "logat", "--layer", "1"]) == 0
    assert "top sources" in capsys.readouterr().out
    page = tmp_path / "out.html"
    assert main(["explain-generation", "the cat sat", "--model", llm_dir, "--max-new-tokens", "2", "--format", "html",
                 "-o", str(page)]) == 0
    assert page.read_text().startswith("<!DOCTYPE html>") and "<details open" in page.read_text()


@pytest.mark.parametrize("extra,match", [
    (["-o", "/no/such/folder/out.html"], "does not exist"),
    (["-o", "."], "is a directory"),
    (["--chat"], "no chat template"),
    (["--max-new-tokens", "0"], "max_new_tokens"),
    (["--format", "html", "--step", "9"], "out of range"),
])
def test_cli_errors_are_one_clear_line(llm_dir, capsys, extra, match):
    assert main(["explain-generation", "the cat", "--model", llm_dir, "--max-new-tokens", "2"] + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("normxlogit: error:") and match in err and "Traceback" not in err
