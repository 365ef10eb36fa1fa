"""The result object: one token attribution, renderable in notebooks (HTML), terminals (ANSI) and files (JSON)."""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..settings import atomic_write_text
from .registry import METHODS

_POSITIVE = (214, 39, 40)  # red: a signed score above 0
_NEGATIVE = (31, 119, 180)  # blue: a signed score below 0
_UNSIGNED = (117, 107, 177)  # purple: a score without a sign (darker = higher)


@dataclass
class Attribution:
    """Scores for the tokens of one input.

    ``scores`` has one value per token, special tokens included (their score is kept for inspection; rankings and
    metrics exclude them through ``special_tokens_mask``). ``target`` is the explained class (or token id for LMs),
    ``prediction`` the model's predicted class, value (regression) or token id (LMs).
    """

    tokens: list[str]
    input_ids: list[int]
    scores: np.ndarray
    special_tokens_mask: list[int]
    target: int | None
    prediction: int | float | None
    method: str
    layer: int | None = None
    text: str | tuple[str, str] | None = None
    position: int | None = None  # the position being explained (pooled token, [MASK], or last token for LMs)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64)
        if not (len(self.tokens) == len(self.input_ids) == len(self.scores) == len(self.special_tokens_mask)):
            raise ValueError("tokens, input_ids, scores and special_tokens_mask must have the same length.")

    def __len__(self) -> int:
        return len(self.tokens)

    # --- views -----------------------------------------------------------------------------------------------
    @property
    def content_mask(self) -> np.ndarray:
        """True for tokens that may be ranked (not special tokens)."""
        return np.asarray(self.special_tokens_mask, dtype=bool) == False  # noqa: E712 - elementwise

    def ranking(self) -> np.ndarray:
        """Positions of non-special tokens, highest score first (stable for ties)."""
        positions = np.flatnonzero(self.content_mask)
        order = np.argsort(-self.scores[positions], kind="stable")
        return positions[order]

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` highest-scoring non-special tokens with their scores."""
        return [(self.tokens[i], float(self.scores[i])) for i in self.ranking()[:k]]

    # --- rendering --------------------------------------------------------------------------------------------
    @property
    def signed(self) -> bool:
        """Whether the scores have a direction (positive = for the target, negative = against it).

        True for a registered signed method (``normxlogit``, ``logat``, ...) on a classification or language-model
        task; False for unsigned methods (``norm``, gradient norms, ...) and for regression, whose LogAt is a
        distance. An unregistered method counts as signed when any of its scores is negative.
        """
        if self.meta.get("task") == "regression":
            return False
        method = METHODS.get(self.method)
        return method.signed if method is not None else bool((self.scores[np.isfinite(self.scores)] < 0).any())

    def _normalised(self) -> np.ndarray:
        """Scores divided by the largest absolute score of the non-special tokens, in [-1, 1]; 0 stays 0."""
        content = self.scores[self.content_mask] if self.content_mask.any() else self.scores
        content = content[np.isfinite(content)]
        scale = float(np.max(np.abs(content))) if content.size else 0.0
        values = self.scores / scale if scale > 0 else np.zeros_like(self.scores)
        return np.clip(np.nan_to_num(values), -1.0, 1.0)

    def _rgb(self, value: float) -> tuple[int, int, int]:
        """The hue of a scaled score: red above 0 and blue below for signed scores, purple for unsigned ones."""
        if not self.signed:
            return _UNSIGNED
        return _POSITIVE if value >= 0 else _NEGATIVE

    def _heading(self) -> str:
        parts = [f"method={self.method}"]
        if self.layer is not None:
            parts.append(f"layer={self.layer}")
        parts.append(f"target={self.meta.get('target_label', self.target)}")
        parts.append(f"prediction={self.meta.get('prediction_label', self.prediction)}")
        return ", ".join(parts)

    def _legend(self) -> str:
        """The colour key, with a swatch of each colour."""
        def swatch(rgb: tuple[int, int, int], label: str) -> str:
            return (f'<span style="display:inline-block;background:rgba{rgb + (0.85,)};color:white;'
                    f'padding:0 4px;border-radius:3px">{label}</span>')

        if not self.signed:
            return (f"{swatch(_UNSIGNED, 'darker')} = higher score (this score has no sign); "
                    "the strongest token is fully coloured")
        target = html.escape(str(self.meta.get("target_label", self.target)))
        return (f"{swatch(_POSITIVE, '+')} red = score above 0, for the target ({target}); "
                f"{swatch(_NEGATIVE, '&minus;')} blue = below 0, against it; "
                "stronger colour = larger |score|, white = 0")

    def to_html(self, *, show_special: bool = False) -> str:
        """A token heatmap that wraps to the width of the page (no fixed widths), with its colour key.

        Signed scores use a diverging scale centred at 0: red for positive scores (towards the target), blue for
        negative ones, the colour's strength proportional to ``|score|`` over the largest ``|score|`` of the
        non-special tokens. Unsigned scores use one hue, darker for higher. Hover a token to see its score.
        """
        values = self._normalised()
        spans = []
        for token, value, special, score in zip(self.tokens, values, self.special_tokens_mask, self.scores):
            if special and not show_special:
                continue
            colour = f"rgba{self._rgb(value) + (round(abs(float(value)), 3),)}"
            text_colour = "white" if abs(value) > 0.6 else "black"
            spans.append(
                f'<span title="{score:.4g}" style="display:inline-block;max-width:100%;overflow-wrap:anywhere;'
                f"background:{colour};color:{text_colour};padding:1px 3px;margin:1px;border-radius:3px;"
                f'font-family:monospace">{html.escape(token)}</span>'
            )
        return (
            '<div style="max-width:100%;white-space:normal">'
            f'<div style="font-size:0.85em;color:#555;line-height:1.6em">{html.escape(self._heading())}<br>'
            f"{self._legend()}</div>"
            f'<div style="display:flex;flex-wrap:wrap;align-items:baseline;line-height:1.8em">{"".join(spans)}'
            "</div></div>"
        )

    def _repr_html_(self) -> str:
        return self.to_html()

    def to_ansi(self, *, show_special: bool = False) -> str:
        """Tokens coloured by score with 24-bit ANSI backgrounds, for the terminal (the same hues as the HTML)."""
        values = self._normalised()
        out = []
        for token, value, special in zip(self.tokens, values, self.special_tokens_mask):
            if special and not show_special:
                continue
            strength = abs(float(value))
            rgb = [round(255 - strength * (255 - c)) for c in self._rgb(value)]
            out.append(f"\x1b[48;2;{rgb[0]};{rgb[1]};{rgb[2]}m\x1b[30m {token} \x1b[0m")
        return "".join(out)

    def __str__(self) -> str:
        rows = [self._heading()]
        width = max((len(t) for t in self.tokens), default=0)
        for token, score, special in zip(self.tokens, self.scores, self.special_tokens_mask):
            marker = " (special)" if special else ""
            rows.append(f"  {token:<{width}}  {score:+.4f}{marker}")
        return "\n".join(rows)

    # --- serialisation ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (numpy arrays become lists)."""
        data = asdict(self)
        # strict JSON has no NaN or infinity: a missing score is null, and comes back as NaN
        data["scores"] = [float(s) if np.isfinite(s) else None for s in self.scores]
        if isinstance(self.text, tuple):
            data["text"] = list(self.text)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Attribution":
        data = dict(data)
        data["scores"] = [np.nan if s is None else s for s in data["scores"]]
        if isinstance(data.get("text"), list):
            data["text"] = tuple(data["text"])
        return cls(**data)

    def save(self, path: str | Path) -> None:
        """Write this attribution as JSON."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, allow_nan=False))

    @classmethod
    def load(cls, path: str | Path) -> "Attribution":
        """Read an attribution written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))


def save_attributions(attributions: list[Attribution], path: str | Path) -> None:
    """Write a list of attributions as one JSON file."""
    atomic_write_text(path, json.dumps([a.to_dict() for a in attributions], allow_nan=False))


def load_attributions(path: str | Path) -> list[Attribution]:
    """Read a list written by :func:`save_attributions`."""
    return [Attribution.from_dict(d) for d in json.loads(Path(path).read_text())]
