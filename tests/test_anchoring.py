"""Chapter 5's sign analysis (normxlogit.studies.anchoring) on synthetic layer-wise scores with known norms."""

from __future__ import annotations

import numpy as np
import pytest

from normxlogit.evaluation.alignment import LayerwiseScores, average_precision
from normxlogit.studies import anchoring

N, L, T = 60, 3, 8


@pytest.fixture()
def synthetic() -> tuple[LayerwiseScores, np.ndarray]:
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, T + 1, N)
    inside = np.arange(T)[None] < lengths[:, None]
    norms = rng.uniform(0.5, 2.0, (N, T))
    logat = rng.normal(0.0, 2.0, (N, L, T))
    logat = np.where(inside[:, None], logat, np.nan)
    exclude = ~inside
    exclude[:, 0] = True  # [CLS]
    exclude[np.arange(N), lengths - 1] = True  # [SEP]
    exclude[:, 2] = True  # the masked target
    cue = np.zeros((N, T), bool)
    cue[np.arange(N), np.where(lengths > 5, 3, 1)] = True
    scores = {"logat": logat.astype(np.float32), "normxlogit": (norms[:, None] * logat).astype(np.float32)}
    data = LayerwiseScores(scores=scores, layers=list(range(1, L + 1)), cue_mask=cue, exclude_mask=exclude,
                           paradigms=np.array(["p"] * N), correct=np.ones(N, bool), lengths=lengths)
    return data, np.where(inside, norms, np.nan)


def test_input_norms_are_recovered(synthetic):
    data, norms = synthetic
    np.testing.assert_allclose(anchoring.input_norms(data), norms, rtol=1e-5)


def test_negative_logat_matches_a_plain_loop(synthetic):
    data, _ = synthetic
    table = anchoring.negative_logat(data)
    for k, layer in enumerate(data.layers):
        tokens = negative = cue_pairs = every = 0
        for i in range(N):
            ranked = [t for t in range(T) if not data.exclude_mask[i, t]]
            values = [data.scores["logat"][i, k, t] for t in ranked]
            tokens += len(ranked)
            negative += sum(v < 0 for v in values)
            cue_pairs += any(data.scores["logat"][i, k, t] < 0 for t in ranked if data.cue_mask[i, t])
            every += all(v < 0 for v in values)
        row = table.loc[layer]
        assert row["ranked tokens with LogAt < 0"] == pytest.approx(negative / tokens)
        assert row["pairs whose cue has LogAt < 0"] == pytest.approx(cue_pairs / N)
        assert row["pairs with every LogAt < 0"] == pytest.approx(every / N)


def test_ap_by_cue_sign_splits_the_pairs(synthetic):
    data, _ = synthetic
    table = anchoring.ap_by_cue_sign(data)
    for (layer, method), g in table.groupby(["layer", "method"]):
        assert g.pairs.sum() == N
        ap = average_precision(data.scores[method][:, layer - 1], data.cue_mask, data.exclude_mask)
        cue_logat = data.scores["logat"][:, layer - 1][data.cue_mask]
        for sign, mask in (("cue LogAt < 0", cue_logat < 0), ("cue LogAt ≥ 0", cue_logat >= 0)):
            assert g.set_index("sign").loc[sign, "AP"] == pytest.approx(ap[mask].mean())


def test_shifts_move_normxlogit_between_the_norm_and_its_reverse(synthetic):
    data, norms = synthetic
    table = anchoring.shifted_normxlogit_ap(data, [-1e6, 0.0, 1e6]).set_index(["shift", "layer"])
    for k, layer in enumerate(data.layers):
        direct = np.nanmean(average_precision(data.scores["normxlogit"][:, k], data.cue_mask, data.exclude_mask))
        assert table.loc[(0.0, layer), "NormXLogit AP"] == pytest.approx(direct, rel=1e-6)
        by_norm = np.nanmean(average_precision(norms, data.cue_mask, data.exclude_mask))
        by_reverse = np.nanmean(average_precision(-norms, data.cue_mask, data.exclude_mask))
        assert table.loc[(1e6, layer), "NormXLogit AP"] == pytest.approx(by_norm)
        assert table.loc[(-1e6, layer), "NormXLogit AP"] == pytest.approx(by_reverse)
        logat = np.nanmean(average_precision(data.scores["logat"][:, k], data.cue_mask, data.exclude_mask))
        assert table.xs(layer, level="layer")["LogAt AP"].tolist() == pytest.approx([logat] * 3)  # shift-free
