"""Fusion of a reranker's scores with the first stage's, per query (``fusion:`` of a rerank job).

The cheapest gain over a reranker alone is to keep what the first stage knew: reciprocal rank fusion
(Cormack, Clarke and Büttcher 2009: ``sum of 1 / (k + rank)``, robust to scores on different scales) or a
linear mix of the two score lists, each normalised per query (min-max or z-score). ``weight`` is the
reranker's share, the first stage gets ``1 - weight``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from shardflow.config import StrictModel

__all__ = ["FusionConfig", "fuse"]


class FusionConfig(StrictModel):
    """How a reranked list and its first-stage list become one."""

    method: Literal["rrf", "linear"] = Field("rrf", description="rrf: by ranks; linear: by normalised scores.")
    weight: float = Field(0.5, ge=0.0, le=1.0, description="The reranker's share; the first stage's is 1 - weight.")
    k: int = Field(60, ge=1, description="rrf: the constant of 1 / (k + rank).")
    normalise: Literal["minmax", "zscore"] = Field(
        "minmax", description="linear: how each list's scores are put on one scale, per query."
    )


def fuse(reranked: np.ndarray, first_ranks: np.ndarray, first_scores: np.ndarray, config: FusionConfig) -> np.ndarray:
    """One query's fused scores from its reranker scores and its first-stage ranks and scores (same order)."""
    if config.method == "rrf":
        # the reranker's own ranks: best score first, ties in first-stage order
        order = np.lexsort((first_ranks, -reranked))
        ranks = np.empty(len(reranked))
        ranks[order] = np.arange(1, len(reranked) + 1)
        return config.weight / (config.k + ranks) + (1 - config.weight) / (config.k + first_ranks)
    mine, theirs = (_normalised(values, config.normalise) for values in (reranked, first_scores))
    return config.weight * mine + (1 - config.weight) * theirs


def _normalised(values: np.ndarray, how: str) -> np.ndarray:
    """Scores on a 0-1 scale (minmax) or in standard deviations from the mean (zscore); all equal -> zeros."""
    values = np.asarray(values, dtype=np.float64)
    if how == "minmax":
        span = values.max() - values.min() if len(values) else 0.0
        return (values - values.min()) / span if span > 0 else np.zeros(len(values))
    spread = values.std() if len(values) else 0.0
    return (values - values.mean()) / spread if spread > 0 else np.zeros(len(values))
