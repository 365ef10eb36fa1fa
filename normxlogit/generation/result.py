"""The result of a generation attribution: :class:`GenerationAttribution` (every generated token against every
earlier token), its views (top sources, data frames, text), its HTML (a per-step view and a heatmap matrix) and
strict JSON."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .citations import citation_html, source_matrix_html, token_offsets
from .registry import GENERATION_METHODS
from .sources import check_aggregation

__all__ = ["GenerationAttribution"]


def _json_floats(values: np.ndarray) -> list:
    """Nested lists with NaN (and inf) as ``None``: strict JSON."""
    array = np.asarray(values, dtype=np.float64)
    return np.where(np.isfinite(array), array, None).tolist()


def _display(token: str) -> str:
    return token.replace("\n", "⏎").replace("\t", "⇥").replace("\r", "")


@dataclass
class GenerationAttribution:
    """Every generated token attributed to every earlier token.

    ``source_tokens`` are the prompt's tokens then the continuation's, as text pieces (``source_ids`` their ids); the
    generated tokens are ``source_tokens[prompt_length:]``. ``scores[t, i]`` (G x T) is the score of source position
    i for generated token t; NaN where i is not before t. ``target_logits[t]`` and ``target_probs[t]`` are the
    model's own logit and probability of generated token t at the position before it.

    With sources (``explain_generation(..., sources=...)``): ``sources`` (their text), ``source_spans`` (their
    characters in ``prompt``), ``source_positions`` (their token positions), ``source_scores`` (G x S: each generated
    token's scores aggregated over each source's tokens, by ``source_aggregation``: ``"sum"`` or ``"mean"``; see
    :mod:`normxlogit.generation.sources`) and ``answer_offsets`` (each generated token's characters in
    ``generated_text``); :meth:`cite` ranks the sources.
    """

    source_tokens: list[str]
    source_ids: list[int]
    prompt_length: int
    scores: np.ndarray
    target_logits: np.ndarray
    target_probs: np.ndarray
    method: str
    layer: int | None = None
    prompt: str = ""
    generated_text: str = ""
    special_tokens_mask: list[int] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    sources: list[str] | None = None
    source_spans: list[tuple[int, int]] | None = None
    source_positions: list[list[int]] | None = None
    source_scores: np.ndarray | None = None
    answer_offsets: list[tuple[int, int]] | None = None
    source_aggregation: str = "sum"

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64)
        self.target_logits = np.asarray(self.target_logits, dtype=np.float64)
        self.target_probs = np.asarray(self.target_probs, dtype=np.float64)
        if not self.special_tokens_mask:
            self.special_tokens_mask = [0] * len(self.source_tokens)
        T, G = len(self.source_tokens), len(self.source_tokens) - self.prompt_length
        if not (len(self.source_ids) == len(self.special_tokens_mask) == T and 1 <= self.prompt_length < T):
            raise ValueError("source_tokens, source_ids and special_tokens_mask must have one entry per token, after "
                             "a prompt of at least one token and at least one generated token.")
        if self.scores.shape != (G, T) or self.target_logits.shape != (G,) or self.target_probs.shape != (G,):
            raise ValueError(f"scores must be (generated, source) = ({G}, {T}) and target_logits/probs ({G},); got "
                             f"{self.scores.shape}, {self.target_logits.shape}, {self.target_probs.shape}.")
        if self.sources is not None:
            S = len(self.sources)
            self.source_scores = np.asarray(self.source_scores, dtype=np.float64)
            self.source_spans = [(int(a), int(b)) for a, b in self.source_spans or []]
            self.source_positions = [[int(i) for i in p] for p in self.source_positions or []]
            if self.source_scores.shape != (G, S) or len(self.source_spans) != S or len(self.source_positions) != S:
                raise ValueError(f"source_scores must be (generated, sources) = ({G}, {S}), with one span and one "
                                 f"list of positions per source; got {self.source_scores.shape}.")
        check_aggregation(self.source_aggregation)
        if self.answer_offsets is not None:
            self.answer_offsets = [(int(a), int(b)) for a, b in self.answer_offsets]

    # --- sources -------------------------------------------------------------------------------------------------
    def _check_sources(self) -> np.ndarray:
        if self.sources is None or self.source_scores is None:
            raise ValueError("This result has no sources; pass sources='sentences' (or a list of strings or spans) "
                             "to explain_generation.")
        return self.source_scores

    def answer_steps(self, span: tuple[int, int] | None = None) -> np.ndarray:
        """The generated tokens (steps) whose characters overlap ``span`` = (start, end) of ``generated_text``
        (all of them for None)."""
        if span is None:
            return np.arange(len(self))
        start, end = (int(v) for v in span)
        n = len(self.generated_text)
        if not 0 <= start < end <= n:
            raise ValueError(f"span {span!r} is not a non-empty character span of the {n}-character answer "
                             "(0 <= start < end <= len(generated_text)).")
        offsets = np.asarray(self.answer_offsets if self.answer_offsets is not None else
                             token_offsets(self.generated_tokens, self.generated_text), dtype=np.int64)
        steps = np.flatnonzero((offsets[:, 0] < end) & (offsets[:, 1] > start) & (offsets[:, 1] > offsets[:, 0]))
        if steps.size == 0:
            raise ValueError(f"span {span!r} covers no generated token.")
        return steps

    def cite(self, span: tuple[int, int] | None = None) -> pd.DataFrame:
        """The sources ranked for the whole answer, or for the answer's character ``span`` = (start, end): columns
        ``source`` and ``score`` (the sum of ``source_scores`` over the generated tokens in the span, since the
        answer's log-probability is the sum of its tokens'; each token's source score is the sum or the mean over
        the source's tokens, by ``source_aggregation``), indexed by the source's number, best first."""
        scores = self._check_sources()[self.answer_steps(span)].sum(0)
        order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")
        return pd.DataFrame({"source": [self.sources[j] for j in order], "score": scores[order]},
                            index=pd.Index(order, name="source_index"))

    # --- views ---------------------------------------------------------------------------------------------------
    @property
    def generated_tokens(self) -> list[str]:
        return self.source_tokens[self.prompt_length:]

    @property
    def generated_ids(self) -> list[int]:
        return self.source_ids[self.prompt_length:]

    @property
    def prompt_tokens(self) -> list[str]:
        return self.source_tokens[: self.prompt_length]

    @property
    def signed(self) -> bool:
        method = GENERATION_METHODS.get(self.method)
        return method.signed if method else bool(np.nanmin(self.scores) < 0)

    def __len__(self) -> int:
        return len(self.generated_tokens)

    def _step(self, step: int) -> int:
        G = len(self)
        if not -G <= step < G:
            raise IndexError(f"step {step} is out of range for {G} generated tokens.")
        return step % G

    def top(self, step: int, k: int = 5, *, include_special: bool = False) -> list[tuple[int, str, float]]:
        """The ``k`` highest-scoring source positions for generated token ``step``: (position, token, score)."""
        row = self.scores[self._step(step)]
        ok = np.isfinite(row) & (include_special | ~np.asarray(self.special_tokens_mask, dtype=bool))
        positions = np.flatnonzero(ok)
        order = positions[np.argsort(-row[positions], kind="stable")][:k]
        return [(int(i), self.source_tokens[i], float(row[i])) for i in order]

    def to_dataframe(self, *, wide: bool = False, sources: bool = False) -> pd.DataFrame:
        """Long format (one row per generated token and earlier source token), or ``wide``: generated x source.

        ``sources=True``: the source scores instead (one row per generated token and source; ``wide``: generated
        tokens x sources). The token table gains a ``source_index`` column (-1 outside every source) when the result
        has sources.
        """
        if sources:
            table = self._check_sources()
            if wide:
                return pd.DataFrame(table, index=[f"{t}:{tok}" for t, tok in enumerate(self.generated_tokens)],
                                    columns=[f"{j}:{src[:40]}" for j, src in enumerate(self.sources)])
            steps, cols = np.indices(table.shape).reshape(2, -1)
            return pd.DataFrame({"step": steps, "generated_token": [self.generated_tokens[t] for t in steps],
                                 "source_index": cols, "source": [self.sources[j] for j in cols],
                                 "score": table[steps, cols]})
        if wide:
            return pd.DataFrame(self.scores, index=[f"{t}:{tok}" for t, tok in enumerate(self.generated_tokens)],
                                columns=[f"{i}:{tok}" for i, tok in enumerate(self.source_tokens)])
        G = len(self)
        steps, sources = np.nonzero(np.isfinite(self.scores))
        return pd.DataFrame({
            "step": steps,
            "generated_position": steps + self.prompt_length,
            "generated_token": [self.generated_tokens[t] for t in steps],
            "source_position": sources,
            "source_token": [self.source_tokens[i] for i in sources],
            "in_prompt": sources < self.prompt_length,
            "special": np.asarray(self.special_tokens_mask, dtype=bool)[sources],
            "score": self.scores[steps, sources],
            "target_logit": self.target_logits[steps],
            "target_prob": self.target_probs[steps],
        } | ({"source_index": self._owners()[sources]} if self.sources is not None else {}),
            index=pd.RangeIndex(len(steps))) if G else pd.DataFrame()

    def _owners(self) -> np.ndarray:
        owner = np.full(len(self.source_tokens), -1)
        for j, positions in enumerate(self.source_positions or []):
            owner[positions] = j
        return owner

    def _heading(self) -> str:
        parts = [f"method={self.method}"]
        if self.layer is not None:
            parts.append(f"layer={self.layer}")
        for key in ("model_type", "dtype"):
            if key in self.meta:
                parts.append(f"{key}={self.meta[key]}")
        return ", ".join(parts)

    def __str__(self) -> str:
        width = min(max((len(repr(t)) for t in self.generated_tokens), default=5), 16)
        lines = [
            f"GenerationAttribution({self._heading()})",
            f"prompt ({self.prompt_length} tokens): {self.prompt!r}",
            f"generated ({len(self)} tokens): {self.generated_text!r}",
            f"{'step':>4}  {'token':<{width}}  {'prob':>6}  {'logit':>8}  top sources",
        ]
        for t, token in enumerate(self.generated_tokens):
            top = ", ".join(f"{tok!r} ({score:+.3g})" for _, tok, score in self.top(t, 3))
            lines.append(f"{t:>4}  {repr(token)[:width]:<{width}}  {self.target_probs[t]:6.3f}  "
                         f"{self.target_logits[t]:8.3f}  {top}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"GenerationAttribution(method={self.method!r}, prompt_tokens={self.prompt_length}, "
                f"generated={self.generated_text!r})")

    # --- HTML ----------------------------------------------------------------------------------------------------
    def _colour(self, value: float) -> tuple[str, str]:
        """Background and text colour for a score scaled to [-1, 1]."""
        if not np.isfinite(value):
            return "#f2f2f2", "#999"
        strength = min(abs(float(value)), 1.0)
        if not self.signed:
            rgb = "117, 107, 177"  # purple: no sign (the hue Attribution.to_html uses for unsigned scores)
        else:
            rgb = "214, 39, 40" if value >= 0 else "31, 119, 180"  # red above 0, blue below
        return f"rgba({rgb}, {strength:.3f})", "white" if strength > 0.6 else "black"

    def _row_scaled(self, step: int) -> np.ndarray:
        row = self.scores[step]
        content = row[np.isfinite(row) & ~np.asarray(self.special_tokens_mask, dtype=bool)]
        if content.size == 0:
            content = row[np.isfinite(row)]
        scale = float(np.max(np.abs(content))) if content.size else 0.0
        return row / scale if scale > 0 else np.where(np.isfinite(row), 0.0, np.nan)

    def _step_view(self, step: int) -> str:
        """The text up to generated token ``step``, each token coloured by its score for it; the token outlined."""
        scaled = self._row_scaled(step)
        position = self.prompt_length + step
        spans = []
        for i in range(position + 1):
            token = self.source_tokens[i]
            if i == position:
                style = "outline:2px solid #222;background:#ffe97a;color:black"
                title = f"generated token {step}: p={self.target_probs[step]:.3g}, logit={self.target_logits[step]:.4g}"
            else:
                background, colour = self._colour(scaled[i])
                style = f"background:{background};color:{colour}"
                title = f"{i}: {self.scores[step, i]:.4g}"
            if self.special_tokens_mask[i]:
                style += ";font-style:italic;opacity:0.75"
            if i == self.prompt_length and i != position:
                style += ";border-left:2px solid #888"
            spans.append(f'<span class="nxg-tok" title="{html.escape(title)}" style="{style}">'
                         f"{html.escape(_display(token))}</span>")
            if "\n" in token:
                spans.append("<br>")
        return "".join(spans)

    def to_html(self, step: int | None = 0) -> str:
        """A per-step view (the text coloured for each generated token; ``step`` is shown open) and a heatmap matrix.

        Colours are scaled per generated token (row), since logit scales differ between steps. Pure HTML and CSS:
        it renders in notebooks, in the built book and in a saved file; tokens wrap on narrow screens and the
        matrix scrolls sideways, with a shadow on each edge that hides columns. Its labels are bold text, not
        headings, so they never outrank the page around it.
        """
        open_step = None if step is None else self._step(step)
        legend = ("red = raises the generated token's score, blue = lowers it" if self.signed
                  else "darker = higher score")
        steps = []
        for t, token in enumerate(self.generated_tokens):
            summary = (f"step {t}: {html.escape(repr(token))} &nbsp;p={self.target_probs[t]:.3f}, "
                       f"logit={self.target_logits[t]:.3f}")
            opened = " open" if t == open_step else ""
            steps.append(f'<details{opened}><summary style="cursor:pointer">{summary}</summary>'
                         f'<div class="nxg-text">{self._step_view(t)}</div></details>')
        header = "".join(
            f'<th title="{i}: {html.escape(tok)}" class="nxg-col{" nxg-gen" if i >= self.prompt_length else ""}">'
            f"<div>{html.escape(_display(tok))}</div></th>" for i, tok in enumerate(self.source_tokens))
        body = []
        for t, token in enumerate(self.generated_tokens):
            scaled = self._row_scaled(t)
            cells = []
            for i in range(len(self.source_tokens)):
                background, _ = self._colour(scaled[i])
                value = self.scores[t, i]
                title = f"{html.escape(repr(token))} ← {html.escape(repr(self.source_tokens[i]))}: " + (
                    f"{value:.4g}" if np.isfinite(value) else "not before")
                cells.append(f'<td title="{title}" style="background:{background}"></td>')
            body.append(f'<tr><th class="nxg-row">{t}: {html.escape(_display(token))}</th>{"".join(cells)}</tr>')
        style = (
            "<style>.nxg{font-family:sans-serif;max-width:100%}.nxg-text{line-height:2em;overflow-wrap:anywhere;"
            "margin:0.3em 0 0.6em}.nxg-tok{white-space:pre;display:inline-block;max-width:100%;overflow:hidden;"
            "padding:0 2px;margin:1px;border-radius:3px;font-family:monospace;line-height:1.6em}.nxg-label{margin:0.6em 0 0.2em}"
            # The matrix scrolls sideways; edge shadows (covered at the ends reached) show that it does.
            ".nxg-matrix{overflow-x:auto;max-width:100%;background:linear-gradient(to right,#fff 40%,#fff0) left/2em 100%"
            " no-repeat local,linear-gradient(to left,#fff 40%,#fff0) right/2em 100% no-repeat local,radial-gradient("
            "farthest-side at 0 50%,#0004,#0000) left/0.8em 100% no-repeat scroll,radial-gradient(farthest-side at 100%"
            " 50%,#0004,#0000) right/0.8em 100% no-repeat scroll}.nxg table{border-collapse:collapse;"
            "font-size:0.75em}.nxg td{min-width:1.1em;height:1.1em;padding:0;border:1px solid #fff}"
            ".nxg-col{vertical-align:bottom;padding:0 1px}.nxg-col div{writing-mode:vertical-rl;transform:rotate(180deg);"
            "white-space:pre;font-family:monospace;font-weight:normal;max-height:10em;overflow:hidden;padding:2px 0}"
            ".nxg-gen div{color:#a00}.nxg-row{text-align:right;white-space:pre;font-family:monospace;"
            "font-weight:normal;padding-right:4px}</style>"
        )
        return (
            f'<div class="nxg">{style}<div style="font-size:0.85em;color:#555">{html.escape(self._heading())} '
            f"({legend}; scaled per generated token)</div>"
            f"<div><b>Prompt</b> ({self.prompt_length} tokens) <b>→ generated</b>: "
            f"{html.escape(self.generated_text)}</div>"
            + ("" if self.sources is None else citation_html(self) + source_matrix_html(self)) +
            f'<div class="nxg-label"><strong>Per generated token</strong></div>{"".join(steps)}'
            f'<div class="nxg-label"><strong>All steps</strong> (rows: generated tokens, columns: source tokens; '
            f"scroll sideways for the rest)</div>"
            f'<div class="nxg-matrix"><table><tr><th></th>{header}</tr>{"".join(body)}</table></div></div>'
        )

    def _repr_html_(self) -> str:
        return self.to_html()

    # --- serialisation -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A strict-JSON-ready dict (NaN becomes ``None``)."""
        return {
            "format": "normxlogit.GenerationAttribution/1",
            "method": self.method, "layer": self.layer, "prompt": self.prompt, "generated_text": self.generated_text,
            "prompt_length": self.prompt_length, "source_tokens": list(self.source_tokens),
            "source_ids": [int(i) for i in self.source_ids], "special_tokens_mask": [int(m) for m in self.special_tokens_mask],
            "scores": _json_floats(self.scores), "target_logits": _json_floats(self.target_logits),
            "target_probs": _json_floats(self.target_probs), "meta": self.meta,
        } | ({} if self.sources is None else {
            "sources": list(self.sources), "source_spans": [list(s) for s in self.source_spans],
            "source_positions": self.source_positions, "source_scores": _json_floats(self.source_scores),
            "source_aggregation": self.source_aggregation}) | (
            {} if self.answer_offsets is None else {"answer_offsets": [list(o) for o in self.answer_offsets]})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GenerationAttribution":
        data = {k: v for k, v in data.items() if k != "format"}
        for key in ("scores", "target_logits", "target_probs", "source_scores"):
            if key in data:
                data[key] = np.array(data[key], dtype=np.float64)  # None -> NaN
        return cls(**data)

    def to_json(self, indent: int | None = None) -> str:
        """Strict JSON (no NaN literals)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False, ensure_ascii=False)

    def save(self, path: str | Path) -> None:
        """Write as strict JSON."""
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "GenerationAttribution":
        """Read a file written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
