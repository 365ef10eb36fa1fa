"""Finding a local copy of a model before going to the Hub, and converting GGUF files once.

``load_model("HuggingFaceTB/SmolLM2-135M-Instruct")`` (or the short ``"SmolLM2-135M-Instruct"``) looks, in order:

1. at the name itself when it is an existing path (a model folder, a folder holding one ``.gguf`` file, or a
   ``.gguf`` file);
2. in ``$NORMXLOGIT_MODELS`` (one folder, or several separated by ``os.pathsep``);
3. in ``../shared/models`` next to the project root (:func:`normxlogit.settings.project_root`), where the offline
   machines keep their weights;

for a folder named like the full id or its last part, and otherwise leaves the name to the Hub. A folder with a
``config.json`` loads as it is. A GGUF file (quantised weights, which transformers de-quantises on load) is converted
once, about 30 s for a 135M model, and saved with ``save_pretrained`` (model and tokenizer, float32 safetensors)
under ``cache_dir()/models/<file>-<key>``; later loads read that copy in seconds. The copy is written to a temporary
folder and renamed into place under a file lock, so concurrent first loads convert once and never see half a copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from . import settings

MODELS_ENV = "NORMXLOGIT_MODELS"
#: Bump when the conversion changes, so that older cached copies are not reused.
CONVERSION_VERSION = 1
CONVERSION_FILE = "normxlogit-conversion.json"

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


class LocalModelError(ValueError):
    """A local model folder or GGUF file exists but cannot be used; the message says why."""


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | str | None:
    """``torch.bfloat16``, ``"bf16"``, ``"bfloat16"``, ``"fp16"``, ``"float32"``... as a torch dtype (``"auto"`` kept)."""
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; use one of float32, bfloat16 (bf16), float16 (fp16) or 'auto'.")
    return _DTYPES[key]


def search_dirs() -> list[Path]:
    """Where named models are looked for: ``$NORMXLOGIT_MODELS`` (its folders in order), then ``../shared/models``."""
    dirs = [Path(p).expanduser() for p in os.environ.get(MODELS_ENV, "").split(os.pathsep) if p.strip()]
    dirs.append(settings.project_root().parent / "shared" / "models")
    return dirs


def _candidate_names(name: str) -> list[str]:
    """Folder names a model id may be stored under: the full id, ``org--name``, and the last part."""
    parts = [p for p in name.replace("\\", "/").split("/") if p]
    names = [name]
    if len(parts) > 1:
        names += ["--".join(parts), parts[-1]]
    return list(dict.fromkeys(names))


def find_local_model(name_or_path: str | os.PathLike) -> Path | None:
    """The local folder or GGUF file for ``name_or_path`` (see the module docstring for the order), else ``None``."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    name = str(name_or_path)
    if path.is_absolute() or name.startswith((".", "~")):
        return None  # an explicit path that does not exist: nothing to search for
    for folder in search_dirs():
        for candidate in _candidate_names(name):
            if (folder / candidate).exists():
                return folder / candidate
    return None


def searched_places(name_or_path: str | os.PathLike) -> str:
    """One sentence naming where a local copy was looked for (for error messages)."""
    env = os.environ.get(MODELS_ENV)
    places = [f"the path {str(name_or_path)!r}"]
    places.append(f"${MODELS_ENV} ({env})" if env else f"${MODELS_ENV} (not set)")
    places.append(str(settings.project_root().parent / "shared" / "models"))
    return f" No local copy was found; looked at {', '.join(places)}."


def _gguf_file(path: Path) -> Path | None:
    """The GGUF file that ``path`` stands for: the file itself or the single ``.gguf`` in a folder without config."""
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise LocalModelError(f"{path} is a file but not a .gguf file; pass a model folder or a .gguf file.")
        return path
    if (path / "config.json").exists():
        return None
    files = sorted(path.glob("*.gguf"))
    if not files:
        raise LocalModelError(
            f"The model folder {path} has neither a config.json (a transformers model) nor a .gguf file."
        )
    if len(files) > 1:
        raise LocalModelError(
            f"{path} holds several GGUF files ({', '.join(f.name for f in files)}); pass the path of the one to load."
        )
    return files[0]


def resolve_local_model(name_or_path: str | os.PathLike) -> str:
    """What transformers should load for ``name_or_path``: a local folder (GGUF converted and cached) or the name.

    Names without a local copy come back unchanged, for the Hub.
    """
    found = find_local_model(name_or_path)
    if found is None:
        return str(name_or_path)
    gguf = _gguf_file(found)
    return str(found if gguf is None else converted_gguf(gguf))


# --- GGUF conversion -------------------------------------------------------------------------------------------------
def gguf_cache_path(gguf: Path) -> Path:
    """Where the converted copy of ``gguf`` lives: keyed by the file's path, size and modification time."""
    stat = gguf.stat()
    key = f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{CONVERSION_VERSION}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return settings.cache_dir() / "models" / f"{gguf.stem}-{digest}"


def _is_complete(path: Path) -> bool:
    return (path / CONVERSION_FILE).exists()


def converted_gguf(gguf: Path) -> Path:
    """The cached transformers copy of ``gguf``, converting it first if there is none (once, under a lock)."""
    path = gguf_cache_path(gguf)
    if _is_complete(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # The lock makes a second process wait for the first one's copy instead of converting its own.
    with settings.file_lock(path.parent / f".{path.name}.lock"):
        if not _is_complete(path):
            _convert(gguf, path)
    return path


def _convert(gguf: Path, path: Path) -> None:
    """De-quantise ``gguf`` and save model and tokenizer to ``path`` atomically (temporary folder, then rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf as _gguf  # noqa: F401 - transformers needs it to read the file
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise LocalModelError(f"Reading {gguf.name} needs the package 'gguf' (pip install gguf).") from err
    print(f"normxlogit: converting {gguf} once (this takes a while); the copy is cached at {path}", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        _align_special_tokens(tokenizer, gguf)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = {"source": str(gguf.resolve()), "size": gguf.stat().st_size, "version": CONVERSION_VERSION}
        (tmp / CONVERSION_FILE).write_text(json.dumps(info, indent=1))
        if path.exists():  # a partial copy left by a crash before the rename existed: replace it
            shutil.rmtree(path)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _gguf_metadata(gguf: Path) -> dict:
    """The scalar ``tokenizer.ggml.*`` fields of a GGUF file."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf))
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer.ggml.") and len(field.data) == 1:
            value = field.parts[field.data[0]]
            if value.dtype.kind in "biuf" and value.size == 1:
                out[key] = value.item()
    return out


def _align_special_tokens(tokenizer, gguf: Path) -> None:
    """Set the special tokens and the BOS flag from the GGUF metadata.

    transformers' GGUF tokenizer conversion (4.5x) swaps BOS and EOS and adds a BOS the file says not to add (for
    SmolLM2 it made ``<|im_start|>`` the EOS token and prepended it to every text); the file's own fields are the
    reference.
    """
    meta = _gguf_metadata(gguf)
    for key, attribute in (("bos_token_id", "bos_token"), ("eos_token_id", "eos_token"),
                           ("unknown_token_id", "unk_token"), ("padding_token_id", "pad_token")):
        index = meta.get(f"tokenizer.ggml.{key}")
        if index is not None and 0 <= int(index) < len(tokenizer):
            setattr(tokenizer, attribute, tokenizer.convert_ids_to_tokens(int(index)))
    for flag in ("add_bos_token", "add_eos_token"):
        value = meta.get(f"tokenizer.ggml.{flag}")
        if value is not None and hasattr(tokenizer, flag):
            setattr(tokenizer, flag, bool(value))
