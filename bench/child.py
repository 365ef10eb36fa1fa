"""Run a benchmark script's case in a child process: its JSON result and its own peak memory (used by the bench
scripts, which each measure one case per process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_child(script: str, argv: list[str], timeout: float, *, fixed_mmap: bool = False) -> tuple[dict, float]:
    """Run ``script`` with ``argv`` as a child; the last JSON line it prints and its peak resident set (MB), from
    ``os.wait4``. ``fixed_mmap``: a fixed glibc mmap threshold; glibc otherwise raises it as large blocks are freed,
    after which tensors come from the heap and stay resident or not by chance (peak RSS then varied by 100 MB
    between identical runs)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)} if fixed_mmap else None
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, script, *argv], stdout=out, stderr=err, text=True, cwd=ROOT,
                                env=env)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                raise TimeoutError(f"case {argv} ran past {timeout} s")
            time.sleep(0.2)
        code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if code != 0:
            raise RuntimeError(f"case {argv} failed ({code}):\n{err.read()[-3000:]}")
        lines = [line for line in out.read().splitlines() if line.startswith("{")]
    return json.loads(lines[-1]), usage.ru_maxrss / 1024
