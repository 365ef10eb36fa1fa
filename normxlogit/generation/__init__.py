"""Attributing a causal LM's generation: every generated token to every earlier token, from one forward pass.

The modules, one idea each:

- :mod:`~normxlogit.generation.explain`: :func:`explain_generation`, the one-forward NormXLogit / LogAt / norm
  methods and the run-time invariant (:class:`GenerationInvariantError`);
- :mod:`~normxlogit.generation.baselines`: gradient norm, Gradient x Input, Integrated Gradients and leave-one-out
  per generated token;
- :mod:`~normxlogit.generation.registry`: the :class:`~normxlogit.generation.registry.GenerationBatch` every method
  reads and the method registry;
- :mod:`~normxlogit.generation.reading`: the model's logits at a few positions and its head against a few
  unembedding rows;
- :mod:`~normxlogit.generation.prompts`: the prompt (plain or chat), the continuation (greedy or given), checks;
- :mod:`~normxlogit.generation.result`: :class:`GenerationAttribution` (views, HTML, strict JSON);
- :mod:`~normxlogit.generation.attention`: the attention baseline (mean attention from the answer);
- :mod:`~normxlogit.generation.sources`: sources of a prompt (sentences, strings, spans), their tokens and scores;
- :mod:`~normxlogit.generation.citations`: the answer's parts and the citation HTML;
- :mod:`~normxlogit.generation.ablation`: the answer's teacher-forced log-probability with prompt tokens deleted;
- :mod:`~normxlogit.generation.faithfulness`: :func:`evaluate_generation` (top-k drop, LDS, comprehensiveness,
  sufficiency) and :func:`evaluate_generation_methods`; :mod:`~normxlogit.generation.report` their results;
- :mod:`~normxlogit.generation.contextcite`: ContextCite through its package, as a peer;
- :mod:`~normxlogit.generation.cli`: the ``explain-generation`` and ``cite`` commands.
"""

from __future__ import annotations

from . import attention, baselines  # noqa: F401 - register the attention, gradient and leave-one-out methods
from .cli import add_cli_parser, run_cli
from .explain import GenerationInvariantError, explain_generation
from .faithfulness import evaluate_generation, evaluate_generation_methods, list_evaluation_methods
from .registry import list_generation_methods
from .report import GenerationFaithfulness, GenerationReport
from .result import GenerationAttribution
from .sources import sentence_spans

__all__ = ["GenerationAttribution", "GenerationFaithfulness", "GenerationInvariantError", "GenerationReport",
           "add_cli_parser", "evaluate_generation", "evaluate_generation_methods", "explain_generation",
           "list_evaluation_methods", "list_generation_methods", "run_cli", "sentence_spans"]
