"""Cost of every attribution method: seconds per instance and peak memory at input lengths 40, 120, 360 and 512.

Each (method, length) runs in its own process, so peak memory is that method's alone: on CPU the growth of the
process's peak resident set (VmHWM, reset after the model is loaded) over its size before the first call; on a GPU
``torch.cuda.max_memory_allocated`` over the memory held before the call. Time is the fastest of repeated
calls of ``nx.explain`` on one input of exactly that many tokens (batch size 1, as the paper's "seconds per
instance"; the median is recorded too), after a warm-up call on a short input; calls repeat until ``--min-time``
seconds and at least three calls have passed (or ten times ``--min-time``: very slow calls are timed once).

    python bench/efficiency.py                      # CPU, every registered method -> normxlogit/resources/efficiency_cpu.json
    python bench/efficiency.py --device cuda        # -> normxlogit/resources/efficiency_cuda.json
    python bench/efficiency.py --methods normxlogit gradient_norm integrated_gradients --lengths 120
    python bench/efficiency.py --methods decompx --threads 1 --min-time 1   # DecompX alone (slow at 512 on a CPU)

Methods may carry options: ``integrated_gradients:internal_batch_size=None`` (all 50 interpolation steps in one
pass, as the paper ran it; the default ``"auto"`` bounds each pass to about 8,192 tokens) or
``decompx:chunk_size=1``. DecompX's cost grows as n^3 d in time and n^2 d in memory (see
``normxlogit.methods.decompx``); the paper gives no timing for it. The model is the fine-tuned SST-2
MiniLM when it is cached, else MiniLM with an untrained head (the cost is the same). The machine may be shared:
the load average is recorded with every measurement; compare ratios, not absolute seconds. On a loaded machine use
``--threads 1``: with more runnable processes than cores, multi-threaded matrix products wait for descheduled threads
(a 40-token forward pass took 0.75 s with two threads against 0.02 s with one), and a single-threaded process's CPU
time (``cpu_seconds_per_instance``) is then the cleanest measure of each method's work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

LENGTHS = (40, 120, 360, 512)
GRADIENT_METHODS = ("gradient_norm", "grad_x_input", "integrated_gradients")
#: Methods NormXLogit's speed and memory are compared with in ``ratios``.
BASELINES = GRADIENT_METHODS + ("decompx",)
#: The paper's GPU figures (seconds per instance at 40/120/360/512; BERT-base, their GPU).
PAPER_SECONDS = {
    "gradient_norm": {40: 0.77, 120: 0.77, 360: 0.77, 512: 0.77},
    "integrated_gradients": {40: 0.82, 120: 0.96, 360: 1.47, 512: 1.79},
    "normxlogit": {40: 0.36, 120: 0.36, 360: 0.36, 512: 0.36},
}
ROOT = Path(__file__).resolve().parent.parent


def parse_method(spec: str) -> tuple[str, dict]:
    """``name`` or ``name:key=value,key=value`` (values parsed as int, float or string)."""
    name, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if value == "None":
            options[key] = None
            continue
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                continue
        options[key] = value
    return name, options


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def long_text(tokenizer, length: int) -> str:
    """SST-2 validation sentences joined until the text has more than ``length`` tokens (explain truncates it)."""
    from normxlogit.data import load_sst2

    sentences, text = load_sst2("validation")["sentence"], ""
    for sentence in sentences:
        text += " " + sentence.strip()
        if len(tokenizer(text)["input_ids"]) > length:
            return text.strip()
    raise RuntimeError("Not enough text to reach the requested length.")


def worker(args: argparse.Namespace) -> dict:
    """Measure one (method, length) in this process and return the figures."""
    import torch

    import normxlogit as nx

    name, options = parse_method(args.method)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    try:
        from normxlogit.training import cached_path, pretrained

        if not (cached_path("sst2") / "normxlogit.json").is_file():
            raise FileNotFoundError
        model, tok = pretrained("sst2", device=device)
        model_name = "MiniLM fine-tuned on SST-2 (nx.pretrained('sst2'))"
    except (ImportError, FileNotFoundError, KeyError):
        torch.manual_seed(0)
        model, tok = nx.load_model("all-MiniLM-L6-v2", task="classification", num_labels=2, device=device)
        model_name = "all-MiniLM-L6-v2 with an untrained 2-class head"
    text = long_text(tok, args.length)
    warmup_text = " ".join(text.split()[:12])

    def call(t: str, max_length: int) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the text is truncated to exactly max_length tokens on purpose
            a = nx.explain(model, tok, t, method=name, max_length=max_length, **options)
        assert len(a) == max_length or max_length != args.length
        if device.type == "cuda":
            torch.cuda.synchronize()

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        reset = _reset_peak_rss()
        before = _rss_kb("VmRSS")
    call(warmup_text, 16)
    load_before = os.getloadavg()[0]
    times: list[float] = []
    cpu_times: list[float] = []
    while True:
        start, cpu_start = time.perf_counter(), time.process_time()
        call(text, args.length)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        enough = len(times) >= 3 or sum(times) >= 10 * args.min_time  # very slow calls are timed once
        if len(times) >= args.max_repeats or (sum(times) >= args.min_time and enough):
            break
    if cuda:
        peak_mb = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        peak_mb = ((_rss_kb("VmHWM") if reset else _peak_ru_maxrss_kb()) - before) / 1024
    return {
        "method": args.method,
        "length": args.length,
        # The fastest call: on a shared machine the others are slowed by other processes, not by the method.
        "seconds_per_instance": min(times),
        "median_seconds_per_instance": statistics.median(times),
        "cpu_seconds_per_instance": min(cpu_times),
        "repeats": len(times),
        "peak_memory_mb": round(peak_mb, 1),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "model": model_name,
    }


def _peak_ru_maxrss_kb() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def ratios(results: list[dict]) -> dict:
    """NormXLogit's speed-up over each gradient method and memory ratio, per length."""
    table = {(r["method"], r["length"]): r for r in results if "error" not in r}
    out: dict = {}
    for length in sorted({r["length"] for r in results}):
        mine = table.get(("normxlogit", length))
        if mine is None:
            continue
        row = {}
        for other in BASELINES:
            theirs = table.get((other, length))
            if theirs is not None:
                row[f"speedup_vs_{other}"] = round(theirs["seconds_per_instance"] / mine["seconds_per_instance"], 2)
                if "cpu_seconds_per_instance" in mine and "cpu_seconds_per_instance" in theirs:
                    row[f"cpu_time_speedup_vs_{other}"] = round(
                        theirs["cpu_seconds_per_instance"] / mine["cpu_seconds_per_instance"], 2)
                row[f"memory_ratio_{other}_to_normxlogit"] = round(
                    theirs["peak_memory_mb"] / max(mine["peak_memory_mb"], 0.1), 2)
        if length in PAPER_SECONDS["normxlogit"]:
            row["paper_speedup_vs_gradient_norm"] = round(PAPER_SECONDS["gradient_norm"][length] / 0.36, 2)
            row["paper_speedup_vs_integrated_gradients"] = round(PAPER_SECONDS["integrated_gradients"][length] / 0.36, 2)
        out[str(length)] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="*", help="default: every registered method, plus integrated gradients "
                        "with all 50 steps in one pass (internal_batch_size=None, the paper's setting)")
    parser.add_argument("--lengths", nargs="*", type=int, default=list(LENGTHS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-time", type=float, default=3.0, help="keep timing a fast method this many seconds "
                        "(at least 3 calls, unless one call takes longer than --min-time)")
    parser.add_argument("--max-repeats", type=int, default=30)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per (method, length) process")
    parser.add_argument("--out", help="default: normxlogit/resources/efficiency_<device>.json (shipped with the package: chapter 4 reads it)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(worker(args)))
        return

    import torch

    import normxlogit as nx

    methods = args.methods or nx.list_methods() + ["integrated_gradients:internal_batch_size=None"]
    out = Path(args.out or ROOT / "normxlogit" / "resources" / f"efficiency_{args.device.split(':')[0]}.json")
    results = []
    for length in args.lengths:
        for method in methods:
            command = [sys.executable, __file__, "--worker", "--method", method, "--length", str(length),
                       "--device", args.device, "--threads", str(args.threads), "--min-time", str(args.min_time),
                       "--max-repeats", str(args.max_repeats)]
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, env=env)
                lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
                result = json.loads(lines[-1]) if done.returncode == 0 and lines else {
                    "method": method, "length": length, "error": done.stderr.strip().splitlines()[-1:]}
            except subprocess.TimeoutExpired:
                result = {"method": method, "length": length, "error": f"timed out after {args.timeout:.0f} s"}
            results.append(result)
            shown = {k: v for k, v in result.items() if k != "model"}
            print(json.dumps(shown), flush=True)
    device_name = (torch.cuda.get_device_name() if args.device.startswith("cuda")
                   else _cpu_name() + f", {args.threads} threads")
    report = {
        "device": device_name,
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "model": next((r["model"] for r in results if "model" in r), None),
        "notes": "seconds per instance: fastest wall time of repeated calls of nx.explain on one input of exactly `length` tokens "
                 "(batch size 1); cpu seconds: the process's CPU time for that call (with one thread, the time on an idle "
                 "core, free of the slow-down other processes cause on a shared machine); peak memory: growth of peak RSS (CPU) or of max allocated memory (GPU) during the "
                 "calls, in MB; each (method, length) in its own process. Gradient methods' time includes the "
                 "no-grad forward pass explain() runs for every method.",
        "results": results,
        "ratios": ratios(results),
        "paper_seconds_gpu": {m: {str(k): v for k, v in d.items()} for m, d in PAPER_SECONDS.items()},
    }
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report["ratios"], indent=1))
    print(f"wrote {out}")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


if __name__ == "__main__":
    main()
