"""Teacher-forced log-probabilities of an answer when prompt tokens are deleted: the measurement behind every
generation faithfulness metric (:mod:`.faithfulness`) and behind source-level leave-one-out.

Removing a source deletes the prompt tokens it covers (:mod:`.sources`): the ids are dropped, never re-tokenised
text, and later tokens move up. Each ablated prompt is followed by the same answer ids and read in one forward
pass: ``log p(answer | kept prompt) = sum_t log p(y_t | kept prompt, y_<t)``.

:class:`AnswerScorer` batches and deduplicates: identical kept-token masks (the full prompt, an ablation drawn
twice, the same deletion reached by two methods or two metrics) are computed once and remembered, the rows run
length-sorted and right-padded (a decoder attends only backwards, so padding after the answer changes nothing
before it), and the head is applied only at the G positions that predict the answer.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..core.inputs import eval_mode, model_device, padded_batches
from ..evaluation.faithfulness import BATCH_TOKENS

__all__ = ["AnswerScorer", "keep_without_sources"]


def keep_without_sources(masks: np.ndarray, positions: Sequence[Sequence[int]], prompt_length: int) -> np.ndarray:
    """Kept-token masks (N, P) from kept-source masks (N, S): the tokens of every dropped source are deleted."""
    masks = np.asarray(masks, dtype=bool).reshape(-1, len(positions))
    member = np.zeros((len(positions), prompt_length), dtype=bool)
    for j, pos in enumerate(positions):
        member[j, list(pos)] = True
    return ~((~masks).astype(np.int64) @ member.astype(np.int64)).astype(bool)


class AnswerScorer:
    """``log p(answer | prompt with some tokens deleted)`` for one prompt and one answer, batched and cached.

    ``prompt_ids`` (P) and ``answer_ids`` (G) as the model read them. :meth:`token_logprobs` takes kept-token masks
    (N, P) and returns (N, G); :meth:`logprobs` their sums. When every prompt token is deleted the answer follows the
    tokenizer's BOS token (else its EOS token): a decoder needs one token before the first it predicts, and a
    document start is what it sees when there is nothing. ``computed`` counts the rows that ran through the model.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt_ids: Sequence[int],
                 answer_ids: Sequence[int], *, batch_tokens: int | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.prompt = np.asarray(prompt_ids, dtype=np.int64)
        self.answer = np.asarray(answer_ids, dtype=np.int64)
        if self.prompt.size == 0 or self.answer.size == 0:
            raise ValueError("AnswerScorer needs a prompt and an answer of at least one token each.")
        device = model_device(model)
        self.batch_tokens = batch_tokens or BATCH_TOKENS["cpu" if device.type == "cpu" else "accelerator"]
        if self.batch_tokens < 1:
            raise ValueError(f"batch_tokens must be at least 1, got {batch_tokens}.")
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self.empty_context = [int(start)] if start is not None else [int(self.prompt[0])]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.empty_context[0]
        self.pads = {"input_ids": int(pad), "attention_mask": 0}
        self.cache: dict[bytes, np.ndarray] = {}
        self.computed = 0

    def fresh(self) -> "AnswerScorer":
        """The same scorer with nothing remembered (to time a method by the passes it needs itself)."""
        other = copy.copy(self)
        other.cache, other.computed = {}, 0
        return other

    @property
    def prompt_length(self) -> int:
        return len(self.prompt)

    def full(self) -> float:
        """The answer's log-probability after the whole prompt."""
        return float(self.logprobs(np.ones((1, len(self.prompt)), dtype=bool))[0])

    def logprobs(self, keep: np.ndarray) -> np.ndarray:
        """``log p(answer | kept tokens)`` (N,) for kept-token masks (N, P)."""
        return self.token_logprobs(keep).sum(1)

    def token_logprobs(self, keep: np.ndarray) -> np.ndarray:
        """Each answer token's log-probability (N, G) for kept-token masks (N, P); each distinct mask runs once."""
        keep = np.asarray(keep, dtype=bool)
        if keep.ndim != 2 or keep.shape[1] != len(self.prompt):
            raise ValueError(f"keep must be (N, {len(self.prompt)}) booleans, got shape {keep.shape}.")
        keys = [np.packbits(row).tobytes() for row in keep]
        todo: dict[bytes, np.ndarray] = {}
        for key, row in zip(keys, keep):
            if key not in self.cache and key not in todo:
                todo[key] = row
        if todo:
            self._run(list(todo), list(todo.values()))
        return np.stack([self.cache[key] for key in keys]) if keys else np.zeros((0, len(self.answer)))

    def _run(self, keys: list[bytes], masks: list[np.ndarray]) -> None:
        G = len(self.answer)
        contexts = [self.prompt[m].tolist() or self.empty_context for m in masks]
        rows = [{"input_ids": c + self.answer.tolist(), "attention_mask": [1] * (len(c) + G)} for c in contexts]
        model = self.model
        decoder = model.get_output_embeddings()
        cache = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
        answer = torch.as_tensor(self.answer)
        with eval_mode(model), torch.inference_mode():
            for idx, batch, _ in padded_batches(self.pads, rows, model_device(model), batch_tokens=self.batch_tokens):
                # Row b's answer token t is predicted at position len(context_b) - 1 + t.
                first = torch.as_tensor([len(contexts[i]) - 1 for i in idx])
                where = first[:, None] + torch.arange(G)[None, :]  # (B, G)
                rowsel = torch.arange(len(idx))[:, None].expand(-1, G)
                shape = tuple(batch["input_ids"].shape)

                def pick(module, args):  # hand the output embedding only the G positions each row needs
                    x = args[0]
                    if x.dim() == 3 and tuple(x.shape[:2]) == shape:
                        return (x[rowsel.to(x.device), where.to(x.device)],) + tuple(args[1:])
                    return None

                handle = decoder.register_forward_pre_hook(pick) if isinstance(decoder, nn.Linear) else None
                try:
                    logits = model(**batch, **cache).logits
                finally:
                    if handle is not None:
                        handle.remove()
                if logits.shape[1] != G or handle is None:  # the hook did not apply: gather from the full logits
                    logits = logits[rowsel.to(logits.device), where.to(logits.device)]
                logp = logits.float().log_softmax(-1)
                picked = logp.gather(-1, answer.to(logp.device)[None, :, None].expand(len(idx), -1, 1))[..., 0]
                values = picked.double().cpu().numpy()
                for b, i in enumerate(idx):
                    self.cache[keys[i]] = values[b]
                self.computed += len(idx)
