"""The embedding-norm hypothesis (book chapter 2): are embedding norms a measure of token importance?

Tools to test it: the ℓ2-norm of every vocabulary entry's word embedding against its word frequency (``wordfreq``),
function against content words, the two norm sources NormXLogit can use (the raw word-embedding row and the
embedding layer's output, ``hidden_states[0]``) on real sentences, and a small BERT-style masked LM pre-trained
from scratch, so that the norm-frequency relation can be watched as it forms.

    from normxlogit.studies import norms
    from normxlogit.evaluation.stats import spearman_with_ci
    vocab = norms.join_frequencies(norms.vocabulary_norms(model, tokenizer))
    known = vocab[vocab.known_frequency]
    spearman_with_ci(known.norm, known.zipf)      # {'rho': ..., 'low': ..., 'high': ..., 'n': ...}
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..data.benchmarks import load_sst2
from ..models import default_model_path

__all__ = [
    "FUNCTION_WORDS", "FUNCTION_WORD_SET", "default_tokenizer", "join_frequencies", "norm_sources",
    "source_rank_correlation", "sst2_sentences", "token_counts", "vocabulary_norms", "vocabulary_table",
    "word_class", "word_class_gap",
]

# ---------------------------------------------------------------------------------------------------------------
# Closed-class (function) words. Words whose usual use is a content word (like, past, round, including, ...) are
# left out on purpose, so that "function" stays a clean class; a word may sit in two categories (her, that, for).
# ---------------------------------------------------------------------------------------------------------------
FUNCTION_WORDS: dict[str, frozenset[str]] = {
    "determiners": frozenset(
        """a an the this that these those my your his her its our their whose what which whatever whichever some
        any no every each either neither all both half several many much more most few fewer less least enough
        such another other""".split()
    ),
    "pronouns": frozenset(
        """i me myself mine you yourself yourselves yours he him himself his she her herself hers it itself we us
        ourselves ours they them themselves theirs one oneself who whom whose whoever whomever what whatever which
        whichever that this these those anybody anyone anything everybody everyone everything nobody none nothing
        somebody someone something thee thou thy""".split()
    ),
    "prepositions": frozenset(
        """aboard about above across after against along alongside amid amidst among amongst around as at atop
        before behind below beneath beside besides between beyond by despite down during except for from in inside
        into near of off on onto opposite out outside over per since than through throughout till to toward towards
        under underneath unlike until unto up upon versus via with within without""".split()
    ),
    "conjunctions": frozenset(
        """and or but nor so yet for although though because since unless while whilst whereas if whether lest
        once until till when whenever where wherever whereby after before as than that both either neither""".split()
    ),
    "auxiliaries": frozenset(
        """be am is are was were been being have has had having do does did can could may might must shall should
        will would ought""".split()
    ),
}
FUNCTION_WORD_SET: frozenset[str] = frozenset().union(*FUNCTION_WORDS.values())


def word_class(word: str) -> Literal["function", "content"]:
    """``"function"`` for a closed-class English word (any of :data:`FUNCTION_WORDS`), else ``"content"``.

    Case-insensitive. Punctuation and numbers are "content" too: filter them first (``is_word`` in the tables).
    """
    return "function" if word.strip().lower() in FUNCTION_WORD_SET else "content"


# ---------------------------------------------------------------------------------------------------------------
# Vocabulary norms and frequencies
# ---------------------------------------------------------------------------------------------------------------
_WORD_START_MARKERS = ("Ġ", "▁")  # byte-level BPE (GPT-2, RoBERTa) and SentencePiece (Llama, ALBERT, DeBERTa)


def vocabulary_table(tokenizer: PreTrainedTokenizerBase, size: int | None = None) -> pd.DataFrame:
    """token_id, token, word (the surface word, marker stripped), is_special and is_word for ids ``0..size-1``."""
    n_tokens = len(tokenizer)
    size = n_tokens if size is None else size
    known = min(size, n_tokens)
    tokens = [str(t) for t in tokenizer.convert_ids_to_tokens(list(range(known)))] + [""] * (size - known)
    s = pd.Series(tokens, dtype=object)
    special = np.zeros(size, dtype=bool)
    special[[i for i in tokenizer.all_special_ids if i < size]] = True
    # Which word-start convention the vocabulary uses: WordPiece marks continuations ("##ing"), BPE and
    # SentencePiece mark word starts instead; a marker on over a tenth of the entries settles it.
    marker = next((m for m in _WORD_START_MARKERS if s.str.startswith(m).mean() > 0.1), None)
    if marker is None:  # WordPiece
        starts = ~s.str.startswith("##")
        word = s
    else:  # unmarked entries are word-internal pieces (or a text's first word: those are lost here)
        starts = s.str.startswith(marker)
        word = s.str.slice(len(marker)).where(starts, s)
    # Whole words: word starts, not special, ASCII letters only (the frequency lists and word classes are English;
    # the ~750 non-Latin single characters in BERT's vocabulary are a script inventory, not words).
    is_word = starts & ~special & word.str.isalpha() & word.map(str.isascii)
    return pd.DataFrame(
        {"token_id": np.arange(size), "token": s, "word": word, "is_special": special, "is_word": is_word.to_numpy()}
    )


def vocabulary_norms(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> pd.DataFrame:
    """One row per row of the input embedding matrix: its ℓ2-norm and what the token is.

    Columns: ``token_id``, ``token``, ``word`` (the token without its word-start marker), ``is_special``,
    ``is_word`` (a whole word: not a continuation piece, not special, ASCII letters only), ``word_class``
    ("function"/"content" for whole words, None otherwise) and ``norm``.
    """
    weight = model.get_input_embeddings().weight.detach()
    norms = torch.linalg.norm(weight.float(), dim=1).cpu().numpy()
    df = vocabulary_table(tokenizer, size=weight.shape[0])
    df["word_class"] = df["word"].map(word_class).where(df["is_word"], None)
    df["norm"] = norms
    return df


def join_frequencies(df: pd.DataFrame, lang: str = "en") -> pd.DataFrame:
    """``df`` (from :func:`vocabulary_norms`) with ``zipf``, the wordfreq Zipf frequency of each whole word.

    Zipf = log10(occurrences per billion words); wordfreq gives 0 for words it does not know, so ``zipf`` is NaN
    for non-words, 0 for unknown words, and ``known_frequency`` flags the rows to correlate (whole word, zipf > 0).
    """
    from wordfreq import zipf_frequency

    out = df.copy()
    words = out["word"].where(out["is_word"])
    out["zipf"] = [zipf_frequency(w, lang) if isinstance(w, str) else np.nan for w in words]
    out["known_frequency"] = out["is_word"].to_numpy() & (out["zipf"].to_numpy() > 0)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Function against content words, at matched frequency
# ---------------------------------------------------------------------------------------------------------------
def _class_gaps(
    fz: np.ndarray, fn: np.ndarray, cz: np.ndarray, cn: np.ndarray, k: int, knots: np.ndarray, bins: np.ndarray
) -> np.ndarray:
    """[gap, Zipf gap] for each of the three matchings of :func:`word_class_gap` (a (3, 2) array)."""
    # 1. content words re-weighted so that their distribution over the frequency bins is the function words'
    fb, cb = np.digitize(fz, bins), np.digitize(cz, bins)
    nf, nc = np.bincount(fb, minlength=len(bins) + 1), np.bincount(cb, minlength=len(bins) + 1)
    covered = nc[fb] > 0  # function words in a bin without content words cannot be matched
    w = nf[cb] / nc[cb] * (nc[cb] > 0)
    binned = [fn[covered].mean() - np.average(cn, weights=w), fz[covered].mean() - np.average(cz, weights=w)]
    # 2. the k content words nearest in Zipf to each function word (with replacement); a window of 2k sorted
    # neighbours always holds the k nearest
    order = np.argsort(cz, kind="stable")
    sz, sn = cz[order], cn[order]
    start = np.clip(np.searchsorted(sz, fz) - k, 0, len(sz) - 2 * k)
    window = start[:, None] + np.arange(2 * k)
    nearest = np.take_along_axis(window, np.argsort(np.abs(sz[window] - fz[:, None]), axis=1)[:, :k], axis=1)
    matched = [float(np.mean(fn - sn[nearest].mean(1))), float(np.mean(fz - sz[nearest].mean(1)))]
    # 3. least squares: norm ~ piecewise-linear curve in Zipf (a knot every bin) + a function-word shift
    z = np.concatenate([fz, cz])
    x = np.column_stack([np.ones_like(z), np.r_[np.ones_like(fz), np.zeros_like(cz)], z,
                         np.maximum(z[:, None] - knots[None, :], 0.0)])
    beta = np.linalg.lstsq(x.T @ x, x.T @ np.concatenate([fn, cn]), rcond=None)[0]  # normal equations: fast
    return np.array([binned, matched, [beta[1], 0.0]])


def word_class_gap(
    words: pd.DataFrame,
    *,
    n_neighbours: int = 1,
    bin_width: float = 0.5,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> pd.DataFrame:
    """How much shorter (negative) or longer function words' embeddings are than content words' of the same
    frequency, three ways, each with a bootstrap confidence interval.

    ``words`` has one row per word with ``norm``, ``zipf`` and ``word_class`` ("function"/"content"), e.g. the
    ``known_frequency`` rows of :func:`join_frequencies`. The estimates of mean(function norm) - mean(matched
    content norm):

    - ``"bins"``: content words weighted so that their distribution over Zipf bins of ``bin_width`` equals the
      function words' (the match is only as fine as the bins);
    - ``"nearest"``: each function word against the mean of its ``n_neighbours`` nearest content words in Zipf
      (with replacement);
    - ``"regression"``: the class coefficient of a least-squares fit of the norm on a piecewise-linear function
      of Zipf (a knot at every bin edge) plus a function-word indicator.

    The bootstrap resamples function and content words separately (with replacement) and redoes every match.
    Returns one row per estimate: ``gap``, ``low``, ``high``, ``zipf_gap`` (the mean Zipf difference the match
    leaves, function minus content; 0 for the regression, which adjusts for frequency rather than matching),
    ``n_function``, ``n_content``.
    """
    fw = words[words["word_class"] == "function"]
    cw = words[words["word_class"] == "content"]
    fz, fn = fw["zipf"].to_numpy(float), fw["norm"].to_numpy(float)
    cz, cn = cw["zipf"].to_numpy(float), cw["norm"].to_numpy(float)
    if len(fz) == 0 or len(cz) < 2 * n_neighbours:
        raise ValueError(f"need function words and at least {2 * n_neighbours} content words, "
                         f"got {len(fz)} and {len(cz)}.")
    low_edge = np.floor(min(fz.min(), cz.min()) / bin_width) * bin_width
    bins = np.arange(low_edge, max(fz.max(), cz.max()) + bin_width, bin_width)
    knots = bins[1:-1]
    point = _class_gaps(fz, fn, cz, cn, n_neighbours, knots, bins)
    rng = np.random.default_rng(seed)
    boot = np.empty((n_boot, 3))
    for b in range(n_boot):
        fi, ci_ = rng.integers(0, len(fz), len(fz)), rng.integers(0, len(cz), len(cz))
        boot[b] = _class_gaps(fz[fi], fn[fi], cz[ci_], cn[ci_], n_neighbours, knots, bins)[:, 0]
    alpha = (1.0 - ci) / 2.0
    low, high = np.nanquantile(boot, [alpha, 1.0 - alpha], axis=0)
    return pd.DataFrame(
        {"gap": point[:, 0], "low": low, "high": high, "zipf_gap": point[:, 1], "n_function": len(fz),
         "n_content": len(cz)},
        index=pd.Index(["bins", "nearest", "regression"], name="match"),
    )


# ---------------------------------------------------------------------------------------------------------------
# Norm sources on real sentences
# ---------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def norm_sources(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    max_length: int = 512,
) -> pd.DataFrame:
    """Both norm sources for every token of ``texts``, from batched forward passes.

    One row per real (non-padding) token: ``text_id``, ``position``, ``token_id``, ``token``, ``is_special``,
    ``is_word`` and ``word_class`` (as in :func:`vocabulary_norms`), ``word_norm`` (ℓ2-norm of the token's row of
    the input embedding matrix: no position, no LayerNorm) and ``embedding_output_norm`` (ℓ2-norm of
    ``hidden_states[0]``: for BERT, word + position + type embedding after LayerNorm; NormXLogit's default).
    """
    model.eval()
    device = next(model.parameters()).device
    row_norms = torch.linalg.norm(model.get_input_embeddings().weight.float(), dim=1)  # once, then looked up
    frames = []
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start : start + batch_size])
        enc = tokenizer(
            batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt",
            return_special_tokens_mask=True,
        )
        special = enc.pop("special_tokens_mask").bool()
        enc = enc.to(device)
        hidden0 = model(**enc, output_hidden_states=True).hidden_states[0]
        output_norm = torch.linalg.norm(hidden0.float(), dim=-1).cpu()
        word_norm = row_norms[enc["input_ids"]].cpu()
        real = enc["attention_mask"].bool().cpu()
        ids = enc["input_ids"].cpu()
        rows, cols = real.nonzero(as_tuple=True)
        frames.append(
            pd.DataFrame(
                {
                    "text_id": (rows + start).numpy(),
                    "position": cols.numpy(),
                    "token_id": ids[real].numpy(),
                    "is_special": special[real].numpy(),
                    "word_norm": word_norm[real].numpy(),
                    "embedding_output_norm": output_norm[real].numpy(),
                }
            )
        )
    columns = ["text_id", "position", "token_id", "token", "is_special", "is_word", "word_class", "word_norm",
               "embedding_output_norm"]
    if not frames:
        return pd.DataFrame(columns=columns)
    df = pd.concat(frames, ignore_index=True)
    vocab = vocabulary_table(tokenizer, size=row_norms.shape[0])
    df["token"] = vocab["token"].to_numpy()[df["token_id"]]
    df["is_word"] = vocab["is_word"].to_numpy()[df["token_id"]]
    df["word_class"] = pd.Series(vocab["word"].to_numpy()[df["token_id"]]).map(word_class).where(df["is_word"], None)
    return df[columns]


def source_rank_correlation(
    sources: pd.DataFrame, a: str = "word_norm", b: str = "embedding_output_norm"
) -> pd.DataFrame:
    """Per text, Spearman's rho between the token rankings by columns ``a`` and ``b`` of :func:`norm_sources`.

    Special tokens are excluded. Returns ``text_id``, ``n_tokens`` and ``rho`` (NaN under two tokens or when a
    ranking is constant).
    """
    df = sources.loc[~sources["is_special"], ["text_id", a, b]]
    g = df.groupby("text_id")
    ranks = g[[a, b]].rank()  # average ranks within each text
    centred = ranks - ranks.groupby(df["text_id"]).transform("mean")
    parts = pd.DataFrame(
        {"xy": centred[a] * centred[b], "xx": centred[a] ** 2, "yy": centred[b] ** 2, "text_id": df["text_id"]}
    ).groupby("text_id").sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = parts["xy"] / np.sqrt(parts["xx"] * parts["yy"])
    return pd.DataFrame({"text_id": parts.index, "n_tokens": g.size().to_numpy(), "rho": rho.to_numpy()})


def token_counts(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase | None = None) -> np.ndarray:
    """How often each token id occurs in ``texts`` (special tokens included), as an array of vocabulary length."""
    tokenizer = default_tokenizer() if tokenizer is None else tokenizer
    ids = tokenizer(list(texts))["input_ids"]
    flat = np.fromiter((i for seq in ids for i in seq), dtype=np.int64)
    return np.bincount(flat, minlength=len(tokenizer))


def sst2_sentences(split: str = "train", limit: int | None = None, data_dir: str | Path | None = None) -> list[str]:
    """SST-2 sentences (the pre-training corpus of :func:`pretrain_small_mlm` in the book)."""
    return list(load_sst2(split, data_dir=data_dir, limit=limit)["sentence"])


def default_tokenizer() -> PreTrainedTokenizerBase:
    """The offline MiniLM's tokenizer (the default model of the book)."""
    return AutoTokenizer.from_pretrained(default_model_path())
