"""``random``: a seeded random ranking, the floor every attribution method must beat.

Scores are a random permutation of ``1..n`` over a row's n positions, divided by n (so they lie in (0, 1] and have
no ties), drawn per example from ``(seed, example index)``: independent of batching and different for two sentences
of the same length (the authors reseeded with one seed per example, which gave every sentence of one length the
same order). The layer-wise evidence pipeline draws afresh per layer by folding the layer into the seed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core.registry import Batch, register_method


def random_generator(seed: int, index: int) -> torch.Generator:
    """The generator of example ``index`` under ``seed``: independent of batching and of other examples."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(index)) % (2**63))


@register_method("random", description="a random ranking, seeded per example (seed, example index)", signed=False)
def random_scores(batch: Batch) -> Tensor:
    lengths = batch.attention_mask.long().sum(-1).tolist()
    scores = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
    for row, (index, length) in enumerate(zip(batch.indices, lengths)):
        # A permutation: every order is equally likely and there are no ties.
        order = torch.randperm(length, generator=random_generator(batch.seed, index)).float() + 1
        scores[row, :length] = order / length
    return scores
