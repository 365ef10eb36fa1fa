"""The citation views of a :class:`~normxlogit.generation.result.GenerationAttribution` with sources: the answer
cut into parts (words, sentences or tokens) and the HTML where each part, clicked or hovered, lights up the sources
it draws on most.

Pure HTML and CSS, no script: hidden radio buttons hold the clicked part (``:checked`` and the sibling combinator
light its sources), and ``:has(... :hover)`` does the same on hover in browsers that support it (all current ones).
The text wraps, so it reads at 420 px; the generated x source matrix scrolls sideways inside its own box, with a
shadow at the edge that still has columns behind it.
"""

from __future__ import annotations

import html
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from .sources import sentence_spans

__all__ = ["UNITS", "answer_units", "citation_html", "source_matrix_html", "token_offsets"]

UNITS = ("word", "sentence", "token")
#: Backgrounds of a part's top three sources, strongest first.
SHADES = ("#fdd262", "#fde5a0", "#fef3d2")
SCROLL_CUE = ("background:linear-gradient(to right,#fff 30%,#fff0) left/3em 100% no-repeat local,linear-gradient(to "
              "left,#fff 30%,#fff0) right/3em 100% no-repeat local,radial-gradient(farthest-side at 0 50%,#0003,#0000) "
              "left/1em 100% no-repeat scroll,radial-gradient(farthest-side at 100% 50%,#0003,#0000) right/1em 100% "
              "no-repeat scroll")


def token_offsets(pieces: Sequence[str], text: str) -> list[tuple[int, int]]:
    """(start, end) of each token in ``text`` from the cumulative lengths of its pieces (clamped to the text)."""
    ends = np.minimum(np.cumsum([len(p) for p in pieces]), len(text)) if len(pieces) else np.zeros(0, int)
    starts = np.concatenate([[0], ends[:-1]]).astype(int)
    return [(int(a), int(b)) for a, b in zip(starts, ends)]


def answer_units(result: Any, unit: str = "word") -> list[tuple[int, int, list[int]]]:
    """The answer cut into ``unit`` parts: ``(start, end, steps)`` per part, ``steps`` its generated tokens.

    ``word``: a new part starts at a token that begins with white space or follows one that ends with it;
    ``sentence``: :func:`~.sources.sentence_spans` of the answer; ``token``: one part per token.
    """
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {', '.join(UNITS)}, not {unit!r}.")
    text = result.generated_text
    offsets = result.answer_offsets or token_offsets(result.generated_tokens, text)
    if unit == "sentence":
        parts = []
        for a, b in sentence_spans(text):
            steps = [t for t, (s, e) in enumerate(offsets) if s < b and e > a and e > s]
            if steps:
                parts.append((a, b, steps))
        return parts
    parts: list[tuple[int, int, list[int]]] = []
    for t, (a, b) in enumerate(offsets):
        piece = text[a:b]
        if a >= b:
            continue
        joins = (unit == "word" and parts and not piece[:1].isspace()
                 and not text[parts[-1][0]:parts[-1][1]][-1:].isspace())
        if joins:
            parts[-1] = (parts[-1][0], b, parts[-1][2] + [t])
        else:
            parts.append((a, b, [t]))
    return parts


def _bar(value: float, scale: float, signed: bool) -> str:
    width = 0.0 if not np.isfinite(value) or scale <= 0 else min(abs(value) / scale, 1.0) * 100
    colour = "#d62728" if value >= 0 or not signed else "#1f77b4"
    if not signed:
        colour = "#756bb1"
    return (f'<span class="nxc-bar"><span style="width:{width:.1f}%;background:{colour}"></span></span>'
            f'<span class="nxc-num">{value:+.3g}</span>')


_AGGREGATED = {"sum": "summed over", "mean": "averaged over"}


def _top(values: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-np.nan_to_num(values, nan=-np.inf), kind="stable")[:k]


def citation_html(result: Any, unit: str = "word", top: int = 3) -> str:
    """The answer with each ``unit`` clickable and hoverable, and the sources, of which the part's ``top`` light up.

    Each source's bar is its score for the whole answer; a part's top sources are ranked by the part's own scores
    (``source_scores`` summed over its tokens), shown darkest first and in the part's tooltip.
    """
    scores = np.asarray(result.source_scores, dtype=np.float64)
    uid = f"nxc{uuid.uuid4().hex[:10]}"
    signed = bool(result.signed)
    whole = scores.sum(0)
    parts = answer_units(result, unit)
    text = result.generated_text
    radios = [f'<input type="radio" class="nxc-r" name="{uid}" id="{uid}-all" checked>']
    labels = [f'<label for="{uid}-all" class="nxc-all" title="the sources of the whole answer">whole answer</label> ']
    rules, hover = [], []
    choices = [("all", whole)] + [(f"a{k}", scores[steps].sum(0)) for k, (_, _, steps) in enumerate(parts)]
    for name, values in choices:
        for rank, j in enumerate(_top(values, top)):
            rules.append(f"#{uid}-{name}:checked~.nxc-src #{uid}-s{j}{{background:{SHADES[min(rank, 2)]}}}")
            if name != "all":
                hover.append(f"#{uid}:has(#{uid}-ans label[for={uid}-{name}]:hover) .nxc-src #{uid}-s{j}"
                             f"{{background:{SHADES[min(rank, 2)]}}}")
        rules.append(f"#{uid}-{name}:checked~.nxc-ans label[for={uid}-{name}]{{background:#ffe97a;"
                     "outline:1px solid #b8860b}")
    cursor = 0
    for k, (a, b, steps) in enumerate(parts):
        radios.append(f'<input type="radio" class="nxc-r" name="{uid}" id="{uid}-a{k}">')
        values = scores[steps].sum(0)
        tip = "; ".join(f"{r + 1}. [{j + 1}] {result.sources[j][:50]} ({values[j]:+.3g})"
                        for r, j in enumerate(_top(values, top)))
        piece = text[a:b]
        lead = len(piece) - len(piece.lstrip())
        labels.append(html.escape(text[cursor:a + lead]))
        labels.append(f'<label for="{uid}-a{k}" title="{html.escape(tip)}">'
                      f"{html.escape(piece[lead:])}</label>")
        cursor = b
    labels.append(html.escape(text[cursor:]))
    scale = float(np.nanmax(np.abs(whole))) if np.isfinite(whole).any() else 0.0
    items = "".join(f'<li id="{uid}-s{j}"><span class="nxc-txt">{html.escape(src)}</span>'
                    f"{_bar(whole[j], scale, signed)}</li>" for j, src in enumerate(result.sources))
    style = (f"<style>#{uid}{{font-family:sans-serif;max-width:100%;margin:0.4em 0}}#{uid} .nxc-r{{display:none}}"
             f"#{uid} .nxc-ans{{line-height:1.9em;overflow-wrap:anywhere;white-space:pre-wrap;margin:0.3em 0}}"
             f"#{uid} .nxc-ans label{{cursor:pointer;border-radius:3px;padding:0 1px}}"
             f"#{uid} .nxc-ans label:hover{{outline:1px dashed #b8860b}}#{uid} .nxc-all{{font-size:0.8em;"
             f"color:#555;border:1px solid #ccc;white-space:nowrap}}#{uid} .nxc-src{{margin:0.3em 0;padding-left:2em}}"
             f"#{uid} .nxc-src li{{padding:2px 4px;border-radius:3px;overflow-wrap:anywhere}}#{uid} .nxc-bar{{"
             f"display:inline-block;width:4em;height:0.6em;background:#eee;margin:0 0.3em 0 0.5em;vertical-align:middle}}"
             f"#{uid} .nxc-bar span{{display:block;height:100%}}#{uid} .nxc-num{{font-size:0.8em;color:#555;"
             f"font-family:monospace}}#{uid} .nxc-help{{font-size:0.85em;color:#555}}"
             + "".join(rules) + f"#{uid}:has(#{uid}-ans label:hover) .nxc-src li{{background:none}}"
             + "".join(hover) + "</style>")
    return (f'<div id="{uid}" class="nxc">{style}<div style="margin:0.6em 0 0.2em"><strong>Citations</strong></div>'
            f'<div class="nxc-help">Click or hover a part of the answer: its top {top} sources light up (darkest '
            f"first). Bars: each source's score for the whole answer ({html.escape(result.method)}, "
            f"{_AGGREGATED.get(getattr(result, 'source_aggregation', 'sum'), 'summed over')} the source's tokens)."
            f"</div>{''.join(radios)}"
            f'<div class="nxc-ans" id="{uid}-ans">{"".join(labels)}</div><ol class="nxc-src">{items}</ol></div>')


def source_matrix_html(result: Any) -> str:
    """Generated tokens x sources, each row scaled to its largest absolute score, in a box that scrolls sideways."""
    scores = np.asarray(result.source_scores, dtype=np.float64)
    signed = bool(result.signed)
    header = "".join(f'<th title="{html.escape(src)}">{j + 1}</th>' for j, src in enumerate(result.sources))
    rows = []
    for t, token in enumerate(result.generated_tokens):
        row = scores[t]
        scale = float(np.nanmax(np.abs(row))) if np.isfinite(row).any() else 0.0
        cells = []
        for j, value in enumerate(row):
            strength = 0.0 if scale <= 0 or not np.isfinite(value) else min(abs(value) / scale, 1.0)
            rgb = "117, 107, 177" if not signed else ("214, 39, 40" if value >= 0 else "31, 119, 180")
            cells.append(f'<td title="{html.escape(repr(token))} ← source {j + 1}: {value:.4g}" '
                         f'style="background:rgba({rgb}, {strength:.3f})"></td>')
        rows.append(f'<tr><th class="nxc-row">{t}: {html.escape(token.replace(chr(10), "⏎"))}</th>{"".join(cells)}</tr>')
    cue = ('<div class="nxc-help" style="font-size:0.8em;color:#555">scroll sideways for more sources →</div>'
           if len(result.sources) > 8 else "")
    return (f"<div style='margin:0.6em 0 0.2em'><strong>Source scores</strong> (rows: generated tokens, columns: "
            f"sources)</div>{cue}"
            f'<div class="nxc-matrix" style="overflow-x:auto;max-width:100%;{SCROLL_CUE}"><table style="border-'
            f'collapse:collapse;font-size:0.75em"><tr><th></th>{header}</tr>{"".join(rows)}</table></div>'
            "<style>.nxc-matrix td{min-width:1.6em;height:1.1em;padding:0;border:1px solid #fff}.nxc-matrix th{"
            "font-weight:normal;font-family:monospace;padding:0 3px}.nxc-row{text-align:right;white-space:pre}</style>")
