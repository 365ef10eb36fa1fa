"""Process-wide settings read from the environment: the run profile and the cache directory."""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

PROFILES = ("quick", "full")


def profile() -> str:
    """``NORMXLOGIT_PROFILE``: ``quick`` (CI, a few hundred examples) or ``full`` (the published book). Default full."""
    value = os.environ.get("NORMXLOGIT_PROFILE", "full").strip().lower()
    if value not in PROFILES:
        raise ValueError(f"NORMXLOGIT_PROFILE must be 'quick' or 'full', not {value!r}.")
    return value


def pick(quick: T, full: T) -> T:
    """The value for the current profile: ``pick(quick=200, full=None)``."""
    return quick if profile() == "quick" else full


def cache_dir() -> Path:
    """``NORMXLOGIT_CACHE`` (default ``~/.cache/normxlogit``), created on demand: fine-tuned models live here."""
    path = Path(os.environ.get("NORMXLOGIT_CACHE", Path.home() / ".cache" / "normxlogit")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def project_root() -> Path:
    """The repository root when running from a checkout (the folder holding ``normxlogit/``).

    Installed from a wheel this is ``site-packages``: files a chapter reads are package data, see :func:`resource`."""
    return Path(__file__).resolve().parent.parent


def resource(name: str) -> Path:
    """A data file shipped inside the package (``normxlogit/resources/<name>``): the measured benchmark tables the
    book shows (``efficiency_cpu.json``, ``efficiency_decompx_cpu.json``, ``generation_speed_cpu.json``) and the
    hand-checked BLiMP sample (``blimp_gold.jsonl``). Found the same way from a checkout, a wheel or a git install."""
    folder = importlib.resources.files("normxlogit") / "resources"
    path = folder / name
    if not path.is_file():
        shipped = sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
        raise FileNotFoundError(f"normxlogit ships no resource {name!r}; it has: {', '.join(shipped) or 'none'}.")
    return Path(str(path))  # a real file: the package is installed as files, not zipped


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so a reader never sees half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` for the block (a no-op where fcntl is missing): a second process
    waits for the first's cached model instead of building its own."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
