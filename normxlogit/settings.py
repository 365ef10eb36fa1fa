"""Process-wide settings read from the environment: the run profile and the cache directory."""

from __future__ import annotations

import contextlib
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
    """The repository root when running from a checkout (the folder holding ``normxlogit/``)."""
    return Path(__file__).resolve().parent.parent


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
