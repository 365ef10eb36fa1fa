"""The result object: one token attribution, renderable in notebooks (HTML), terminals (ANSI) and files (JSON)."""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..settings import atomic_write_text


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
    def _normalised(self) -> tuple[np.ndarray, bool]:
        """Scores scaled to [-1, 1] (signed) or [0, 1] (all non-negative) over the non-special tokens."""
        content = self.scores[self.content_mask] if self.content_mask.any() else self.scores
        signed = bool((content < 0).any())
        scale = float(np.max(np.abs(content))) if content.size else 0.0
        values = self.scores / scale if scale > 0 else np.zeros_like(self.scores)
        return np.clip(values, -1.0, 1.0), signed

    def _heading(self) -> str:
        parts = [f"method={self.method}"]
        if self.layer is not None:
            parts.append(f"layer={self.layer}")
        parts.append(f"target={self.meta.get('target_label', self.target)}")
        parts.append(f"prediction={self.meta.get('prediction_label', self.prediction)}")
        return ", ".join(parts)

    def to_html(self, *, show_special: bool = False) -> str:
        """A token heatmap: diverging red/blue for signed scores, a single hue for non-negative ones."""
        values, signed = self._normalised()
        spans = []
        for token, value, special, score in zip(self.tokens, values, self.special_tokens_mask, self.scores):
            if special and not show_special:
                continue
            if value >= 0:
                colour = f"rgba(214, 39, 40, {abs(value):.3f})" if signed else f"rgba(31, 119, 180, {value:.3f})"
            else:
                colour = f"rgba(31, 119, 180, {abs(value):.3f})"
            text_colour = "white" if abs(value) > 0.6 else "black"
            spans.append(
                f'<span title="{score:.4g}" style="background:{colour};color:{text_colour};padding:1px 3px;'
                f'margin:1px;border-radius:3px;font-family:monospace">{html.escape(token)}</span>'
            )
        legend = "red = supports the target, blue = opposes it" if signed else "darker = higher score"
        return (
            f'<div style="line-height:2em"><div style="font-size:0.85em;color:#555">{html.escape(self._heading())}'
            f" ({legend})</div>{''.join(spans)}</div>"
        )

    def _repr_html_(self) -> str:
        return self.to_html()

    def to_ansi(self, *, show_special: bool = False) -> str:
        """Tokens coloured by score with 24-bit ANSI backgrounds, for the terminal."""
        values, signed = self._normalised()
        out = []
        for token, value, special in zip(self.tokens, values, self.special_tokens_mask):
            if special and not show_special:
                continue
            strength = int(255 * (1 - abs(value)))
            rgb = (255, strength, strength) if value >= 0 and signed else (strength, strength, 255)
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
