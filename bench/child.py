"""Run a benchmark script's case in a child process: its JSON result and its own peak memory (used by the bench
scripts, which each measure one case per process)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) a running process has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo), for the benches' records."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_child(script: str, argv: list[str], timeout: float, *, fixed_mmap: bool = False,
              cpu_limit: float | None = None) -> tuple[dict, float]:
    """Run ``script`` with ``argv`` as a child; the last JSON line it prints and its peak resident set (MB), from
    ``os.wait4``. ``fixed_mmap``: a fixed glibc mmap threshold; glibc otherwise raises it as large blocks are freed,
    after which tensors come from the heap and stay resident or not by chance (peak RSS then varied by 100 MB
    between identical runs). ``cpu_limit``: also kill the child past this many CPU seconds (the fair limit on a
    shared machine, where ``timeout``, in wall seconds, depends on the load). :class:`TimeoutError` says which."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)} if fixed_mmap else None
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, script, *argv], stdout=out, stderr=err, text=True, cwd=ROOT,
                                env=env)
        start = time.monotonic()
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            try:
                cpu = cpu_of(proc.pid) if cpu_limit is not None else 0.0
            except (OSError, IndexError, ValueError):
                cpu = 0.0
            wall = time.monotonic() - start
            if wall > timeout or (cpu_limit is not None and cpu > cpu_limit):
                proc.kill()
                proc.wait()
                which = f"{cpu_limit:.0f} s of CPU" if wall <= timeout else f"{timeout:.0f} s wall"
                raise TimeoutError(f"case {argv} ran past {which} (at {cpu:.0f} s CPU, {wall:.0f} s wall)")
            time.sleep(0.2)
        code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if code != 0:
            kind = "killed (out of memory?)" if code == -9 else f"exit code {code}"
            raise RuntimeError(f"case {argv} failed ({kind}):\n{err.read()[-3000:]}")
        lines = [line for line in out.read().splitlines() if line.startswith("{")]
    return json.loads(lines[-1]), usage.ru_maxrss / 1024
