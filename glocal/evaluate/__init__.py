"""Evaluation: the revisited Oxford / Paris protocol, dataset loaders, downloads, tables and reports.

Scores inside the library are fractions in [0, 1]; tables, JSON files and reports show percentages.
"""
from glocal.evaluate.datasets import (
    DatasetError,
    RetrievalDataset,
    add_distractors,
    load_custom,
    load_dataset,
    load_r1m,
    load_revisited,
)
from glocal.evaluate.protocol import (
    SetupResult,
    compute_ap,
    compute_map,
    evaluate_setups,
    revisited_setups,
)

__all__ = [
    "DatasetError",
    "RetrievalDataset",
    "SetupResult",
    "add_distractors",
    "compute_ap",
    "compute_map",
    "evaluate_setups",
    "load_custom",
    "load_dataset",
    "load_r1m",
    "load_revisited",
    "revisited_setups",
]
