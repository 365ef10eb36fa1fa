"""NormXLogit, LogAt and the embedding norm as inseq attribution methods.

    import inseq
    import normxlogit.integrations.inseq  # registers "normxlogit", "logat" and "norm" with inseq
    model = inseq.load_model(hf_model, "normxlogit", tokenizer=hf_tokenizer)
    out = model.attribute("What is the capital of France?", generation_args={"max_new_tokens": 16})
    out.show()

The methods subclass inseq's internals-attribution registry (as its ``attention`` method does) and are *final-step*
methods: inseq calls them once, on the last generation step, and splits the one (source x step) grid into its
per-step outputs. Each call runs ONE forward pass over the whole sequence through
:func:`normxlogit.generation.explain.attribute_sequence`, the core of :func:`normxlogit.explain_generation`, so the
scores are the package's own, and the self-check (the head read on the position before each generated token must
reproduce the model's own logit; :class:`~normxlogit.GenerationInvariantError`) runs on every call. ``layer=``
(the logit lens), ``norm_source=`` and ``head=`` are attribution arguments: pass them to ``inseq.load_model`` or
to ``model.attribute``. Decoder-only (causal) models only, as in ``explain_generation``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..generation.explain import attribute_sequence
from . import require

require("inseq", "inseq", hint=" (on a CPU, see the README: install torch's CPU wheel first)")

from inseq.attr.feat.internals_attribution import InternalsAttributionRegistry  # noqa: E402
from inseq.data import CoarseFeatureAttributionStepOutput  # noqa: E402
from inseq.utils.typing import InseqAttribution  # noqa: E402

__all__ = ["LogAtInseqAttribution", "NormInseqAttribution", "NormXLogitInseqAttribution", "inseq_scores"]


class _OnePass(InseqAttribution):
    """The captum-style ``attribute`` inseq calls on the final step: the (batch, source, step) score grid."""

    def __init__(self, forward_func: Any, method: str, options: dict[str, Any]) -> None:
        super().__init__(forward_func)
        self.method = method
        self.options = options  # given to inseq.load_model; model.attribute(..., layer=...) overrides them
        self.prompt_length: int | None = None  # set by the registry class before each run (inseq's attr_pos_start)

    @staticmethod
    def has_convergence_delta() -> bool:
        return False

    def attribute(
        self,
        inputs: Any,  # noqa: ARG002 - captum's signature; the ids come in additional_forward_args
        additional_forward_args: tuple,
        layer: int | None = None,
        norm_source: str | None = None,
        head: Any = None,
    ) -> CoarseFeatureAttributionStepOutput:
        """Scores (B, L, L) for the L prefix positions of inseq's last step: ``[b, i, p - 1]`` is source ``i``'s
        score for the token at position ``p`` (inseq's layout; NaN where ``i`` is not before ``p``)."""
        input_ids, target_ids, _, attention_mask = additional_forward_args[:4]
        given = {"layer": layer, "norm_source": norm_source, "head": head}
        options = {**self.options, **{k: v for k, v in given.items() if v is not None}}
        wrapper = self.forward_func
        if wrapper.is_encoder_decoder:
            raise ValueError(f"The {self.method!r} method attributes decoder-only (causal) LMs; this inseq model is "
                             "an encoder-decoder. Use a *ForCausalLM model.")
        batch, length = input_ids.shape
        grid = torch.full((batch, length, length), float("nan"))
        targets = target_ids.reshape(batch, -1)[:, 0]
        start = length if self.prompt_length is None else self.prompt_length
        for b in range(batch):  # one forward pass per sequence: inseq pads on the left, the package reads one row
            mask = attention_mask[b].bool()
            front = int((~mask).int().cumprod(0).sum())  # left padding
            if not bool(mask[front:].all()):
                raise ValueError("The normxlogit inseq methods read left-padded batches only; attribute with "
                                 "batch_size=1.")
            ids = input_ids[b, front:].tolist() + [int(targets[b])]
            prompt = max(1, min(start - front, len(ids) - 1))
            _, scores, _ = attribute_sequence(wrapper.model, wrapper.tokenizer, ids, prompt, method=self.method,
                                              **options)
            steps = torch.arange(prompt, len(ids)) - 1 + front  # the column of each attributed token
            grid[b, front:, steps] = torch.from_numpy(scores).T[: length - front]
        return CoarseFeatureAttributionStepOutput(source_attributions=None, target_attributions=grid)


class NormXLogitInseqAttribution(InternalsAttributionRegistry):
    """NormXLogit: the input-embedding norm of each source token times the head's logit for the generated token
    read on that token's final hidden state (``layer=`` for another layer).

    A final-step, output-agnostic method with no inseq forward pass of its own; LogAt and norm subclass it.
    """

    method_name = "normxlogit"

    def __init__(self, attribution_model: Any, layer: int = -1, norm_source: str = "embedding_output",
                 head: Any = None) -> None:
        super().__init__(attribution_model)
        self.use_predicted_target = False  # reads the sequence, not a gradient of an attributed function
        self.is_final_step_method = True  # one call for the whole generation
        options = {"layer": layer, "norm_source": norm_source, "head": head}
        self.method = _OnePass(attribution_model, self.method_name, options)

    def attribute(self, batch: Any, attributed_fn: Any, attr_pos_start: int | None = None, *args: Any,
                  **kwargs: Any) -> Any:
        self.method.prompt_length = attr_pos_start  # where the generated tokens start (the prompt's length)
        return super().attribute(batch, attributed_fn, attr_pos_start, *args, **kwargs)

    def attribute_step(self, attribute_fn_main_args: dict[str, Any],
                       attribution_args: dict[str, Any]) -> CoarseFeatureAttributionStepOutput:
        return self.method.attribute(**attribute_fn_main_args, **attribution_args)


class LogAtInseqAttribution(NormXLogitInseqAttribution):
    """LogAt: the head's logit for each generated token read on every earlier position's hidden state."""

    method_name = "logat"


class NormInseqAttribution(NormXLogitInseqAttribution):
    """The input-embedding norm of each source token (the same for every generated token)."""

    method_name = "norm"


def inseq_scores(output: Any, index: int = 0) -> tuple[list[int], int, "torch.Tensor"]:
    """One sequence of an inseq ``FeatureAttributionOutput`` in the package's layout: the token ids, the first
    generated position and the (generated x source) scores, as :class:`~normxlogit.GenerationAttribution` has them."""
    seq = output.sequence_attributions[index]
    ids = [t.id for t in seq.target]
    start = seq.attr_pos_start
    scores = seq.target_attributions.T  # inseq: (source, step); the package: (generated, source)
    return ids, start, scores[: len(ids) - start, : len(ids)]
