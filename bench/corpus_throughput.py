"""Throughput of ``normxlogit explain-dataset`` on one process and on two (torchrun, gloo), SST-2 validation.

    python bench/corpus_throughput.py [--n 872] [--method normxlogit] [--shard-size 64] [--json out.json]

The model is MiniLM (``all-MiniLM-L6-v2``, offline copy) with a seeded, untrained two-class head, saved to a
temporary directory so that every process loads the same weights; the forward cost is that of the fine-tuned model.
Each configuration runs the real command in fresh processes, into a fresh output directory:

- 1 process, 1 thread; 1 process with as many threads as processes in the parallel run (the fair baseline on a
  machine whose cores are all in use: the same cores, used by threads instead of processes);
- N processes (``torchrun --nproc_per_node N``), 1 thread each.

Reported: examples per second of the attribution work (examples / the slowest process's time from its first shard to
its last, taken from the manifest), and end to end (wall time of the whole command, Python start and model loading
included, which dominates on a small dataset). The ratio is N processes against the 1-thread process. The load
average is printed beside them: on a shared machine other jobs take cores, and the figures then say little.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import normxlogit as nx
from normxlogit.data import load_sst2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from efficiency import _cpu_name  # noqa: E402  (bench/ sits beside this script)

ROOT = Path(__file__).resolve().parent.parent


def run(data: Path, model: Path, out: Path, processes: int, threads: int, method: str, shard_size: int) -> dict:
    """One explain-dataset command; returns its wall time and the manifest's figures."""
    cli = ["-m", "normxlogit.cli", "explain-dataset", str(data), "--text-column", "sentence", "--model", str(model),
           "--num-labels", "2", "--method", method, "--output", str(out), "--shard-size", str(shard_size),
           "--no-progress"]
    if processes == 1:
        cmd = [sys.executable, *cli]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), *cli]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    load = os.getloadavg()[0]
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - start
    manifest = json.loads((out / "manifest.json").read_text())
    seconds = manifest["runs"][-1]["seconds"]
    n = manifest["rows"]
    return {"processes": processes, "threads_per_process": threads, "examples": n, "work_seconds": seconds,
            "examples_per_second": round(n / seconds, 1), "wall_seconds": round(wall, 2),
            "end_to_end_examples_per_second": round(n / wall, 1), "load_average_before": round(load, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=872)
    parser.add_argument("--method", default="normxlogit")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=64, help="small enough for every process to get shards")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        torch.manual_seed(0)
        model, tok = nx.load_model("all-MiniLM-L6-v2", task="classification", num_labels=2)
        model.save_pretrained(tmp_path / "model")
        tok.save_pretrained(tmp_path / "model")
        data = load_sst2("validation", limit=args.n)
        data.to_json(tmp_path / "sst2.jsonl")
        configs = [(1, 1), (1, args.processes), (args.processes, 1)]
        rows = []
        for i, (processes, threads) in enumerate(configs):
            row = run(tmp_path / "sst2.jsonl", tmp_path / "model", tmp_path / f"out{i}", processes, threads,
                      args.method, args.shard_size)
            rows.append(row)
            print(f"{processes} process(es) x {threads} thread(s): {row['examples_per_second']:7.1f} examples/s "
                  f"({row['examples']} in {row['work_seconds']:.2f} s of work; end to end {row['wall_seconds']:.1f} s, "
                  f"{row['end_to_end_examples_per_second']:.1f} examples/s; load average {row['load_average_before']})")
    base, threaded, parallel = rows
    ratio = parallel["examples_per_second"] / base["examples_per_second"]
    print(f"{args.processes} processes / 1 process: {ratio:.2f}x the throughput "
          f"({parallel['examples_per_second'] / threaded['examples_per_second']:.2f}x against 1 process with "
          f"{args.processes} threads). CPU: {_cpu_name()}, {os.cpu_count()} logical cores; "
          f"load average now {os.getloadavg()[0]:.2f}.")
    if args.json:
        Path(args.json).write_text(json.dumps({"method": args.method, "cpu": _cpu_name(), "runs": rows,
                                               "ratio": round(ratio, 3)}, indent=1) + "\n")


if __name__ == "__main__":
    main()
