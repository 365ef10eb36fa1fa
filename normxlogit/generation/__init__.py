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
- :mod:`~normxlogit.generation.cli`: the ``explain-generation`` command.
"""

from __future__ import annotations

from . import baselines  # noqa: F401 - registers the gradient and leave-one-out methods
from .cli import add_cli_parser, run_cli
from .explain import GenerationInvariantError, explain_generation
from .registry import list_generation_methods
from .result import GenerationAttribution

__all__ = ["GenerationAttribution", "GenerationInvariantError", "add_cli_parser", "explain_generation",
           "list_generation_methods", "run_cli"]
