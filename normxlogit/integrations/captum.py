"""NormXLogit in captum's interfaces: LLM generations (:class:`NormXLogitLLMAttribution`) and classifiers
(:class:`NormXLogitAttribution`).

captum's ``LLMAttribution`` accepts only its own perturbation methods, so :class:`NormXLogitLLMAttribution`
implements its LLM interface itself: ``attribute(TextTokenInput(prompt, tokenizer), target=...)`` returns captum's
``LLMAttributionResult`` (``seq_attr``, ``token_attr``, ``input_tokens``, ``output_tokens``, ``output_probs``), so
``plot_token_attr`` and ``plot_seq_attr`` work. The scores are those of :func:`normxlogit.explain_generation` (one
forward pass, the same self-check), restricted as captum's LLM classes restrict theirs: each output token's row over
the prompt's interpretable tokens (``skip_tokens`` left out), earlier output tokens not included; ``seq_attr`` is the
sum of the rows, captum's convention. Only public captum names are used.

:class:`NormXLogitAttribution` is a captum ``Attribution`` for sequence classifiers (and regressors):
``attribute(input_ids, target=..., additional_forward_args=attention_mask)`` returns one score per token, shaped
like ``input_ids`` (B, T), the scores of :func:`normxlogit.explain`; its ``forward_func`` gives the class
probabilities, so ``captum.metrics.infidelity(attr.forward_func, ...)`` and ``sensitivity_max(attr.attribute,
...)`` take it with a token perturbation such as :func:`token_masking`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..core.explain import attribute as attribute_encoded
from ..core.inputs import Encoded, eval_mode, model_device, replacement_token_id
from ..generation.explain import attribute_sequence, build_result, token_pieces
from ..generation.prompts import continuation_ids, greedy_continuation
from ..generation.registry import get_generation_method
from ..generation.result import GenerationAttribution
from . import require

require("captum", "captum")

from captum.attr import Attribution, LLMAttributionResult, TextTokenInput  # noqa: E402

__all__ = ["NormXLogitAttribution", "NormXLogitLLMAttribution", "token_masking"]

#: captum's default generation arguments for ``target=None`` (greedy, 25 new tokens), as its LLM classes use.
DEFAULT_MAX_NEW_TOKENS = 25


class NormXLogitLLMAttribution(Attribution):
    """captum's LLM attribution interface for NormXLogit (``method="logat"`` or ``"norm"`` for its factors).

    ``layer``, ``norm_source`` and ``head`` are those of :func:`normxlogit.explain_generation`; the last run's
    :class:`~normxlogit.GenerationAttribution` (the whole generated x source grid) is kept as ``self.generation``.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, method: str = "normxlogit",
                 layer: int = -1, norm_source: str = "embedding_output",
                 head: Callable[[Tensor], Tensor] | None = None) -> None:
        super().__init__(model)
        self.model, self.tokenizer = model, tokenizer
        self.method, self.layer, self.norm_source, self.head = method, layer, norm_source, head
        self.generation: GenerationAttribution | None = None

    @staticmethod
    def has_convergence_delta() -> bool:
        return False

    def attribute(self, inp: TextTokenInput, target: str | Tensor | None = None,  # type: ignore[override]
                  gen_args: dict[str, Any] | None = None, **kwargs: Any) -> LLMAttributionResult:
        """Attribute ``target`` (text, tokenised without special tokens, or token ids) or, with ``target=None``, the
        greedy continuation (``gen_args={"max_new_tokens": n}``, default 25) to the prompt's tokens."""
        if not isinstance(inp, TextTokenInput):
            raise TypeError(f"inp must be a captum TextTokenInput(prompt, tokenizer), not {type(inp).__name__}.")
        if target is not None and gen_args is not None:
            raise ValueError("gen_args are for generating the target; pass either target or gen_args.")
        gen_args = dict(gen_args or {})
        max_new = int(gen_args.pop("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        if gen_args.pop("do_sample", False) or any(gen_args.get(k) is not None for k in ("temperature", "top_p")):
            raise ValueError("NormXLogitLLMAttribution generates greedily; pass a sampled continuation as target.")
        if gen_args:
            raise ValueError(f"Unsupported gen_args {sorted(gen_args)}: only max_new_tokens (greedy decoding).")
        prompt_ids = inp.inp_tensor[0].tolist()
        vocab = self.model.get_input_embeddings().weight.shape[0]
        if target is None:
            with eval_mode(self.model), torch.no_grad():
                ids = torch.tensor([prompt_ids], device=model_device(self.model))
                generated = greedy_continuation(self.model, self.tokenizer, ids, max_new)
        else:
            generated = continuation_ids(self.tokenizer, target, vocab)  # text without special tokens, or ids
        batch, scores, gap = attribute_sequence(self.model, self.tokenizer, prompt_ids + generated, len(prompt_ids),
                                                method=self.method, layer=self.layer, norm_source=self.norm_source,
                                                head=self.head, **kwargs)
        g = build_result(batch, scores, get_generation_method(self.method), self.tokenizer.decode(prompt_ids), gap,
                         chat=False, options=kwargs, generated=target is None)
        self.generation = g
        token_attr = torch.from_numpy(np.ascontiguousarray(g.scores[:, : g.prompt_length]))
        if inp.itp_mask is not None:
            token_attr = token_attr[:, inp.itp_mask[0].cpu()]
        return LLMAttributionResult(
            seq_attr=token_attr.sum(0),
            token_attr=token_attr,
            input_tokens=inp.values,
            output_tokens=token_pieces(self.tokenizer, g.source_ids[g.prompt_length:]),
            output_probs=torch.from_numpy(np.asarray(g.target_probs)),
            inp=inp,
        )


class NormXLogitAttribution(Attribution):
    """A captum ``Attribution`` for sequence classifiers: one score per token, the scores of :func:`nx.explain`.

    ``forward_func(input_ids, attention_mask=None)`` returns the class probabilities (regression: the prediction),
    the function captum's metrics need. ``method``: any :func:`normxlogit.list_methods` name; ``options`` go to it.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, method: str = "normxlogit",
                 **options: Any) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.method, self.options = method, options
        super().__init__(self.probabilities)

    @staticmethod
    def has_convergence_delta() -> bool:
        return False

    def probabilities(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """The model's class probabilities (B, C) (a regressor's prediction (B, 1)): captum's ``forward_func``."""
        device = model_device(self.model)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        with eval_mode(self.model), torch.no_grad():
            logits = self.model(input_ids=input_ids.long().to(device), attention_mask=mask.long().to(device)).logits
        return logits if logits.shape[-1] == 1 else logits.softmax(-1)

    def attribute(self, inputs: Tensor, target: int | list[int] | Tensor | None = None,  # type: ignore[override]
                  additional_forward_args: Tensor | tuple | None = None) -> Tensor:
        """Scores (B, T) for ``inputs`` = token ids (B, T) with special tokens, as the tokenizer makes them;
        ``additional_forward_args``: the attention mask (B, T) (padding scores 0). ``target``: a class per row
        (or one for all); None explains the predicted class. A 1-tuple ``(input_ids,)`` gives a 1-tuple back, as
        captum's methods do (its metrics call them so)."""
        if isinstance(inputs, tuple):
            if len(inputs) != 1:
                raise ValueError(f"inputs is one tensor of token ids, got a tuple of {len(inputs)}.")
            return (self.attribute(inputs[0], target, additional_forward_args),)
        if not isinstance(inputs, Tensor) or inputs.dim() != 2 or inputs.is_floating_point():
            raise TypeError("inputs must be token ids, an integer tensor (batch, tokens): tokenizer(texts, "
                            "return_tensors='pt', padding=True)['input_ids'].")
        mask = additional_forward_args[0] if isinstance(additional_forward_args, tuple) else additional_forward_args
        mask = torch.ones_like(inputs) if mask is None else mask.to(inputs.device)
        if mask.shape != inputs.shape:
            raise ValueError(f"The attention mask {tuple(mask.shape)} must have the shape of inputs "
                             f"{tuple(inputs.shape)}.")
        keep = mask.bool().cpu()
        specials = set(self.tokenizer.all_special_ids) - {self.tokenizer.mask_token_id}
        rows = []
        for ids in (inputs.cpu()[b][keep[b]].tolist() for b in range(len(inputs))):
            if not ids:
                raise ValueError("A row of inputs has no token under its attention mask.")
            rows.append({"input_ids": ids, "attention_mask": [1] * len(ids),
                         "special_tokens_mask": [int(i in specials) for i in ids]})
        encoded = Encoded([self.tokenizer.decode(r["input_ids"]) for r in rows], rows, False, inputs.shape[1])
        if isinstance(target, Tensor):
            target = target.reshape(-1).tolist()
            target = target[0] if len(target) == 1 else target
        attrs = attribute_encoded(self.model, self.tokenizer, encoded, self.method, target=target, **self.options)
        out = torch.zeros(inputs.shape, dtype=torch.float32, device=inputs.device)
        for b, a in enumerate(attrs):
            out[b, keep[b].to(inputs.device)] = torch.as_tensor(np.nan_to_num(a.scores), dtype=torch.float32,
                                                                device=inputs.device)
        return out


def token_masking(tokenizer: PreTrainedTokenizerBase, p: float = 0.2, *, seed: int = 0, replacement: str = "auto",
                  indicator: bool = True) -> Callable[..., Any]:
    """A token perturbation for captum's metrics: each non-special token replaced (mask, else unk or pad) with
    probability ``p``. ``indicator=True`` (for ``infidelity``) returns (the replaced-token indicator, the perturbed
    ids); ``indicator=False`` (for ``sensitivity_max``) the perturbed ids alone."""
    if not 0 < p <= 1:
        raise ValueError(f"p must be a probability in (0, 1], got {p}.")
    token = replacement_token_id(tokenizer, replacement)
    if token is None:
        raise ValueError(f"This tokenizer has no token for replacement={replacement!r}; pass 'unk' or 'pad'.")
    specials = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    generator = torch.Generator().manual_seed(seed)

    def perturb(inputs: Tensor, *args: Any) -> Any:  # noqa: ARG001 - captum also passes baselines or a radius
        content = ~torch.isin(inputs.cpu(), specials)
        hit = (torch.rand(inputs.shape, generator=generator) < p) & content
        perturbed = inputs.masked_fill(hit.to(inputs.device), token)
        return (hit.float().to(inputs.device), perturbed) if indicator else perturbed

    return perturb
