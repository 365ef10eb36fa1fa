"""Corpus-scale runs: Parquet shards and manifest, resuming, refusals, bad input, and two processes under torchrun.

Tiny random models are saved to disk so that subprocesses load exactly the same weights with ``--model PATH``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

import normxlogit as nx
from normxlogit import corpus
from normxlogit.cli import main
from normxlogit.corpus import explain as corpus_explain  # the module explain_dataset writes shards from

torch.set_num_threads(1)
ROOT = Path(nx.__file__).resolve().parent.parent

_WORDS = "the film was a gripping funny dull moving story of love and loss , with great acting but slow pacing".split()


def sentences(n: int) -> list[str]:
    """``n`` different sentences of 3..14 words (lengths vary, so batches get padding)."""
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(_WORDS, size=3 + (i * 7) % 12)) + f" {i}" for i in range(n)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, make_tiny):
    model, tok = make_tiny("bert", "classification")
    path = tmp_path_factory.mktemp("tiny-bert")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny(model_dir):
    """The saved tiny model loaded back, as the subprocesses load it."""
    return nx.load_model(str(model_dir), num_labels=3)


@pytest.fixture(scope="module")
def data():
    return datasets.Dataset.from_dict({"text": sentences(22), "label": [i % 3 for i in range(22)]})


def shards(out: Path) -> list[Path]:
    return sorted((out / "data").glob("train-*.parquet"))


def table(out: Path):
    return pq.read_table(shards(out))


def run(model, tok, data, out, **kwargs):
    kwargs = {"shard_size": 4, "batch_size": 3, "progress": False, **kwargs}
    return nx.explain_dataset(model, tok, data, output_dir=out, **kwargs)


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


# --- output, read back ---------------------------------------------------------------------------------------------
def test_output_loads_back_and_matches_explain(tiny, data, tmp_path):
    model, tok = tiny
    manifest = run(model, tok, data, tmp_path / "out")
    assert manifest["status"] == "complete" and manifest["rows"] == 22 and manifest["shards"] == 6
    assert manifest["config"]["method"] == "normxlogit" and manifest["package_version"] == nx.__version__
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == manifest

    loaded = datasets.load_dataset("parquet", data_dir=str(tmp_path / "out"), split="train")
    assert loaded["index"] == list(range(22))
    attrs = nx.to_attributions(loaded)
    reference = nx.explain(model, tok, data["text"], batch_size=3)
    for got, ref in zip(attrs, reference):
        assert got.tokens == ref.tokens and got.input_ids == ref.input_ids and got.text == ref.text
        assert got.prediction == ref.prediction and got.target == ref.target and got.method == "normxlogit"
        assert got.special_tokens_mask == ref.special_tokens_mask and got.position == ref.position
        np.testing.assert_allclose(got.scores, ref.scores, rtol=1e-5, atol=1e-6)
    assert nx.load_dataset_attributions(tmp_path / "out", indices=[5, 1])[0].text == data["text"][5]
    assert len(nx.to_attributions(loaded[3:6])) == 3 and len(nx.to_attributions(loaded.to_pandas())) == 22


def test_random_scores_equal_explain_on_the_whole_list_whatever_the_shard_size(tiny, data, tmp_path):
    """Seeded methods draw per (seed, index in the whole dataset): shards of any size give nx.explain's scores."""
    model, tok = tiny
    reference = nx.explain(model, tok, data["text"], method="random", seed=7, batch_size=5)
    for shard_size in (4, 7):
        run(model, tok, data, tmp_path / f"out{shard_size}", method="random", seed=7, shard_size=shard_size)
        got = nx.load_dataset_attributions(tmp_path / f"out{shard_size}")
        assert [a.input_ids for a in got] == [a.input_ids for a in reference]
        for a, ref in zip(got, reference):
            np.testing.assert_array_equal(a.scores, np.asarray(ref.scores, dtype=np.float32))


def test_file_types_and_pairs(tmp_path):
    frame = pd.DataFrame({"a": ['he said "hi" .', "fine .", "ok then ."], "b": ["x .", "y .", "z ."]})
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_csv(tmp_path / "d.tsv", sep="\t", index=False, quoting=3)  # GLUE style: quotes are text
    frame.to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    frame.to_parquet(tmp_path / "d.parquet")
    for name in ("d.csv", "d.tsv", "d.jsonl", "d.parquet"):
        assert corpus.load_data(tmp_path / name)["a"] == list(frame["a"]), name


def test_sentence_pairs_round_trip(make_tiny, tmp_path):
    model, tok = make_tiny("bert", "regression")
    ds = datasets.Dataset.from_dict({"s1": ["a man plays .", "it rains ."], "s2": ["a man sings .", "sun ."]})
    run(model, tok, ds, tmp_path / "out", text_column="s1", pair_column="s2")
    attrs = nx.load_dataset_attributions(tmp_path / "out")
    assert attrs[1].text == ("it rains .", "sun .") and isinstance(attrs[1].prediction, float)
    assert attrs[0].target is None and attrs[0].tokens.count("[SEP]") == 2


def test_target_column_and_progress_bar(tiny, data, tmp_path, capsys):
    model, tok = tiny
    run(model, tok, data, tmp_path / "out", target_column="label", progress=True)
    assert [a.target for a in nx.load_dataset_attributions(tmp_path / "out")] == data["label"]
    assert "22/22" in capsys.readouterr().err
    with pytest.raises(corpus.CorpusError, match="must hold class indices"):
        run(model, tok, datasets.Dataset.from_dict({"text": ["fine ."], "label": ["1"]}), tmp_path / "o2",
            target_column="label")


# --- resuming ------------------------------------------------------------------------------------------------------
def test_resume_after_a_crash_gives_the_uninterrupted_output(tiny, data, tmp_path, monkeypatch):
    model, tok = tiny
    run(model, tok, data, tmp_path / "full")
    write = corpus_explain.write_shard
    calls = []

    def crash_after_two(path, table):
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a Ctrl-C would, between two shards
        calls.append(path)
        write(path, table)

    monkeypatch.setattr(corpus_explain, "write_shard", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        run(model, tok, data, tmp_path / "out")
    assert len(shards(tmp_path / "out")) == 2
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["status"] == "running"
    with pytest.raises(corpus.CorpusError, match="unfinished"):
        nx.load_corpus(tmp_path / "out")
    monkeypatch.setattr(corpus_explain, "write_shard", write)
    manifest = run(model, tok, data, tmp_path / "out")
    assert manifest["runs"][-1]["shards_written"] == 4 and manifest["rows"] == 22
    assert table(tmp_path / "out").equals(table(tmp_path / "full"))


def test_truncated_shard_and_stale_temporary_file_are_redone(tiny, data, tmp_path):
    model, tok = tiny
    out = tmp_path / "out"
    run(model, tok, data, out)
    reference = table(out)
    victim = shards(out)[2]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    (out / "data" / f".{victim.name}.999.tmp").write_bytes(b"partial")
    (out / ".manifest.json.999.tmp").write_text("{")
    with pytest.warns(UserWarning, match="computing it again"):
        manifest = run(model, tok, data, out)
    assert manifest["runs"][-1]["shards_written"] == 1
    assert table(out).equals(reference) and not list((out / "data").glob(".*")) and not list(out.glob(".*"))
    assert run(model, tok, data, out)["runs"][-1]["shards_written"] == 0  # complete: nothing to do


def test_other_settings_into_the_same_directory_are_refused(tiny, data, tmp_path):
    model, tok = tiny
    out = tmp_path / "out"
    run(model, tok, data, out)
    with pytest.raises(corpus.CorpusError, match=r"options.layer: None there, 1 now"):
        run(model, tok, data, out, layer=1)
    with pytest.raises(corpus.CorpusError, match="method: 'normxlogit' there, 'logat' now"):
        run(model, tok, data, out, method="logat")
    with pytest.raises(corpus.CorpusError, match="data.fingerprint"):
        run(model, tok, data.map(lambda r: {"text": r["text"] + " !"}), out)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(corpus.CorpusError, match="not an empty directory"):
        run(model, tok, data, tmp_path / "other")


# --- bad input -----------------------------------------------------------------------------------------------------
def test_bad_input_gives_clear_errors(tiny, data, tmp_path):
    model, tok = tiny
    cases = [
        (data, {"text_column": "sentence"}, "text_column='sentence' is not a column"),
        (data.select([]), {}, "no rows"),
        (datasets.Dataset.from_dict({"text": ["fine .", "  "]}), {}, "Row 1 of column 'text' is empty"),
        (datasets.Dataset.from_dict({"text": ["fine .", None]}), {}, "Row 1 has no value"),
        (datasets.Dataset.from_dict({"text": [1, 2]}), {}, "not text"),
        (datasets.DatasetDict({"train": data}), {}, "pass one split"),
        (data, {"method": "nonexistent"}, "nonexistent"),
    ]
    for i, (bad, kwargs, message) in enumerate(cases):
        with pytest.raises((ValueError, KeyError, TypeError), match=message):
            run(model, tok, bad, tmp_path / f"out{i}", **kwargs)
        assert not (tmp_path / f"out{i}" / "manifest.json").exists()  # refused before anything was written
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(corpus.CorpusError, match="unknown file type '.xlsx'"):
        corpus.load_data(tmp_path / "d.xlsx")
    with pytest.raises(FileNotFoundError):
        corpus.load_data(tmp_path / "missing.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(corpus.CorpusError, match="empty"):
        corpus.load_data(tmp_path / "empty.csv")


def test_cli_runs_resumes_and_reports_errors(model_dir, tmp_path, capsys):
    pd.DataFrame({"sentence": sentences(9)}).to_csv(tmp_path / "d.tsv", sep="\t", index=False)
    argv = ["explain-dataset", str(tmp_path / "d.tsv"), "--text-column", "sentence", "--model", str(model_dir),
            "--num-labels", "3", "--output", str(tmp_path / "out"), "--shard-size", "4", "--limit", "7",
            "--method", "random", "--no-progress"]
    assert main(argv) == 0
    assert "7 examples in 2 shards" in capsys.readouterr().err
    assert main(argv) == 0 and "0 computed now" in capsys.readouterr().err
    assert main(argv[:-1] + ["--layer", "1", "--no-progress"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert main(["explain-dataset", str(tmp_path / "d.tsv"), "--model", str(model_dir), "--output",
                 str(tmp_path / "o2")]) == 2
    assert "text_column='text' is not a column" in capsys.readouterr().err


# --- faithfulness ----------------------------------------------------------------------------------------------------
def test_evaluate_dataset_equals_evaluate(tiny, data):
    model, tok = tiny
    whole = nx.evaluate_dataset(model, tok, data, label_column="label", shard_size=100, progress=False)
    plain = nx.evaluate(model, tok, data["text"], labels=data["label"])
    assert whole.aopc == plain.aopc  # one shard: the same computation
    sharded = nx.evaluate_dataset(model, tok, data, label_column="label", shard_size=5, progress=False)
    assert sharded.n_examples == 22 and list(sharded.labels) == data["label"]
    for metric, value in plain.aopc.items():
        assert sharded.aopc[metric] == pytest.approx(value, abs=1e-6)


# --- several processes ---------------------------------------------------------------------------------------------
_TWO_PROCESSES = """
import sys
import torch
torch.set_num_threads(1)
from accelerate import PartialState
import datasets
import normxlogit as nx
from normxlogit.cli import main
from normxlogit.corpus import process_state

model_dir, data_file, out, result = sys.argv[1:]
state = process_state()
assert state.num_processes == 2 and state.backend == "gloo", (state.num_processes, state.backend)
code = main(["explain-dataset", data_file, "--model", model_dir, "--num-labels", "3", "--output", out,
             "--shard-size", "4", "--batch-size", "3", "--no-progress"])
assert code == 0
model, tok = nx.load_model(model_dir, num_labels=3)
evaluation = nx.evaluate_dataset(model, tok, data_file, label_column="label", shard_size=4, progress=False)
if state.is_main_process:
    evaluation.save(result)
torch.distributed.destroy_process_group()
"""


def test_two_processes_give_the_scores_of_one(tiny, data, model_dir, tmp_path):
    model, tok = tiny
    data.to_json(tmp_path / "d.jsonl")
    script = tmp_path / "two.py"
    script.write_text(textwrap.dedent(_TWO_PROCESSES))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           str(model_dir), str(tmp_path / "d.jsonl"), str(tmp_path / "two"), str(tmp_path / "two.json")]
    done = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]

    run(model, tok, tmp_path / "d.jsonl", tmp_path / "one")
    assert table(tmp_path / "two").equals(table(tmp_path / "one"))  # scores, predictions, meta: bit for bit
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["runs"][0]["processes"] == 2 and manifest["rows"] == 22

    two = nx.FaithfulnessResult.load(tmp_path / "two.json")
    one = nx.evaluate_dataset(model, tok, data, label_column="label", shard_size=4, progress=False)
    assert two.meta["processes"] == 2 and two.aopc == one.aopc
    for kind in one.outputs:
        np.testing.assert_array_equal(two.outputs[kind], one.outputs[kind])


_KILLED = """
import os, signal, sys
import torch
torch.set_num_threads(1)
from normxlogit.cli import main
from normxlogit.corpus import explain as corpus_explain

write, written = corpus_explain.write_shard, []

def write_then_die(path, table):
    write(path, table)
    written.append(path)
    if len(written) == int(os.environ["KILL_AFTER"]):
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no exception handler: as the OOM killer would

corpus_explain.write_shard = write_then_die
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_half_way_then_resume(tiny, data, model_dir, tmp_path):
    model, tok = tiny
    data.to_csv(tmp_path / "d.csv", index=False)
    script = tmp_path / "killed.py"
    script.write_text(textwrap.dedent(_KILLED))
    argv = ["explain-dataset", str(tmp_path / "d.csv"), "--model", str(model_dir), "--num-labels", "3",
            "--output", str(tmp_path / "out"), "--shard-size", "4", "--batch-size", "3", "--no-progress"]
    done = subprocess.run([sys.executable, str(script), *argv], env={**env(), "KILL_AFTER": "3"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    assert len(shards(tmp_path / "out")) == 3

    assert main(argv) == 0  # the same command again
    run(model, tok, tmp_path / "d.csv", tmp_path / "full")
    resumed = table(tmp_path / "out")
    assert resumed.equals(table(tmp_path / "full"))
    assert resumed.column("index").to_pylist() == list(range(22))  # every example once
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["runs"][-1]["shards_written"] == 3
