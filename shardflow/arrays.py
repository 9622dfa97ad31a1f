"""Runs in sorted arrays: the vectorised group-by that dedup, the shuffles and reranking share."""

from __future__ import annotations

import numpy as np

__all__ = ["first_of_run", "run_starts"]


def run_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """For rows sorted by key: True where a new key begins."""
    starts = np.ones(len(sorted_keys), dtype=bool)
    starts[1:] = sorted_keys[1:] != sorted_keys[:-1]
    return starts


def first_of_run(starts: np.ndarray) -> np.ndarray:
    """For each row, the index of the first row of its run."""
    return np.maximum.accumulate(np.where(starts, np.arange(len(starts)), 0))
