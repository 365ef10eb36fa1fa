"""The built-in recipes: ``sst2`` and ``stsb`` (MiniLM sequence heads) and ``blimp`` (MiniLM masked LM).

Their functions are :class:`~normxlogit.training.recipes.Named` with the identifiers they had when the cached
models were first trained, so the cache keys stay valid wherever the code lives.
"""

from __future__ import annotations

from ..data.benchmarks import BLIMP_PAPER_PARADIGMS, load_sst2, load_stsb
from ..data.evidence import load_split
from .decoder import DECODER_BASE, train_decoder_sequence
from .masked_pairs import evaluate_blimp_mlm, train_blimp_mlm
from .recipes import Named, Recipe, register_recipe

# Sized to train in a few minutes on 2 CPU cores (CI trains both from scratch), and used in both profiles. Freezing the
# word embeddings roughly halves a CPU step (no dense update of the 30k x 384 matrix) at no cost in accuracy, and keeps
# the token-embedding norms that NormXLogit multiplies by those of the released MiniLM.

register_recipe(
    "sst2",
    Recipe(
        task="classification",
        num_labels=2,
        label_names=("negative", "positive"),
        load_data=Named("normxlogit.data.load_sst2", load_sst2),
        text_columns=("sentence",),
        label_column="label",
        metric="accuracy",
        epochs=1.0,
        lr=1e-4,  # better than 5e-5 for this small model in one short epoch (0.870 vs 0.862 on 20k rows)
        batch_size=32,
        max_length=64,  # longer than 99.9% of SST-2
        train_size=20000,  # of 67k phrases
        freeze_word_embeddings=True,
    ),
)

register_recipe(
    "stsb",
    Recipe(
        task="regression",
        num_labels=1,
        load_data=Named("normxlogit.data.load_stsb", load_stsb),
        text_columns=("sentence1", "sentence2"),
        label_column="score",
        metric="pearson",
        epochs=2.0,
        lr=5e-5,
        batch_size=32,
        max_length=128,  # longer than every pair
        label_scale=5.0,  # train on score / 5; the saved model outputs 0-5 scores
        freeze_word_embeddings=True,
    ),
)

#: The BLiMP masked LM: MiniLM with an MLM head fine-tuned on half of the annotated pairs (held-out accuracy 0.984).
BLIMP_RECIPE = Recipe(
    task="masked-lm",
    load_data=Named("normxlogit.blimp_model.load_split", load_split),
    text_columns=(),
    label_column=None,
    metric="accuracy",
    epochs=3.0,
    lr=3e-5,
    batch_size=64,
    train_split="finetune",
    eval_split="eval",
    seed=42,
    warmup_ratio=0.1,
    train_fn=Named("normxlogit.blimp_model.train_blimp_mlm", train_blimp_mlm),
    eval_fn=Named("normxlogit.blimp_model.evaluate_blimp_mlm", evaluate_blimp_mlm),
    revision=2,  # 2: fused AdamW
    options={
        "paradigms": list(BLIMP_PAPER_PARADIGMS),
        "split_seed": 42,
        "head_lr": 1e-3,
        "new_head_prefixes": ["cls.predictions.transform", "cls.predictions.bias", "cls.predictions.decoder.bias"],
    },
)
register_recipe("blimp", BLIMP_RECIPE)

# --- SmolLM2-135M-Instruct as a sequence classifier and regressor (a decoder fine-tuned like the paper's LLaMA-2) ---
# LlamaForSequenceClassification: ``score`` on every position, pooled at the last non-pad token; the recipes pad with
# ``<|endoftext|>`` on the right (see training/decoder.py).
#
# What is trained, measured by bench/decoder_finetune.py in two steps (SST-2 phrases in length-grouped batches of 16).
# First the cost, CPU seconds per training example (one thread, 6 steps, on a machine shared by ~18 processes):
#
#     trained                         parameters    CPU s / example    relative
#     head only                           0.001 M        0.040             0.5
#     top 8 of 30 blocks + norm + head   28.3 M          0.083             1
#     LoRA r=8 on every linear + head     2.4 M          0.134             1.6
#     full (embeddings included)        134.5 M          0.258             3.1
#
# Then accuracy at an equal budget (``--budget 240``: each variant got 240 CPU s / its cost above of phrases; accuracy
# on all 872 validation sentences, 2 threads on the idle machine; normxlogit/resources/decoder_finetune_cpu.json):
#
#     trained     phrases   lr      accuracy   CPU s spent
#     LoRA r=8      1,791   5e-4     0.868        179
#     top 8         2,892   1e-4     0.806        171
#     head only     6,000   1e-3     0.757        (contended)
#     full            930   3e-5     0.533        151
#
# LoRA wins at equal cost, by 6 points over the top-8 blocks with 60% more phrases, so both recipes use it: adapters
# on every linear layer of the 30 blocks and the new head, merged into the weights when training ends (the cached model
# is a plain transformers model). It leaves the word embeddings untouched, so NormXLogit multiplies by the norms of the
# released SmolLM2, as the MiniLM recipes do by freezing them. Each variant had one learning rate, chosen before the
# run; full fine-tuning at 3e-5 had too few steps to leave chance. The recipes record a learning curve on 256
# validation rows (``nx.pretrained_info(name)["train"]["learning_curve"]``); measured results are printed after
# training.
DECODER_TRAIN = Named("normxlogit.training.decoder.train_decoder_sequence", train_decoder_sequence)

register_recipe(
    "sst2-smollm2",
    Recipe(
        task="classification",
        num_labels=2,
        label_names=("negative", "positive"),
        load_data=Named("normxlogit.data.load_sst2", load_sst2),
        text_columns=("sentence",),
        label_column="label",
        metric="accuracy",
        base_model=DECODER_BASE,
        epochs=1.0,
        lr=5e-4,
        batch_size=16,
        max_length=64,
        train_size=8000,
        train_fn=DECODER_TRAIN,
        options={"trainable": "lora", "lora_rank": 8, "curve_every": 100},  # a point every 1,600 phrases
    ),
)

register_recipe(
    "stsb-smollm2",
    Recipe(
        task="regression",
        num_labels=1,
        load_data=Named("normxlogit.data.load_stsb", load_stsb),
        text_columns=("sentence1", "sentence2"),
        label_column="score",
        metric="pearson",
        base_model=DECODER_BASE,
        epochs=1.0,
        lr=5e-4,
        batch_size=16,
        max_length=128,
        train_size=None,  # all 5,749 pairs
        label_scale=5.0,
        train_fn=DECODER_TRAIN,
        options={"trainable": "lora", "lora_rank": 8, "add_bos_token": True, "curve_every": 90},  # <|im_start|> A <|im_start|> B, as LLaMA-2's pairs
    ),
)
