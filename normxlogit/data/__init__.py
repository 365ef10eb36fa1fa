"""Data: the benchmarks (SST-2, STS-B, BLiMP loaders) and the BLiMP evidence annotation built on them.

- :mod:`.benchmarks`: ``load_sst2``, ``load_stsb``, ``load_blimp`` (a local copy, ``$NORMXLOGIT_DATA``,
  ``../shared/data``, then the Hub)
- :mod:`.blimp`: cue annotation rules for BLiMP's agreement paradigms
- :mod:`.evidence`: the annotated pairs as masked-LM input (``build_dataset``, ``split_halves``, ``evidence_data``)
- :mod:`.context_suites`: generated context tasks for attributing a generation to its sources (``make_suite``,
  ``TASKS``, ``USABLE_TASKS``; planted-evidence cases record the source the answer depends on)
"""

from .benchmarks import (BLIMP_PAPER_PARADIGMS, DataNotFoundError, data_dirs, list_blimp_paradigms, load_blimp,
                         load_sst2, load_stsb)

__all__ = ["BLIMP_PAPER_PARADIGMS", "DataNotFoundError", "data_dirs", "list_blimp_paradigms", "load_blimp",
           "load_sst2", "load_stsb"]
