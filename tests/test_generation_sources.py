"""Sources and citations of explain_generation: sentences, strings and spans located by character offsets, the
source scores (sums over a source's tokens), cite(span), the views, the one forward pass and the cite command."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
import transformers as tf

import normxlogit as nx
from normxlogit.cli import main
from normxlogit.generation.sources import locate_sources, sentence_spans, source_spans
from normxlogit.generation.prompts import prompt_ids

torch.set_num_threads(1)

PROMPT = "The cat sat on the mat. It was warm! The dog barked at 3.5 birds.\nWhere is the cat?"
SENTENCES = ["The cat sat on the mat.", "It was warm!", "The dog barked at 3.5 birds.", "Where is the cat?"]
CHAT = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture
def lm(make_tiny):
    return make_tiny("llama", "causal-lm")


def test_sentence_splitter_needs_no_download():
    text = '  He said "stop." Then he left?! Pi is 3.14 here…  Next line\nlast one'
    got = [text[a:b] for a, b in sentence_spans(text)]
    assert got == ['He said "stop."', "Then he left?!", "Pi is 3.14 here…", "Next line", "last one"]
    assert [PROMPT[a:b] for a, b in sentence_spans(PROMPT)] == SENTENCES
    assert sentence_spans(PROMPT, 24, 36) == [(24, 36)]  # a region of the text
    assert sentence_spans("   ") == []


def test_sources_by_string_by_span_and_repeated():
    spans = source_spans(PROMPT, ["It was warm!", "Where is the cat?"])
    assert [PROMPT[a:b] for a, b in spans] == ["It was warm!", "Where is the cat?"]
    assert source_spans(PROMPT, [(0, 7), [8, 23]]) == [(0, 7), (8, 23)]
    text = "Yes. No. Yes."
    assert source_spans(text, ["Yes.", "No.", "Yes."]) == [(0, 4), (5, 8), (9, 13)]  # found in order


@pytest.mark.parametrize("sources,error,match", [
    (["The bird sang."], ValueError, "not in the prompt"),
    (["It was warm!", "warm"], ValueError, "overlap"),
    ([(0, 10), (5, 20)], ValueError, "overlap"),
    (["  "], ValueError, "empty"),
    ([(3, 3)], ValueError, "non-empty span"),
    ([(0, 1000)], ValueError, "non-empty span"),
    ([(23, 24)], ValueError, "white space only"),
    ([], ValueError, "sources is empty"),
    ("paragraphs", ValueError, "'sentences'"),
    (["The cat", (0, 3)], TypeError, "not a mix"),
])
def test_bad_sources_give_clear_errors(lm, sources, error, match):
    model, tok = lm
    with pytest.raises(error, match=match):
        nx.explain_generation(model, tok, PROMPT, max_new_tokens=2, sources=sources)


def test_slow_tokenizer_is_refused(lm, tokenizer, tmp_path):
    model, _ = lm
    tokenizer.save_pretrained(tmp_path)
    slow = tf.BertTokenizer.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="fast tokenizer"):
        nx.explain_generation(model, slow, PROMPT, max_new_tokens=2, sources="sentences")


def _check_positions(tok, text: str, base: int, r: nx.GenerationAttribution) -> None:
    """Every source's tokens lie in it and cover all its non-space characters; no other token touches it."""
    enc = tok(text, add_special_tokens=not r.meta["chat"], return_offsets_mapping=True)
    assert enc["input_ids"] == r.source_ids[: r.prompt_length]
    offsets = np.asarray(enc["offset_mapping"]) - base
    for (a, b), positions in zip(r.source_spans, r.source_positions):
        covered = set()
        for i, (s, e) in enumerate(offsets):
            inside = e > s and s < b and e > a
            assert inside == (i in positions)
            if inside:
                assert a <= s and e <= b
                covered |= set(range(s, e))
        assert covered >= {c for c in range(a, b) if not r.prompt[c].isspace()}


def test_sources_map_to_tokens_by_offsets(lm):
    model, tok = lm
    r = nx.explain_generation(model, tok, PROMPT, max_new_tokens=3, sources="sentences")
    assert r.sources == SENTENCES and [PROMPT[a:b] for a, b in r.source_spans] == SENTENCES
    _check_positions(tok, PROMPT, 0, r)
    by_string = nx.explain_generation(model, tok, PROMPT, continuation=r.generated_ids, sources=SENTENCES[1:3])
    by_span = nx.explain_generation(model, tok, PROMPT, continuation=r.generated_ids, sources=r.source_spans[1:3])
    assert by_string.source_positions == by_span.source_positions == r.source_positions[1:3]
    np.testing.assert_allclose(by_string.source_scores, r.source_scores[:, 1:3])


def test_sources_in_the_chat_template(lm):
    model, tokenizer = lm
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = CHAT
    r = nx.explain_generation(model, tok, PROMPT, max_new_tokens=2, chat=True, system_prompt="The cat is a pet.",
                              sources=["The cat sat on the mat.", "Where is the cat?"])
    text = tok.apply_chat_template([{"role": "system", "content": "The cat is a pet."},
                                    {"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=False)
    base = text.rfind(PROMPT)
    assert base > len("The cat is a pet.")  # the user's message, not the system prompt
    _check_positions(tok, text, base, r)
    assert tok.decode([r.source_ids[i] for i in r.source_positions[0]]) == "the cat sat on the mat."  # uncased


def test_source_scores_are_sums_over_the_source_tokens(lm):
    model, tok = lm
    for method in ("normxlogit", "gradient_norm"):
        r = nx.explain_generation(model, tok, PROMPT, max_new_tokens=4, method=method, sources="sentences")
        expected = np.stack([[r.scores[t, pos].sum() for pos in r.source_positions] for t in range(len(r))])
        np.testing.assert_allclose(r.source_scores, expected, rtol=1e-12)
        assert r.source_scores.shape == (len(r), len(SENTENCES)) and np.isfinite(r.source_scores).all()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_mean_aggregation_is_the_sum_over_each_source_token_count(make_tiny, family):
    model, tok = make_tiny(family, "causal-lm")
    total = nx.explain_generation(model, tok, PROMPT, max_new_tokens=4, sources="sentences")
    for method in ("normxlogit", "logat"):
        r = nx.explain_generation(model, tok, PROMPT, continuation=total.generated_ids, method=method,
                                  sources="sentences", source_aggregation="mean")
        summed = nx.explain_generation(model, tok, PROMPT, continuation=total.generated_ids, method=method,
                                       sources="sentences")
        assert r.source_aggregation == "mean" and summed.source_aggregation == "sum"
        expected = np.empty((len(r), len(r.sources)))
        for t in range(len(r)):  # a plain loop: each source's tokens, added one by one, over their count
            for j, positions in enumerate(r.source_positions):
                acc = 0.0
                for i in positions:
                    acc += r.scores[t, i]
                expected[t, j] = acc / len(positions)
        np.testing.assert_allclose(r.source_scores, expected, rtol=1e-10)
        counts = np.array([len(p) for p in summed.source_positions])
        np.testing.assert_allclose(r.source_scores, summed.source_scores / counts[None, :], rtol=1e-10)
        table = r.cite()  # cite ranks by the mean variant's scores (summed over the answer's tokens)
        np.testing.assert_allclose(table.sort_index()["score"], expected.sum(0), rtol=1e-10)
        assert list(table.index) == list(np.argsort(-expected.sum(0), kind="stable"))
        again = nx.GenerationAttribution.from_dict(json.loads(r.to_json()))
        assert again.source_aggregation == "mean"
        np.testing.assert_allclose(again.source_scores, r.source_scores)
        assert "averaged over the source" in r.to_html() and "summed over the source" in summed.to_html()
    with pytest.raises(ValueError, match="source_aggregation must be one of 'sum', 'mean'"):
        nx.explain_generation(model, tok, PROMPT, max_new_tokens=2, sources="sentences", source_aggregation="max")


def test_cite_whole_answer_and_spans(lm):
    model, tok = lm
    r = nx.explain_generation(model, tok, PROMPT, max_new_tokens=5, sources="sentences")
    table = r.cite()
    assert list(table.columns[:2]) == ["source", "score"] and len(table) == len(SENTENCES)
    total = r.source_scores.sum(0)
    assert list(table.index) == list(np.argsort(-total, kind="stable"))
    np.testing.assert_allclose(table["score"], total[table.index])
    assert list(table["source"]) == [SENTENCES[j] for j in table.index]
    # The answer's characters: decoding the tokens up to t ends where token t ends.
    text = r.generated_text
    assert r.answer_offsets[-1][1] == len(text) and r.answer_offsets[0][0] == 0
    for t, (a, b) in enumerate(r.answer_offsets):
        assert b == len(tok.decode(r.generated_ids[: t + 1], clean_up_tokenization_spaces=False))
    a, b = r.answer_offsets[1][0], r.answer_offsets[2][1]
    part = r.cite((a, b))
    np.testing.assert_allclose(part.sort_index()["score"], r.source_scores[1:3].sum(0))
    inner = r.cite((r.answer_offsets[1][0], r.answer_offsets[1][0] + 1))  # one character: token 1 alone
    np.testing.assert_allclose(inner.sort_index()["score"], r.source_scores[1])
    for bad in [(0, 0), (-1, 2), (0, len(text) + 1)]:
        with pytest.raises(ValueError, match="span"):
            r.cite(bad)
    plain = nx.explain_generation(model, tok, PROMPT, max_new_tokens=2)
    with pytest.raises(ValueError, match="no sources"):
        plain.cite()


def test_views_and_json(lm, tmp_path):
    model, tok = lm
    r = nx.explain_generation(model, tok, PROMPT, max_new_tokens=4, sources="sentences")
    long = r.to_dataframe(sources=True)
    assert len(long) == len(r) * len(SENTENCES) and set(long.columns) >= {"step", "source_index", "source", "score"}
    np.testing.assert_allclose(long["score"].to_numpy().reshape(len(r), -1), r.source_scores)
    wide = r.to_dataframe(sources=True, wide=True)
    assert wide.shape == r.source_scores.shape
    tokens = r.to_dataframe()
    owner = tokens.drop_duplicates("source_position").set_index("source_position")["source_index"]
    for j, positions in enumerate(r.source_positions):
        assert (owner[positions] == j).all()
    assert (owner.drop(index=[p for ps in r.source_positions for p in ps]) == -1).all()
    page = r.to_html()
    assert "Citations" in page and page.count('class="nxc-r"') == 1 + len(re.findall(r'<label for="nxc\w+-a\d+"', page))
    assert not re.search(r"<h[1-3][ >]", page)  # the book's headings outrank these
    assert "overflow-x:auto" in page and "overflow-wrap:anywhere" in page and "<script" not in page
    assert all(f"{s[:10]}" in page for s in SENTENCES)
    path = tmp_path / "r.json"
    r.save(path)
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    back = nx.GenerationAttribution.load(path)
    assert back.sources == r.sources and back.source_positions == r.source_positions
    np.testing.assert_array_equal(back.source_scores, r.source_scores)
    pd.testing.assert_frame_equal(back.cite(), r.cite())


def test_one_forward_pass(lm):
    model, tok = lm
    calls = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        r = nx.explain_generation(model, tok, PROMPT, continuation="it is on the mat", method="normxlogit",
                                  sources="sentences")
    finally:
        handle.remove()
    assert len(calls) == 1 and r.source_scores.shape == (len(r), 4)


def test_cite_command(tmp_path, tokenizer, capsys):
    torch.manual_seed(0)
    folder = tmp_path / "tiny-llm"
    from conftest import tiny_config

    tf.AutoModelForCausalLM.from_config(tiny_config("llama", len(tokenizer))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    context = tmp_path / "context.txt"
    context.write_text("The cat sat on the mat. It was warm! The dog barked.\n", encoding="utf-8")
    args = ["cite", "--context", str(context), "--question", "Where is the cat?", "--model", str(folder),
            "--max-new-tokens", "3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "answer:" in out and all(s in out for s in ["The cat sat on the mat.", "It was warm!", "The dog barked."])
    assert "Where is the cat?" not in out.split("sources ranked", 1)[1]  # the question is not a source
    page = tmp_path / "cite.html"
    assert main(args + ["--format", "html", "-o", str(page)]) == 0
    assert "Citations" in page.read_text() and "<!DOCTYPE html>" in page.read_text()
    capsys.readouterr()
    assert main(args + ["--source-aggregation", "mean", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["source_aggregation"] == "mean"
    assert main(["cite", "--context", str(tmp_path / "missing.txt"), "--question", "q", "--model", str(folder)]) == 2
    assert "cannot read --context" in capsys.readouterr().err


def test_locate_rejects_other_tokens(lm):
    _, tok = lm
    ids = prompt_ids(tok, PROMPT)
    with pytest.raises(ValueError, match="other tokens"):
        locate_sources(tok, PROMPT, "sentences", ids[:-1])
