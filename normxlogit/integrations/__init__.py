"""NormXLogit inside the attribution libraries people already use: one module per library, each imported on demand.

- :mod:`normxlogit.integrations.inseq`: ``inseq.load_model(model, "normxlogit")`` (and ``"logat"``, ``"norm"``)
  after ``import normxlogit.integrations.inseq`` (``pip install normxlogit[inseq]``);
- :mod:`normxlogit.integrations.captum`: :class:`NormXLogitLLMAttribution` (captum's ``LLMAttributionResult`` for
  generations) and :class:`NormXLogitAttribution` (a captum ``Attribution`` for classifiers); captum is a dependency;
- :mod:`normxlogit.integrations.ferret`: ferret explainers for ``ferret.Benchmark`` (``pip install
  normxlogit[ferret]``, see the README for the CPU install).

Nothing here is imported by ``import normxlogit``: the package works without the optional libraries, and each module
says which extra to install when its library is missing.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]


def require(module: str, extra: str, *, hint: str = "") -> ModuleType:
    """Import ``module`` or raise an ImportError that names the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"normxlogit.integrations needs {module!r} here ({err}). Install it with "
            f"`pip install 'normxlogit[{extra}]'`{hint}."
        ) from err
