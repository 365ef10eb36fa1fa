"""The attribution core: reading heads (:mod:`.heads`), preparing inputs (:mod:`.inputs`), the method registry and
the batch every method reads (:mod:`.registry`), the one forward pass and ``explain`` (:mod:`.explain`), and the
result object (:mod:`.attribution`)."""

from . import attribution, explain, heads, inputs, registry

__all__ = ["attribution", "explain", "heads", "inputs", "registry"]
