"""Every scorer a rerank job can name: its config model (by ``kind``) and its class. A pipeline never names a
scorer; it asks here. Adding one is a module (a config with a ``kind`` literal and a ``Scorer`` class) and
one line in each of ``ScorerConfig`` and ``SCORERS``.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from shardflow.operators.rerank import (
    CausalYesNoConfig,
    CausalYesNoScorer,
    CrossEncoderConfig,
    CrossEncoderScorer,
    FirstListwiseConfig,
    FirstListwiseScorer,
    JobTexts,
    Scorer,
)
from shardflow.operators.rerank_attention import AttentionScorer, AttentionScorerConfig
from shardflow.operators.rerank_dense import EmbeddingScorer, EmbeddingScorerConfig
from shardflow.operators.rerank_lexical import Bm25Config, Bm25Scorer
from shardflow.storage import Location

__all__ = [
    "SCORERS",
    "EmbeddingScorerConfig",
    "ScorerConfig",
    "load_scorer",
    "prepare",
    "prepares",
]

ScorerConfig = Annotated[
    EmbeddingScorerConfig
    | Bm25Config
    | CrossEncoderConfig
    | CausalYesNoConfig
    | FirstListwiseConfig
    | AttentionScorerConfig,
    Field(discriminator="kind"),
]

SCORERS: dict[str, type[Any]] = {
    "embedding": EmbeddingScorer,
    "bm25": Bm25Scorer,
    "cross_encoder": CrossEncoderScorer,
    "causal_yes_no": CausalYesNoScorer,
    "first": FirstListwiseScorer,
    "attention": AttentionScorer,
}


def prepares(config: ScorerConfig) -> bool:
    """Whether the scorer does work per distinct text of the job (``prepare``) before scoring pairs."""
    return hasattr(SCORERS[config.kind], "prepare")


def prepare(config: ScorerConfig, texts: JobTexts, folder: Location) -> dict[str, Any]:
    """The scorer's pass over the job's distinct texts, written under ``folder``; what it reports (counts, where
    its actors ran)."""
    return SCORERS[config.kind].prepare(config, texts, folder)


def load_scorer(config: ScorerConfig, prepared: Location | None = None) -> Scorer:
    """The scorer ``config.kind`` names, with its model loaded, or what its ``prepare`` wrote under ``prepared``."""
    return SCORERS[config.kind](config, prepared)
