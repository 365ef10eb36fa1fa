"""What a model must offer normxlogit, checked by the kind of failure rather than by family name.

A token's score needs (1) an input-embedding table (its norm, and the vectors gradients flow to), (2) hidden states
with one position per input token, and (3) a forward pass that takes the batch as it is padded. Families outside the
head table can miss any of the three: CANINE and wav2vec2 have no embedding table transformers can hand out
(``get_input_embeddings`` raises ``NotImplementedError``); CANINE, Funnel and Perceiver hold fewer or other
positions than tokens (downsampling, latent arrays); Nyströmformer with ``num_landmarks`` != ``segment_means_seq_len``
averages fixed-size segments, so it fails on other lengths, or silently mixes the rows of a batch whose size happens
to fit. Each failure gets :class:`~normxlogit.core.architectures.UnsupportedModelError` (a ``ValueError``) saying
why and what to pass, never a raw error from inside transformers or a silently wrong number.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor
from transformers import PreTrainedModel

from .architectures import UnsupportedModelError

#: Parts of config field names that constrain the sequence length a model takes (shown when a forward fails).
LENGTH_FIELDS = ("seq_len", "landmark", "chunk_length", "block_size", "attention_window", "axial_pos", "num_latents",
                 "window", "downsampling_rate", "max_position_embeddings")


def _name(model: PreTrainedModel) -> str:
    return f"{type(model).__name__} (model_type={getattr(model.config, 'model_type', '')!r})"


def check_input_embeddings(model: PreTrainedModel) -> None:
    """A clear error for a model without an input-embedding table (``get_input_embeddings`` not implemented)."""
    try:
        model.get_input_embeddings()
    except NotImplementedError:
        raise UnsupportedModelError(
            f"{_name(model)} has no input-embedding table transformers can hand out (get_input_embeddings is not "
            "implemented: its inputs are embedded otherwise, e.g. hashed characters or audio frames), so there is "
            "no token vector to take a norm of or to attribute to. normxlogit explains models whose input ids index "
            "an embedding matrix; pick such a model (e.g. a BERT- or Llama-style one)."
        ) from None


def length_constraints(model: PreTrainedModel) -> str:
    """The config fields that constrain the sequence length (``name=value, ...``), or ``""``."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    fields = {k: v for k, v in vars(config).items()
              if any(part in k for part in LENGTH_FIELDS) and isinstance(v, (int, list, tuple)) and not k.startswith("_")}
    return ", ".join(f"{k}={v}" for k, v in sorted(fields.items()))


@contextlib.contextmanager
def length_errors(model: PreTrainedModel, inputs: dict[str, Tensor]) -> Iterator[None]:
    """Turn a shape error raised inside the model's forward pass into a clear error naming the batch's length and the
    config fields that constrain it."""
    try:
        yield
    except (RuntimeError, IndexError) as err:
        text = str(err)
        if not any(word in text for word in ("shape", "size", "dimension", "out of bounds")):
            raise
        rows, length = tuple(inputs["input_ids"].shape)
        fields = length_constraints(model)
        raise UnsupportedModelError(
            f"{_name(model)} cannot run a batch of {rows} text(s) padded to {length} tokens: inside its forward pass "
            f"transformers raised {type(err).__name__}: {text.splitlines()[0][:200]}. Its attention only takes "
            "certain sequence lengths" + (f" (config: {fields})" if fields else "") + ". Pass texts of a length "
            "it takes (max_length= cuts them), or load the model with a config that lifts the constraint (e.g. "
            "Nyströmformer with num_landmarks equal to segment_means_seq_len runs exact attention at any length)."
        ) from None


def check_token_aligned(model: PreTrainedModel, hidden_states: tuple[Tensor, ...], input_ids: Tensor) -> None:
    """A clear error when the hidden states do not hold one position per input token (downsampling, latents)."""
    lengths = sorted({int(h.shape[1]) for h in hidden_states if h.dim() == 3})
    if lengths != [int(input_ids.shape[1])]:
        raise UnsupportedModelError(
            f"{_name(model)} keeps hidden states of {lengths} positions for {int(input_ids.shape[1])} input "
            "tokens (it pads the sequence to a multiple of a chunk, downsamples it, or works on a latent array), so "
            "a hidden state is not a token's and no score can be given per token. normxlogit explains models whose every layer keeps one position "
            "per token."
        )


def check_batch_invariance(model: PreTrainedModel, alone: Tensor, batched: Tensor, rows: int, length: int) -> None:
    """A clear error when a text's output alone differs from its output in a padded batch (a family outside the
    table whose attention mixes rows or counts padding), which would make every score depend on the batch."""
    scale = alone.abs().clamp(min=1.0)
    gap = float(((alone.float() - batched.float()).abs() / scale).max())
    if not gap <= 1e-3:
        fields = length_constraints(model)
        raise UnsupportedModelError(
            f"{_name(model)} gives text 0 another output alone than in a batch of {rows} text(s) padded to {length} "
            f"tokens (relative gap {gap:.2g}): its attention mixes the rows of a batch or counts the padding"
            + (f" (config: {fields})" if fields else "") + ", so its scores would depend on the batch. Load it with "
            "a config whose attention is exact (e.g. Nyströmformer with num_landmarks equal to segment_means_seq_len)"
            ", or explain a family in the head table (normxlogit.list_architectures())."
        )


def probe_alone(model: PreTrainedModel, inputs: dict[str, Tensor], run) -> Tensor:
    """``run`` on the first row of ``inputs`` alone, cut to its own length (no padding)."""
    n = int(inputs["attention_mask"][0].sum())
    with length_errors(model, {k: v[:1, :n] for k, v in inputs.items()}), torch.no_grad():
        return run({k: v[:1, :n] if v.dim() > 1 else v for k, v in inputs.items()})


@contextlib.contextmanager
def head_read_errors(model: PreTrainedModel, source: str, states: Tensor) -> Iterator[None]:
    """Turn an error raised while a guessed or user-given head (``source`` ``"generic"`` or ``"user"``) reads the
    model's hidden states into a clear error (e.g. Reformer's reversible layers keep two streams side by side, so
    its hidden states are twice as wide as its output layer reads)."""
    try:
        yield
    except (RuntimeError, IndexError) as err:
        if source == "table":
            raise
        what = "the head= callable" if source == "user" else "the generic head guess (this family is not in the table)"
        raise UnsupportedModelError(
            f"{_name(model)}: {what} cannot read its hidden states (last layer {tuple(states.shape)}): "
            f"{type(err).__name__}: {str(err).splitlines()[0][:200]}. Pass head= (a callable mapping this model's "
            "hidden states (N, hidden) to logits (N, classes)) and pooling=, or add the family to "
            "normxlogit.core.architectures.HEADS."
        ) from None
