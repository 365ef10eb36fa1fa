"""ContextCite (Cohen-Wang et al. 2024) as a peer method, through its own PyPI package ``context-cite``.

ContextCite samples random ablations of the context's sources (each kept with probability 0.5), measures the
answer's logit-probability under each, and fits a sparse linear surrogate (LASSO); the surrogate's weights are the
sources' scores. This module runs the package's own code for all of that (its mask sampling, its batched
log-probability pass and :class:`context_cite.solver.LassoRegression`) and supplies only what must be shared for a
fair comparison:

- the sources: a partitioner (:class:`context_cite.context_partitioner.BaseContextPartitioner`) holding exactly our
  sources, so ContextCite's default sentence splitter (NLTK's, whose data it downloads at import, which fails
  offline) is never used; the download is skipped at import;
- the model, the tokenizer and the prompt formatting: the already-loaded model and our prompt (plain or chat), with
  a source removed by the same token deletion as everywhere else (:mod:`.ablation`), instead of ContextCite's
  re-tokenised template text; and the answer being explained (generated once, or given).

``context-cite`` is an optional extra (``pip install 'normxlogit[contextcite]'``), imported on first use. The tested
range is :data:`CONTEXTCITE_VERSIONS`: the adapter overrides two of ``ContextCiter``'s input hooks
(``_get_prompt_ids``, ``_response_ids``) and calls its fitting step for a token range, which are not public API.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import warnings
from collections.abc import Sequence
from typing import Any
from unittest import mock

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .ablation import AnswerScorer, keep_without_sources
from .sources import PromptSources

__all__ = ["CONTEXTCITE_VERSIONS", "contextcite_scores", "load_contextcite"]

#: The versions of ``context-cite`` this adapter is tested with (also the ``contextcite`` extra's range).
CONTEXTCITE_VERSIONS = ">=0.0.4,<0.1"


def load_contextcite() -> Any:
    """The ``context_cite`` package, imported without its NLTK download; a clear error when it is missing."""
    try:
        import nltk
    except ImportError:
        nltk = None
    patch = mock.patch.object(nltk, "download", lambda *a, **k: False) if nltk else contextlib.nullcontext()
    try:
        with patch:
            return importlib.import_module("context_cite")
    except ImportError as err:
        raise ImportError(
            f"The 'contextcite' method needs the optional package context-cite{CONTEXTCITE_VERSIONS} ({err}). "
            f"Install it with: pip install 'normxlogit[contextcite]' (or pip install 'context-cite{CONTEXTCITE_VERSIONS}')."
        ) from None


def _classes(cc: Any) -> tuple[type, type]:
    from context_cite.context_partitioner import BaseContextPartitioner

    class SourcesPartitioner(BaseContextPartitioner):
        """Our sources as ContextCite's partitioner: character spans of the prompt."""

        def __init__(self, context: str, spans: Sequence[tuple[int, int]]) -> None:
            super().__init__(context)
            self.spans = [tuple(s) for s in spans]

        @property
        def num_sources(self) -> int:
            return len(self.spans)

        def split_context(self) -> None:  # the sources are given
            return None

        def get_source(self, index: int) -> str:
            a, b = self.spans[index]
            return self.context[a:b]

        def get_context(self, mask: np.ndarray | None = None) -> str:
            """The prompt's text without the sources whose mask entry is False."""
            keep = np.ones(len(self.spans), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
            text, cursor = [], 0
            for (a, b), kept in sorted(zip(self.spans, keep)):
                text.append(self.context[cursor:a] + (self.context[a:b] if kept else ""))
                cursor = b
            return "".join(text) + self.context[cursor:]

    class SharedCiter(cc.ContextCiter):
        """ContextCiter reading our token rows: the prompt with sources deleted, then the answer's ids."""

        def __init__(self, *args: Any, ablated_ids: Any, response_ids: Sequence[int], **kwargs: Any) -> None:
            self._ablated_ids = ablated_ids
            self._answer = list(response_ids)
            super().__init__(*args, **kwargs)

        def _get_prompt_ids(self, mask: np.ndarray | None = None, return_prompt: bool = False):
            ids = self._ablated_ids(mask)
            return (ids, self.tokenizer.decode(ids)) if return_prompt else ids

        @property
        def _response_ids(self) -> list[int]:
            return self._answer

    return SourcesPartitioner, SharedCiter


def contextcite_scores(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str,
                       located: PromptSources, scorer: AnswerScorer, *, n_ablations: int = 32,
                       keep_prob: float = 0.5, batch_size: int = 1, lasso_alpha: float = 0.01,
                       steps: tuple[int, int] | None = None) -> np.ndarray:
    """ContextCite's source scores (S,) for the answer ``scorer`` holds (or its generated tokens ``steps`` =
    (first, end)), from ``n_ablations`` of its own random ablations and its LASSO surrogate.

    ``batch_size`` > 1 makes ContextCite pad on the left (its requirement), which shifts absolute positions (GPT-2);
    its default, 1, is exact for every model.
    """
    cc = load_contextcite()
    from context_cite import utils
    from context_cite.solver import LassoRegression

    if not isinstance(n_ablations, (int, np.integer)) or n_ablations < 2:
        raise ValueError(f"ContextCite needs n_ablations >= 2 to fit its surrogate, got {n_ablations!r}.")
    partitioner_cls, citer_cls = _classes(cc)
    tok = tokenizer
    if tokenizer.pad_token is None or (batch_size > 1 and tokenizer.padding_side != "left"):
        tok = copy.deepcopy(tokenizer)  # ContextCiter sets a pad token (and we a padding side): not on the caller's
        tok.padding_side = "left" if batch_size > 1 else tok.padding_side
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token

    def ablated_ids(mask: np.ndarray | None) -> list[int]:
        if mask is None:
            return scorer.prompt.tolist()
        keep = keep_without_sources(np.asarray(mask, dtype=bool)[None], located.positions, scorer.prompt_length)[0]
        return scorer.prompt[keep].tolist() or list(scorer.empty_context)

    citer = citer_cls(model, tok, prompt, "", num_ablations=int(n_ablations), ablation_keep_prob=keep_prob,
                      batch_size=batch_size, solver=LassoRegression(lasso_alpha), prompt_template="{context}",
                      partitioner=partitioner_cls(prompt, located.spans), ablated_ids=ablated_ids,
                      response_ids=scorer.answer.tolist())
    first, end = steps if steps is not None else (0, len(scorer.answer))
    with warnings.catch_warnings(), mock.patch.object(utils, "tqdm", lambda it, **kw: it):
        warnings.simplefilter("ignore")  # torch.cuda.amp.autocast's deprecation, on every batch
        weights, _bias = citer._get_attributions_for_ids_range(first, end)
    return np.asarray(weights, dtype=np.float64)
