"""NormXLogit, LogAt and the embedding norm as ferret explainers, and ferret's AOPC read off :func:`nx.evaluate`.

    import ferret
    from normxlogit.integrations.ferret import NormXLogitExplainer
    bench = ferret.Benchmark(model, tokenizer, explainers=[NormXLogitExplainer(model, tokenizer)])
    explanations = bench.explain("a gripping , funny film .", target=1)
    bench.evaluate_explanations(explanations, target=1)

Each explainer scores ferret's token grid (``tokenizer(text, truncation=True)``, [CLS] and [SEP] included) with the
scores of :func:`normxlogit.explain` (one forward pass, with its self-check).

**ferret's faithfulness protocol against nx.evaluate** (read from ferret 0.4's ``evaluators``). ferret's
comprehensiveness and sufficiency drop the first and last token ([CLS], [SEP]: nx's ``protocol="clean"``), rank the
``n`` remaining tokens, and at each threshold ``t`` in ``numpy.arange(0.1, 1.1, 0.1)`` take the top ``k = int(t *
n)``; they *delete* those tokens (sufficiency: all the others; nx's ``replacement="delete"``) and measure the drop in
the target class's probability (nx: the predicted class's, so pass ``target`` = the prediction). Four differences
remain, and :func:`ferret_aopc` maps nx's per-ratio outputs through the first three:

1. ``only_pos=True`` (ferret's default): only tokens with a positive score enter the rationale, so a signed method
   (NormXLogit, LogAt) is cut short where its scores are negative; nx ranks every token. ferret's ``only_pos=False``
   fails under numpy 2 (``id_top_k == []`` on an array; ferret pins numpy<2); :func:`positive_ranks` gives ferret
   the same ranking as positive numbers (nx's order, ties in text order), so its default ranks every token.
2. ferret averages over the thresholds whose rationale is non-empty (``k > 0``) and differs from the previous one
   (short texts repeat ``k``), 100% included; nx's AOPC averages every ratio strictly between 0 and 1. An example
   with no threshold left scores comprehensiveness 0 and sufficiency 1 in ferret.
3. ferret averages per example first; with ferret's thresholds kept per example, the same.
4. ferret decodes the perturbed ids to text and tokenises them again; nx perturbs the ids. The two agree when the
   round trip gives the same ids (whole-word tokens); a deleted word piece next to a kept ``##`` piece does not
   round-trip, and there the engines read different inputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..core.explain import attribute as attribute_encoded
from ..core.inputs import Encoded
from ..evaluation.results import FaithfulnessResult
from . import require

require("ferret", "ferret", hint=" (see the README: ferret-xai is installed without its pinned dependencies)")

from ferret import BaseExplainer  # noqa: E402
from ferret.explainers.explanation import Explanation  # noqa: E402

__all__ = ["FERRET_THRESHOLDS", "LogAtExplainer", "NormExplainer", "NormXLogitExplainer", "ferret_aopc",
           "positive_ranks", "round_trips"]

#: ferret's default removal thresholds (``removal_args["thresholds"]``), the floats it computes them as.
FERRET_THRESHOLDS: tuple[float, ...] = tuple(float(t) for t in np.arange(0.1, 1.1, 0.1))


class NormXLogitExplainer(BaseExplainer):
    """ferret explainer for NormXLogit; ``options`` go to :func:`normxlogit.explain` (``layer``, ``norm_source``,
    ``head``...). LogAt and the norm subclass it."""

    NAME = "NormXLogit"
    method = "normxlogit"

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, **options: Any) -> None:
        super().__init__(model, tokenizer)
        self.options = options

    def compute_feature_importance(self, text: str, target: int | str = 1, **explainer_args: Any) -> Explanation:
        """The method's scores on ferret's tokens of ``text`` for class ``target`` (an index or a label name)."""
        options = {**self.options, **explainer_args}
        if isinstance(target, str):
            label2id = getattr(self.helper.model.config, "label2id", {}) or {}
            if target not in label2id:
                raise ValueError(f"Unknown target label {target!r}; this model's labels are {sorted(label2id)}.")
            target = int(label2id[target])
        item = self._tokenize(text, return_special_tokens_mask=True)
        specials = set(self.tokenizer.all_special_ids) - {self.tokenizer.mask_token_id}
        row = {k: v[0].tolist() for k, v in item.items() if k != "special_tokens_mask"}
        row["special_tokens_mask"] = [int(i in specials) for i in row["input_ids"]]
        encoded = Encoded([text], [row], True, len(row["input_ids"]))
        attr = attribute_encoded(self.helper.model, self.tokenizer, encoded, self.method, target=int(target),
                                 **options)[0]
        scores = np.nan_to_num(np.asarray(attr.scores, dtype=np.float64))
        return Explanation(text, self.get_tokens(text), scores, self.NAME, int(target))


class LogAtExplainer(NormXLogitExplainer):
    """ferret explainer for LogAt: the head's logit for the class read on each token's final hidden state."""

    NAME = "LogAt"
    method = "logat"


class NormExplainer(NormXLogitExplainer):
    """ferret explainer for the input-embedding norm of each token."""

    NAME = "Norm"
    method = "norm"


def positive_ranks(explanation: Explanation) -> Explanation:
    """A copy of ``explanation`` whose scores are its ranks, all positive (highest score -> largest rank; ties in
    text order, as nx ranks), so that ferret's evaluators (``only_pos=True``) rank every token as nx does."""
    scores = np.asarray(explanation.scores, dtype=np.float64)
    order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(len(scores), 0, -1, dtype=np.float64)
    return Explanation(explanation.text, explanation.tokens, ranks, explanation.explainer, explanation.target)


def round_trips(tokenizer: PreTrainedTokenizerBase, explanation: Explanation) -> bool:
    """Whether every input ferret's AOPC builds for ``explanation`` (delete the top ``k`` tokens / keep only them, at
    each of its thresholds) tokenises back, through ferret's decode-and-retokenise, to the ids nx perturbs directly.
    Where it does, ferret's numbers and :func:`ferret_aopc`'s agree (difference 4 of the module's notes)."""
    ids = tokenizer(explanation.text, truncation=True)["input_ids"]
    content = ids[1:-1]
    order = np.argsort(-np.nan_to_num(np.asarray(explanation.scores, dtype=np.float64)[1:-1], nan=-np.inf),
                       kind="stable")
    for k in {int(t * len(content)) for t in FERRET_THRESHOLDS} - {0}:
        top = set(order[:k].tolist())
        for kept in ([i for j, i in enumerate(content) if j not in top], [i for j, i in enumerate(content) if j in top]):
            if tokenizer(tokenizer.decode(kept), truncation=True)["input_ids"] != [ids[0], *kept, ids[-1]]:
                return False
    return True


def _ferret_kept(n: int, thresholds: tuple[float, ...]) -> list[int]:
    """Which thresholds ferret averages for a text of ``n`` ranked tokens (every token ranked)."""
    kept, last = [], None
    for j, t in enumerate(thresholds):
        k = int(t * n)
        if 0 < k <= n and k != last:  # an empty rationale is skipped; the same one as before is not repeated
            kept.append(j)
            last = k
    return kept


def ferret_aopc(result: FaithfulnessResult) -> dict[str, np.ndarray]:
    """Per-example AOPC comprehensiveness and sufficiency as ferret aggregates them, from an :func:`nx.evaluate`
    result computed with ``ratios=FERRET_THRESHOLDS``, ``protocol="clean"`` and ``replacement="delete"``.

    Returns ``{"aopc_compr": (examples,), "aopc_suff": (examples,)}``: per example, the mean probability drop over
    the thresholds ferret keeps (see the module's notes; ferret's 0 and 1 where it keeps none).
    """
    if result.replacement != "delete" or result.protocol != "clean":
        raise ValueError("ferret deletes tokens and leaves [CLS]/[SEP] out: evaluate with replacement='delete' and "
                         f"protocol='clean' (got {result.replacement!r}, {result.protocol!r}).")
    ratios = tuple(float(r) for r in result.ratios)
    if ratios != FERRET_THRESHOLDS:
        raise ValueError("Evaluate with ratios=FERRET_THRESHOLDS (ferret's numpy.arange(0.1, 1.1, 0.1)).")
    out = {"aopc_compr": np.empty(result.n_examples), "aopc_suff": np.empty(result.n_examples)}
    for i, n in enumerate(result.n_ranked):
        kept = _ferret_kept(int(n), ratios)
        counts = [int(r * n) for r in ratios]
        safe = [int(np.floor(r * n + 1e-9)) for r in ratios]  # nx's count (clean protocol)
        if any(counts[j] != safe[j] for j in kept):
            raise ValueError(f"Example {i}: ferret's int(t * n) and nx's count differ for n={n}; not comparable.")
        for key, kind, empty in (("aopc_compr", "comprehensiveness", 0.0), ("aopc_suff", "sufficiency", 1.0)):
            drops = result.original[i] - result.outputs[kind][i, kept]
            out[key][i] = float(np.mean(drops)) if kept else empty
    return out
