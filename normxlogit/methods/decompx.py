"""DecompX (Modarressi et al., ACL 2023): every hidden vector as a sum of per-input-token parts, up to the logits.

Paper: A. Modarressi, M. Fayyaz, E. Aghazadeh, Y. Yaghoobzadeh, M. T. Pilehvar, "DecompX: Explaining Transformers
Decisions by Propagating Token Decomposition", ACL 2023 (https://aclanthology.org/2023.acl-long.149). The
NormXLogit paper uses it as its strongest faithfulness baseline (BERT only). This is an independent implementation.

What it computes
----------------
Layer ``l``'s output at position ``i`` is carried as ``x_i^l = sum_k x_(i<-k)^l + x_(i<-bias)^l``: one part per input
token ``k`` and one bias part. Every operation of a (post-LayerNorm) encoder layer is applied to the parts so that
they keep summing to the real vector of the model's forward pass:

- **start**: the initial part of token ``k`` is its own embedding-layer output row, ``x_(k<-k)^0 = h_k^0`` (word +
  position + type embeddings after the embedding LayerNorm, and after ELECTRA's / ALBERT's projection), zero at every
  other position; the bias part starts at zero (the DecompX authors' choice: the embedding LayerNorm's beta and the
  position embedding belong to the token at that position).
- **attention**: with the real forward's attention weights ``A`` (recomputed from the real hidden states), the
  output of head ``h`` at ``i`` is ``sum_j A_h[i, j] W_V,h x_j``: each part goes through ``W_O W_V`` and the
  attention mixing alone. The value and output biases, ``W_O b_V + b_O`` (attention rows sum to one), are a bias.
- **residual**: parts add.
- **LayerNorm**: each part minus its own mean, divided by the standard deviation of the *whole* real vector
  (``sqrt(var + eps)`` of the real forward: a constant per position), times gamma; beta is a bias.
- **activations** (feed-forward GELU, the pooler's tanh, ELECTRA's head GELU, DistilBERT's pre-classifier ReLU):
  linearised per element with the ratio ``act(z) / z`` of the real pre-activation ``z`` (the DecompX authors'
  "zero-origin" approximation, ``GeLU_ZO`` / ``tanh ZO``), so the parts still sum to the real ``act(z)``. Where
  ``z == 0`` exactly, the ratio is the activation's slope at 0 (any finite value keeps the sum: the parts of that
  element sum to 0 and ``act(0) = 0`` for all these activations, which is checked). The bias parts of the
  pre-activation follow the same linearisation as the token parts (the paper's choice).
- **head**: the pooled position's parts (position 0 for these encoders) go through the pooler / head dense layer,
  its linearised activation and the classifier, giving every token's contribution to every class logit.

**Biases** (``bias=``): ``"absdot"`` (default, the DecompX paper's configuration and that of its authors' demo:
``include_biases=True, bias_decomp_type="absdot"``, no bias token) shares every bias vector ``b`` out among the token
parts at that point, in proportion to ``|<x_(i<-k), b>|``; where every part is orthogonal to ``b`` (e.g. all zero)
it stays in the bias part, so the decomposition remains complete. The bias part is then (almost always) zero and the
token contributions alone sum to the logit. ``"separate"``: every bias is added to the bias part only (an extra
"bias token"), so token scores are what the tokens themselves carry and ``contributions.sum(1) + bias == logits``.
Both include biases, LayerNorm, feed-forward and classifier, as the paper's full configuration does. One small
departure from the authors' code: they keep layer 1's value bias inside each token's value vector (so it is shared
by attention weight), while here ``W_O b_V + b_O`` is one bias in every layer.

**Score** (registered method ``decompx``): the token's contribution to the target class logit (signed, as the
paper ranks). Regression: the token's signed contribution to the single output (tokens that raise the prediction
rank first; its absolute value is ``out.contributions.abs()`` from :func:`decompose`). This differs on purpose from
LogAt's regression score ``|head(h_i) - output|``, a distance; DecompX's contributions sum to the output, so they
keep their sign.

Completeness: ``contributions.sum(tokens) + bias`` equals the model's own logits for every class, to float
rounding (about 1e-6 relative in float32; the tests check 1e-4).

Memory, time and chunking
-------------------------
The parts of one sentence of ``T`` tokens are a ``(T, T + 1, d)`` tensor per layer: O(n^2 d) memory (MiniLM,
d = 384: 400 MB in float32 at 512 tokens, 25 MB at 128), and O(n^3 d + n^2 d^2) time per layer (the attention mixes
every part of every position). Sentences are decomposed in chunks, longest first, each chunk trimmed to its
longest sentence: ``chunk_size=n`` puts ``n`` sentences in a chunk; the default (``None``) groups only sentences of
the same length (so no padding is ever propagated: padding to length ``T`` would cost like ``T^3``), as many as keep
one parts tensor under :data:`CHUNK_ELEMENTS` floats. Measured on MiniLM, 64 SST-2 validation sentences (padded
to 44 tokens), one CPU thread: default 11.1 s of CPU, peak +31 MB; ``chunk_size=1`` 11.9 s, +23 MB;
``chunk_size=8`` 12.8 s, +170 MB; all 64 in one padded chunk 35.1 s, +616 MB. Peak memory is
about three parts tensors of a chunk (the layer's input parts, its output parts, and the feed-forward's
intermediate, computed in blocks of positions bounded by the same :data:`CHUNK_ELEMENTS`). Parts cannot be split
across chunks with ``"absdot"`` biases, which weigh all parts of a position together, so the smallest unit is one
sentence. Two exact savings: the last layer is computed at the pooled position only, and where the sequence is
long the feed-forward's two matrices are fused per position (``W_2 diag(act(z)/z) W_1``, cheaper once ``T``
exceeds about ``d * d_ff / (2 d_ff - d)``, 220 tokens for MiniLM). ``bench/efficiency.py`` (MiniLM, one sentence,
one CPU thread; CPU seconds, the shared machine being loaded): 0.63 / 3.8 / 31 / 54 s at 40 / 120 / 360 / 512
tokens, peak memory +82 / 241 / 663 / 1,053 MB (NormXLogit: 0.016 / 0.031 / 0.082 / 0.14 s).

Supported: the post-LayerNorm BERT-family encoders with absolute positions, ``bert``, ``roberta``, ``xlm-roberta``,
``camembert``, ``electra``, ``distilbert`` and ``albert`` (shared layers, any ``inner_group_num``), sequence
classification and regression heads; where each keeps its layers and head is the table
:data:`normxlogit.core.layouts.FAMILIES`. Others raise :class:`~normxlogit.core.heads.UnsupportedModelError`
saying why (:data:`normxlogit.core.layouts.UNSUPPORTED`). The propagation rules are in
:mod:`normxlogit.methods.decompx_rules`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import Tensor, nn

from ..core.heads import UnsupportedModelError
from ..core.inputs import eval_mode, model_inputs
from ..core.layouts import HeadStep, Sublayer, model_structure
from ..core.registry import Batch, register_method
from .decompx_rules import CHUNK_ELEMENTS, check_activations, propagate_head, propagate_layer

BiasMode = Literal["absdot", "separate"]
BIAS_MODES: tuple[str, ...] = ("absdot", "separate")

__all__ = ["BIAS_MODES", "CHUNK_ELEMENTS", "DecompXOutput", "decompose", "decompx_scores", "plan_chunks"]


# --- the decomposition ---------------------------------------------------------------------------------------------
@dataclass
class DecompXOutput:
    """Per-token contributions to every output and the bias part.

    ``contributions`` (B, T, C): token ``k``'s share of each logit (0 for padding); ``bias`` (B, C): what the bias
    part carries (zero, or nearly, with ``absdot`` biases); ``logits`` (B, C): the model's own outputs at the pooled
    position, which ``contributions.sum(1) + bias`` reproduces; ``bias_mode``: how biases were treated.
    """

    contributions: Tensor
    bias: Tensor
    logits: Tensor
    attention_mask: Tensor
    bias_mode: str

    @property
    def total(self) -> Tensor:
        """``contributions.sum(1) + bias`` (B, C): equals ``logits`` up to float rounding."""
        return self.contributions.sum(1) + self.bias

    def completeness_error(self) -> float:
        """Largest ``|total - logits|`` relative to the largest ``|logit|`` (about 1e-6 in float32)."""
        scale = self.logits.abs().max().clamp_min(1e-12)
        return float((self.total - self.logits.float()).abs().max() / scale)


def plan_chunks(lengths: list[int], width: int, chunk_size: int | None, budget: int) -> list[list[int]]:
    """Rows grouped into chunks, longest first. ``chunk_size``: that many sentences per chunk; ``None``: sentences
    of the same (trimmed) length together, as many as keep a parts tensor under ``budget`` floats (cost grows as the
    cube of the padded length, so padding is never added)."""
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size (sentences per chunk) must be at least 1, got {chunk_size}.")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    chunks: list[list[int]] = []
    for i in order:
        if chunks:
            current = chunks[-1]
            longest = lengths[current[0]]
            if chunk_size is not None:
                fits = len(current) < chunk_size
            else:
                fits = lengths[i] == longest and (len(current) + 1) * longest * (longest + 1) * width <= budget
            if fits:
                current.append(i)
                continue
        chunks.append([i])
    return chunks


@torch.no_grad()
def decompose(
    model: nn.Module,
    inputs: dict[str, Tensor],
    *,
    positions: Tensor | None = None,
    hidden_states: Sequence[Tensor] | None = None,
    logits: Tensor | None = None,
    bias: BiasMode = "absdot",
    chunk_size: int | None = None,
    max_elements: int = CHUNK_ELEMENTS,
    fused_ffn: bool | None = None,
) -> DecompXOutput:
    """DecompX for a batch of (padded) ``inputs``: every token's contribution to every class logit.

    ``inputs``: the model's inputs (``input_ids``, ``attention_mask``, ...). ``positions`` (B,): the pooled position
    (default 0). ``hidden_states`` / ``logits``: the model's ``output_hidden_states`` and logits for these inputs, to
    skip the forward pass. ``bias``: ``"absdot"`` (the paper's) or ``"separate"`` (see the module docstring).
    ``chunk_size``: sentences decomposed together, longest first (``None``: sentences of the same length
    together, as many as keep one parts tensor under ``max_elements`` floats; see the module docstring).
    ``fused_ffn``: force (True) or forbid (False) the per-position fused feed-forward; ``None`` picks the cheaper
    (same result up to rounding).
    """
    if bias not in BIAS_MODES:
        raise ValueError(f"bias must be one of {', '.join(BIAS_MODES)}, not {bias!r}.")
    layers, head = model_structure(model, "DecompX")
    check_activations(layers, head)
    input_ids = inputs.get("input_ids")
    attention_mask = inputs.get("attention_mask")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    with eval_mode(model):  # the recomputation assumes dropout is off
        if hidden_states is None or logits is None:
            out = model(**model_inputs(model, inputs), output_hidden_states=True)
            hidden_states, logits = out.hidden_states, out.logits
        if len(hidden_states) != len(layers) + 1:
            raise ValueError(f"Expected {len(layers) + 1} hidden states (embeddings + {len(layers)} layers), "
                             f"got {len(hidden_states)}.")
        num, length = attention_mask.shape
        device = hidden_states[0].device
        attention_mask = attention_mask.to(device)
        positions = (torch.zeros(num, dtype=torch.long, device=device) if positions is None
                     else positions.to(device).long())
        width = hidden_states[0].shape[-1]
        # Each row's length without trailing padding (keeping its pooled position inside).
        index = torch.arange(1, length + 1, device=device)
        lengths = torch.maximum((attention_mask.bool() * index).amax(-1), positions + 1).clamp(min=1).tolist()
        classes = logits.shape[-1]
        contributions = torch.zeros(num, length, classes, device=device)
        bias_part = torch.zeros(num, classes, device=device)
        for chunk in plan_chunks(lengths, width, chunk_size, max_elements):
            rows = torch.tensor(chunk, device=device)
            t = lengths[chunk[0]]  # the chunk's longest
            mask = attention_mask[rows]
            states = [h[rows, :t].float() for h in hidden_states]
            token_parts, bias_parts = _decompose_chunk(layers, head, states, mask[:, :t], positions[rows],
                                                       bias, max_elements, fused_ffn)
            contributions[rows, :t] = token_parts
            bias_part[rows] = bias_parts
    return DecompXOutput(contributions, bias_part, logits.float(), attention_mask, bias)


def _decompose_chunk(layers: list[list[Sublayer]], head: list[HeadStep], states: list[Tensor], mask: Tensor,
                     positions: Tensor, mode: str, budget: int, fused: bool | None) -> tuple[Tensor, Tensor]:
    batch, length, width = states[0].shape
    index = torch.arange(length, device=states[0].device)
    parts = states[0].new_zeros(batch, length, length + 1, width)  # (B, position, part, D); part T = bias
    parts[:, index, index] = states[0]  # each token starts as its own embedding-layer output
    for step, sublayers in enumerate(layers):
        hidden = states[step]  # the real forward's input to this step
        for i, sub in enumerate(sublayers):
            last = step == len(layers) - 1 and i == len(sublayers) - 1
            hidden, parts = propagate_layer(sub, hidden, parts, mask, mode, budget, fused,
                                            queries=positions.view(-1, 1) if last else None)
    rows = torch.arange(batch, device=parts.device)
    pooled_parts = parts[:, 0]  # (B, K, D): the last layer kept only the pooled positions
    del parts
    _, logit_parts = propagate_head(head, states[-1][rows, positions], pooled_parts, mode)
    # Padding tokens contribute nothing (their parts are exactly zero at real positions).
    token_parts = logit_parts[:, :length] * mask.unsqueeze(-1).to(logit_parts.dtype)
    return token_parts, logit_parts[:, length]


@register_method(
    "decompx",
    description="DecompX (Modarressi et al. 2023): each token's additive share of the target logit, its "
                "decomposition propagated through attention, LayerNorm, linearised FFN and the head "
                "(BERT-family encoders)",
    signed=True,
    needs_grad=False,
)
def decompx_scores(batch: Batch, chunk_size: int | None = None, bias: BiasMode = "absdot") -> Tensor:
    """Token contributions (B, T) to the target class logit (regression: to the output), from the batch's forward."""
    if batch.task not in ("classification", "regression"):
        raise UnsupportedModelError(
            f"DecompX explains sequence classification and regression; this is a {batch.task} model."
        )
    out = decompose(batch.model, batch.inputs, positions=batch.positions, hidden_states=batch.hidden_states,
                    logits=batch.logits, bias=bias, chunk_size=chunk_size)
    if batch.is_regression:
        return out.contributions[..., 0]
    index = batch.targets.to(out.contributions.device).view(-1, 1, 1).expand(-1, out.contributions.shape[1], 1)
    return out.contributions.gather(-1, index).squeeze(-1)
