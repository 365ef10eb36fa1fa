"""Attribution methods, one module per idea; importing this package registers every one of them.

- :mod:`.normxlogit`: ``normxlogit``, ``logat``, ``norm`` (one forward pass)
- :mod:`.gradients`: ``gradient_norm``, ``grad_x_input``, ``integrated_gradients`` (captum)
- :mod:`.random`: ``random`` (seeded per example)
- :mod:`.occlusion`: ``leave_one_out`` (and :func:`occlude`)
- :mod:`.value_zeroing`: ``value_zeroing`` (BERT-layout encoders)
- :mod:`.decompx`: ``decompx`` (post-LayerNorm BERT-family encoders; its propagation rules in :mod:`.decompx_rules`)
"""

from . import decompx, gradients, normxlogit, occlusion, random, value_zeroing

__all__ = ["decompx", "gradients", "normxlogit", "occlusion", "random", "value_zeroing"]
