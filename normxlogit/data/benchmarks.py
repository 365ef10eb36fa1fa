"""Benchmark data: SST-2, STS-B and BLiMP, from a local copy when there is one, else from the Hugging Face Hub.

Local copies are looked up in this order: an explicit ``data_dir`` (then only there), ``$NORMXLOGIT_DATA``,
``../shared/data`` beside the project root, ``shared/data`` inside it. Each root holds ``sst2/<split>.tsv``,
``stsb/<split>.tsv`` and ``blimp/<paradigm>.jsonl`` (the layout of ``shared/data/README.md``).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pandas as pd
from datasets import Dataset

from .. import settings

DATA_ENV = "NORMXLOGIT_DATA"
GLUE_HUB_ID = "nyu-mll/glue"
BLIMP_HUB_ID = "nyu-mll/blimp"

# GLUE's test splits carry no labels, so only these two are offered.
SPLITS: tuple[str, ...] = ("train", "validation")

# The GLUE STS-B column layout, for tsv files that come without a header row (the shared train.tsv does).
_STSB_COLUMNS = (
    "index",
    "genre",
    "filename",
    "year",
    "old_index",
    "source1",
    "source2",
    "sentence1",
    "sentence2",
    "score",
)

# The five paradigms the paper uses for layer-wise evidence alignment.
BLIMP_PAPER_PARADIGMS: tuple[str, ...] = (
    "anaphor_number_agreement",
    "determiner_noun_agreement_2",
    "determiner_noun_agreement_with_adj_2",
    "distractor_agreement_relational_noun",
    "regular_plural_subject_verb_agreement_1",
)

# All 67 BLiMP paradigms (the Hub configs), so names can be checked without any copy of the data.
# fmt: off
BLIMP_PARADIGMS: tuple[str, ...] = (
    "adjunct_island", "anaphor_gender_agreement", "anaphor_number_agreement", "animate_subject_passive",
    "animate_subject_trans", "causative", "complex_NP_island", "coordinate_structure_constraint_complex_left_branch",
    "coordinate_structure_constraint_object_extraction", "determiner_noun_agreement_1", "determiner_noun_agreement_2",
    "determiner_noun_agreement_irregular_1", "determiner_noun_agreement_irregular_2",
    "determiner_noun_agreement_with_adj_2", "determiner_noun_agreement_with_adj_irregular_1",
    "determiner_noun_agreement_with_adj_irregular_2", "determiner_noun_agreement_with_adjective_1",
    "distractor_agreement_relational_noun", "distractor_agreement_relative_clause", "drop_argument",
    "ellipsis_n_bar_1", "ellipsis_n_bar_2", "existential_there_object_raising", "existential_there_quantifiers_1",
    "existential_there_quantifiers_2", "existential_there_subject_raising", "expletive_it_object_raising",
    "inchoative", "intransitive", "irregular_past_participle_adjectives", "irregular_past_participle_verbs",
    "irregular_plural_subject_verb_agreement_1", "irregular_plural_subject_verb_agreement_2",
    "left_branch_island_echo_question", "left_branch_island_simple_question",
    "matrix_question_npi_licensor_present", "npi_present_1", "npi_present_2", "only_npi_licensor_present",
    "only_npi_scope", "passive_1", "passive_2", "principle_A_c_command", "principle_A_case_1",
    "principle_A_case_2", "principle_A_domain_1", "principle_A_domain_2", "principle_A_domain_3",
    "principle_A_reconstruction", "regular_plural_subject_verb_agreement_1",
    "regular_plural_subject_verb_agreement_2", "sentential_negation_npi_licensor_present",
    "sentential_negation_npi_scope", "sentential_subject_island", "superlative_quantifiers_1",
    "superlative_quantifiers_2", "tough_vs_raising_1", "tough_vs_raising_2", "transitive", "wh_island",
    "wh_questions_object_gap", "wh_questions_subject_gap", "wh_questions_subject_gap_long_distance",
    "wh_vs_that_no_gap", "wh_vs_that_no_gap_long_distance", "wh_vs_that_with_gap",
    "wh_vs_that_with_gap_long_distance",
)
# fmt: on


class DataNotFoundError(FileNotFoundError):
    """No local copy of a data set was found and the Hub could not be reached; the message says how to fix it."""


def data_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The data roots searched, in order: ``data_dir`` alone if given, else ``$NORMXLOGIT_DATA`` and shared/data."""
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    dirs = []
    if os.environ.get(DATA_ENV):
        dirs.append(Path(os.environ[DATA_ENV]).expanduser())
    root = settings.project_root()
    dirs += [root.parent / "shared" / "data", root / "shared" / "data"]
    return dirs


def _find(relative: str, data_dir: str | os.PathLike | None) -> tuple[Path | None, list[Path]]:
    """The first existing ``<root>/<relative>`` and the list of paths tried."""
    tried = [d / relative for d in data_dirs(data_dir)]
    return next((p for p in tried if p.is_file()), None), tried


def _from_hub(relative: str, tried: list[Path], data_dir, hub_id: str, config: str, split: str) -> Dataset:
    """Load from the Hub, unless ``data_dir`` was explicit; on failure raise :class:`DataNotFoundError`."""
    looked = "\n".join(f"  - {p}" for p in tried)
    fix = (
        f"Fix: set {DATA_ENV} to a folder holding '{relative}' (the layout of shared/data/README.md), "
        "pass data_dir=..., or give this machine internet access to the Hugging Face Hub."
    )
    if data_dir is not None:
        raise DataNotFoundError(f"No '{relative}' under the data_dir you passed; looked at:\n{looked}\n{fix}")
    try:
        from datasets import load_dataset

        return load_dataset(hub_id, config, split=split)
    except Exception as err:  # any Hub/network failure ends the same way for the user
        raise DataNotFoundError(
            f"Could not find '{relative}' locally, and loading {hub_id!r} (config {config!r}, split {split!r}) "
            f"from the Hugging Face Hub failed ({type(err).__name__}: {err}).\nLooked at:\n{looked}\n{fix}"
        ) from err


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; choose one of {', '.join(SPLITS)} (GLUE's test labels are hidden).")


def _read_tsv(path: Path, header: bool = True) -> pd.DataFrame:
    # QUOTE_NONE: some sentences hold unbalanced quotes; keep_default_na=False: "null"/"nan" are words here.
    return pd.read_csv(
        path, sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False, header=0 if header else None, dtype=str
    )


def _finish(data: pd.DataFrame | Dataset, limit: int | None) -> Dataset:
    """The first ``limit`` rows (all if None) as a Dataset."""
    if isinstance(data, Dataset):
        return data.select(range(min(limit, len(data)))) if limit is not None else data
    if limit is not None:
        data = data.iloc[:limit]
    # from_dict over plain lists gives Arrow ``string`` columns, as the Hub copies have (not ``large_string``).
    return Dataset.from_dict(data.to_dict("list"))


def load_sst2(
    split: str = "validation", data_dir: str | os.PathLike | None = None, limit: int | None = None
) -> Dataset:
    """GLUE SST-2 as a Dataset with columns ``sentence`` (str) and ``label`` (int, 1 = positive); first ``limit`` rows."""
    _check_split(split)
    relative = f"sst2/{split}.tsv"
    path, tried = _find(relative, data_dir)
    if path is None:
        ds = _from_hub(relative, tried, data_dir, GLUE_HUB_ID, "sst2", split)
        return _finish(ds.select_columns(["sentence", "label"]), limit)
    df = _read_tsv(path)[["sentence", "label"]]
    return _finish(df.astype({"label": "int64"}), limit)


def load_stsb(
    split: str = "validation", data_dir: str | os.PathLike | None = None, limit: int | None = None
) -> Dataset:
    """GLUE STS-B as a Dataset with columns ``sentence1``, ``sentence2`` and ``score`` (float in [0, 5])."""
    _check_split(split)
    relative = f"stsb/{split}.tsv"
    path, tried = _find(relative, data_dir)
    if path is None:
        ds = _from_hub(relative, tried, data_dir, GLUE_HUB_ID, "stsb", split)
        return _finish(ds.select_columns(["sentence1", "sentence2", "label"]).rename_column("label", "score"), limit)
    # The GLUE files differ: validation.tsv has a header row, train.tsv (as shared here) has none.
    with open(path, encoding="utf-8") as f:
        has_header = "sentence1" in f.readline().split("\t")
    df = _read_tsv(path, header=has_header)
    if not has_header:
        df.columns = list(_STSB_COLUMNS)
    df = df[["sentence1", "sentence2", "score"]]
    return _finish(df.astype({"score": "float64"}), limit)


def list_blimp_paradigms() -> list[str]:
    """Names of the 67 BLiMP paradigms (use one as ``load_blimp(paradigm)``)."""
    return list(BLIMP_PARADIGMS)


def load_blimp(paradigm: str, data_dir: str | os.PathLike | None = None, limit: int | None = None) -> Dataset:
    """One BLiMP paradigm (1,000 minimal pairs) with all its fields: ``sentence_good``, ``sentence_bad``, ..."""
    if paradigm not in BLIMP_PARADIGMS:
        raise ValueError(
            f"Unknown BLiMP paradigm {paradigm!r}; choose one of: {', '.join(BLIMP_PARADIGMS)} "
            f"(the paper uses {', '.join(BLIMP_PAPER_PARADIGMS)})."
        )
    relative = f"blimp/{paradigm}.jsonl"
    path, tried = _find(relative, data_dir)
    if path is None:
        return _finish(_from_hub(relative, tried, data_dir, BLIMP_HUB_ID, paradigm, "train"), limit)
    # dtype=False keeps pairID a string, as on the Hub.
    df = pd.read_json(path, lines=True, dtype=False)
    return _finish(df, limit)
