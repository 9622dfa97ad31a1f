"""Fusion of a reranker's scores with the first stage's, against numbers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from shardflow.fusion import FusionConfig, fuse

RERANKED = np.array([0.9, 0.1, 0.5])  # the reranker puts them 1st, 3rd, 2nd
FIRST_RANKS = np.array([3.0, 1.0, 2.0])
FIRST_SCORES = np.array([10.0, 30.0, 20.0])


def test_reciprocal_rank_fusion_weighs_both_ranks() -> None:
    fused = fuse(RERANKED, FIRST_RANKS, FIRST_SCORES, FusionConfig(method="rrf", weight=0.75, k=10))
    by_hand = [0.75 / 11 + 0.25 / 13, 0.75 / 13 + 0.25 / 11, 0.75 / 12 + 0.25 / 12]
    assert fused == pytest.approx(by_hand)
    tied = fuse(np.array([1.0, 1.0]), np.array([2.0, 1.0]), np.zeros(2), FusionConfig(k=1))
    assert tied[1] > tied[0]  # equal reranker scores: the first stage's order breaks the tie


def test_linear_fusion_normalises_each_list_per_query() -> None:
    minmax = fuse(RERANKED, FIRST_RANKS, FIRST_SCORES, FusionConfig(method="linear", weight=0.5))
    assert minmax == pytest.approx([0.5 * 1 + 0.5 * 0, 0.5 * 0 + 0.5 * 1, 0.5 * 0.5 + 0.5 * 0.5])
    z = fuse(RERANKED, FIRST_RANKS, FIRST_SCORES, FusionConfig(method="linear", weight=1.0, normalise="zscore"))
    assert z == pytest.approx((RERANKED - 0.5) / np.std(RERANKED))
    flat = fuse(np.array([2.0, 2.0]), np.array([1.0, 2.0]), np.array([5.0, 1.0]), FusionConfig(method="linear"))
    assert flat == pytest.approx([0.5, 0.0])  # a list of equal scores says nothing: zeros
