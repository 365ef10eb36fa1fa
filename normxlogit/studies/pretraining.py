"""Emergence during pre-training (book chapter 2): a small BERT masked LM trained from scratch, its word-embedding
norms kept at checkpoints, and the norm-frequency correlation at each one.

    checkpoints = pretrain_small_mlm(sst2_sentences("train"), steps=1500, cache=True)
    norm_frequency_curve(checkpoints, counts=token_counts(texts))   # rho per step, with bootstrap intervals
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedTokenizerBase

from .. import settings
from ..evaluation.stats import spearman_with_ci
from ..training.loop import train_loop
from .norms import default_tokenizer, join_frequencies, vocabulary_table

__all__ = ["NormCheckpoint", "norm_frequency_curve", "pretrain_small_mlm"]


@dataclass(frozen=True)
class NormCheckpoint:
    """The word-embedding norms of a pre-training run after ``step`` updates (the model itself is not kept).

    ``loss``: mean masked-LM loss of the updates since the previous checkpoint (at step 0, the untrained model's
    loss on the first batch); ``seconds``: training time so far; ``norms``: ``(vocab_size,)`` float32.
    """

    step: int
    loss: float
    seconds: float
    norms: np.ndarray


def _mask_tokens(
    ids: torch.Tensor, maskable: torch.Tensor, mask_id: int, vocab_size: int, prob: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking, vectorised: pick ``prob`` of the maskable tokens; of those 80% -> [MASK], 10% -> random, 10%
    unchanged. Returns the corrupted ids and the boolean mask of picked positions (the ones the loss reads)."""
    picked = (torch.rand(ids.shape, generator=gen) < prob) & maskable
    if not picked.any():  # a batch of very short texts: predict one token rather than none
        picked.view(-1)[maskable.view(-1).nonzero()[0]] = True
    u = torch.rand(ids.shape, generator=gen)
    out = ids.clone()
    out[picked & (u < 0.8)] = mask_id
    rand = picked & (u >= 0.8) & (u < 0.9)
    out[rand] = torch.randint(vocab_size, (int(rand.sum()),), generator=gen)
    return out, picked


def _cache_key(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, args: dict) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8") + b"\0")
    tok = {"name": getattr(tokenizer, "name_or_path", ""), "size": len(tokenizer)}
    h.update(json.dumps({"args": args, "tokenizer": tok}, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def pretrain_small_mlm(
    texts: Sequence[str],
    *,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 512,
    steps: int = 600,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    warmup: float = 0.1,
    mlm_probability: float = 0.15,
    seed: int = 0,
    checkpoint_every: int | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    max_length: int = 64,
    time_budget_s: float | None = None,
    progress: bool = True,
    cache: bool | str | Path = False,
    num_threads: int | None = 1,
) -> list[NormCheckpoint]:
    """Pre-train a small BERT masked LM from random weights on ``texts``; keep the word-embedding norms as it learns.

    BERT's recipe scaled down: ``BertForMaskedLM`` (decoder tied to the word embeddings), 15% masking (80/10/10),
    AdamW with weight decay off for biases and LayerNorms, linear warm-up then linear decay. The loss (and the
    decoder, the costly part) is computed on the masked positions only. Seeded: the same arguments give the same
    losses and norms (on one machine, torch version and thread count). Checkpoints every ``checkpoint_every``
    updates (default ``steps // 20``), at step 0 and at the last step. ``time_budget_s`` stops early (the run then
    depends on the machine's speed). ``cache=True`` (or a folder) stores the checkpoints under
    ``cache_dir()/mlm_norms``, keyed by the arguments and the texts, and reuses them. ``num_threads`` sets torch's
    intra-op threads for the run (None: leave torch's setting). The default 1 is deliberate: on a shared 2-core
    machine two threads ran this loop five times slower than one (small kernels lose to thread synchronisation).
    About 0.17 CPU-seconds per step at the defaults on SST-2.
    """
    tokenizer = default_tokenizer() if tokenizer is None else tokenizer
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ValueError("pretrain_small_mlm needs at least one non-empty text.")
    checkpoint_every = max(1, steps // 20) if checkpoint_every is None else max(1, checkpoint_every)
    args = dict(hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                intermediate_size=intermediate_size, steps=steps, batch_size=batch_size, lr=lr,
                weight_decay=weight_decay, warmup=warmup, mlm_probability=mlm_probability, seed=seed,
                checkpoint_every=checkpoint_every, max_length=max_length, time_budget_s=time_budget_s)

    path = None
    if cache:
        folder = settings.cache_dir() / "mlm_norms" if cache is True else Path(cache)
        path = folder / f"{_cache_key(texts, tokenizer, args)}.npz"
        cached = _read_checkpoints(path)
        if cached is not None:
            return cached

    threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        with torch.random.fork_rng():  # seeded init and dropout, without touching the caller's RNG state
            checkpoints = _train_mlm(texts, tokenizer, progress=progress, **args)
    finally:
        torch.set_num_threads(threads)

    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        np.savez_compressed(
            tmp, step=np.array([c.step for c in checkpoints]), loss=np.array([c.loss for c in checkpoints]),
            seconds=np.array([c.seconds for c in checkpoints]), norms=np.stack([c.norms for c in checkpoints]),
        )
        os.replace(tmp, path)  # a reader never sees half a file
    return checkpoints


def _read_checkpoints(path: Path) -> list[NormCheckpoint] | None:
    """The cached checkpoints at ``path``; None when there are none or the file is unreadable (then retrained)."""
    if not path.exists():
        return None
    try:
        with np.load(path) as z:
            return [NormCheckpoint(int(step), float(loss), float(sec), norms)
                    for step, loss, sec, norms in zip(z["step"], z["loss"], z["seconds"], z["norms"], strict=True)]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        warnings.warn(f"Ignoring an unreadable cache file {path} ({err}); training again.", stacklevel=3)
        return None


def _train_mlm(
    texts: list[str], tokenizer: PreTrainedTokenizerBase, *, hidden_size: int, num_layers: int, num_heads: int,
    intermediate_size: int, steps: int, batch_size: int, lr: float, weight_decay: float, warmup: float,
    mlm_probability: float, seed: int, checkpoint_every: int, max_length: int, time_budget_s: float | None,
    progress: bool,
) -> list[NormCheckpoint]:
    """The training loop of :func:`pretrain_small_mlm` (it seeds torch's global RNG: call it inside fork_rng)."""
    from transformers import BertConfig, BertForMaskedLM

    vocab_size = len(tokenizer)  # not free for fast tokenizers: ask once
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    seqs = [torch.tensor(x) for x in ids]
    lengths = torch.tensor([len(x) for x in ids])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    never_mask = torch.tensor(sorted(set(tokenizer.all_special_ids)))

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)  # batches and masks
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
        intermediate_size=intermediate_size, max_position_embeddings=max_length, pad_token_id=pad_id,
    )
    model = BertForMaskedLM(config).train()
    embeddings = model.get_input_embeddings().weight
    order = torch.empty(0, dtype=torch.long)

    def next_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        nonlocal order
        if len(order) < batch_size:  # a new epoch: reshuffle, keeping the leftovers first
            order = torch.cat([order, torch.randperm(len(seqs), generator=gen)])
        take, order = order[:batch_size], order[batch_size:]
        x = torch.nn.utils.rnn.pad_sequence([seqs[i] for i in take.tolist()], batch_first=True, padding_value=pad_id)
        attention = (torch.arange(x.shape[1]) < lengths[take, None]).long()
        maskable = attention.bool() & ~torch.isin(x, never_mask)
        corrupted, picked = _mask_tokens(x, maskable, tokenizer.mask_token_id, vocab_size, mlm_probability, gen)
        return corrupted, attention, picked, x[picked]

    def loss_of(batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        corrupted, attention, picked, targets = batch
        hidden = model.bert(input_ids=corrupted, attention_mask=attention).last_hidden_state
        return torch.nn.functional.cross_entropy(model.cls(hidden[picked]), targets)

    def norms() -> np.ndarray:
        return torch.linalg.norm(embeddings.detach(), dim=1).numpy().astype(np.float32)

    batch = next_batch()
    with torch.no_grad():
        model.eval()
        first_loss = float(loss_of(batch))
        model.train()
    checkpoints = [NormCheckpoint(0, first_loss, 0.0, norms())]
    losses: list[float] = []
    start = time.perf_counter()

    def batches() -> Iterator[tuple[torch.Tensor, ...]]:
        yield batch  # the batch the untrained loss was measured on is the first update's
        while True:
            yield next_batch()

    def on_step(step: int, loss: float) -> bool:
        losses.append(loss)
        elapsed = time.perf_counter() - start
        out_of_time = time_budget_s is not None and elapsed >= time_budget_s
        if step % checkpoint_every == 0 or step == steps or out_of_time:
            checkpoints.append(NormCheckpoint(step, float(np.mean(losses)), elapsed, norms()))
            losses.clear()
        return out_of_time

    train_loop(model, batches(), loss_of, steps=steps, lr=lr, weight_decay=weight_decay,
               warmup_steps=int(warmup * steps), max_grad_norm=None, fused=True, on_step=on_step,
               desc="pre-training MLM", progress=progress)
    return checkpoints


def norm_frequency_curve(
    checkpoints: Iterable[NormCheckpoint],
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    lang: str = "en",
    n_boot: int = 200,
    seed: int = 0,
    ci: float = 0.95,
    token_ids: Sequence[int] | None = None,
    counts: Sequence[int] | np.ndarray | None = None,
) -> pd.DataFrame:
    """Spearman's rho (with bootstrap CI) of word-embedding norm vs word frequency at each checkpoint.

    The frequency is wordfreq's Zipf frequency over the whole-word vocabulary entries it knows (as for a
    pre-trained model), or, given ``counts`` (per token id, e.g. :func:`token_counts` of the pre-training texts),
    the frequency the model actually saw, over the whole words that occur. ``token_ids`` restricts either to those
    ids. Columns: ``step``, ``loss``, ``seconds``, ``rho``, ``low``, ``high``, ``n``.
    """
    checkpoints = list(checkpoints)
    tokenizer = default_tokenizer() if tokenizer is None else tokenizer
    table = vocabulary_table(tokenizer, size=len(checkpoints[0].norms))
    if counts is None:
        table = join_frequencies(table, lang)
        keep, freq = table["known_frequency"].to_numpy().copy(), table["zipf"].to_numpy()
    else:
        freq = np.asarray(counts, dtype=float)
        if freq.shape != (len(table),):
            raise ValueError(f"counts must hold one value per token id ({len(table)}), got shape {freq.shape}.")
        keep = table["is_word"].to_numpy() & (freq > 0)
    if token_ids is not None:
        keep &= np.isin(table["token_id"].to_numpy(), np.asarray(token_ids))
    freq = freq[keep]
    rows = [
        {"step": c.step, "loss": c.loss, "seconds": c.seconds,
         **spearman_with_ci(c.norms[keep], freq, n_boot=n_boot, seed=seed, ci=ci)}
        for c in checkpoints
    ]
    return pd.DataFrame(rows, columns=["step", "loss", "seconds", "rho", "low", "high", "n"])
