"""Every stage a config can name: its config model and what runs it. A pipeline never names a stage; it asks
here. Adding a stage is one module (a config model with an ``op`` literal and an ``Operator`` or a
``GlobalStage``) and one line below.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Union

from pydantic import Field

from shardflow.config import StrictModel
from shardflow.operators.base import GlobalStage, Operator
from shardflow.operators.dedup.exact import ExactDedup, ExactDedupConfig
from shardflow.operators.dedup.fuzzy import FuzzyDedup, FuzzyDedupConfig
from shardflow.operators.dedup.ids import DuplicateIds, DuplicateIdsConfig
from shardflow.operators.embed import EmbedConfig, Embedder
from shardflow.operators.langid import LangIdConfig, LanguageId
from shardflow.operators.length import LengthConfig, LengthFilter
from shardflow.operators.quality import QualityConfig, QualityFilter
from shardflow.operators.readers import ReaderConfig

__all__ = ["STAGES", "PlannedStage", "StageRegistry"]

Implementation = type[Operator] | type[GlobalStage]


@dataclass(frozen=True)
class PlannedStage:
    """One stage of a run: where it stands in the config (``key``, for messages), its settings, its class."""

    key: str
    config: Any
    implementation: Implementation

    @property
    def is_global(self) -> bool:
        return issubclass(self.implementation, GlobalStage)


class StageRegistry:
    """The stages by their ``op``."""

    def __init__(self) -> None:
        self.configs: dict[str, type[StrictModel]] = {}
        self.implementations: dict[str, Implementation] = {}

    def add(self, config: type[StrictModel], implementation: Implementation) -> None:
        op = config.model_fields["op"].default
        if issubclass(implementation, GlobalStage) and implementation.index and "index_from" not in config.model_fields:
            raise TypeError(f"{op}: a stage that leaves an index takes index_from")
        self.configs[op], self.implementations[op] = config, implementation

    def config_union(self, exclude: tuple[str, ...] = ()) -> Any:
        """The type of one item of ``stages``: a union of the config models, told apart by ``op``."""
        models = tuple(model for op, model in self.configs.items() if op not in exclude)
        return Annotated[Union[models], Field(discriminator="op")]  # noqa: UP007 (a union built at run time)

    def global_ops(self) -> list[str]:
        return [op for op, implementation in self.implementations.items() if issubclass(implementation, GlobalStage)]

    def index_of(self, stage: Any) -> str | None:
        """The folder a stage leaves beside the corpus for incremental runs, if any."""
        implementation = self.implementations[stage.op]
        return implementation.index if issubclass(implementation, GlobalStage) else None

    def encoder(self, stages: list[Any]) -> Any | None:
        """The settings of the last stage that writes the ``embedding`` column: the dense index's encoder."""
        found = [stage for stage in stages if _encodes(self.implementations[stage.op])]
        return found[-1] if found else None

    def encoder_ops(self) -> list[str]:
        return [op for op, implementation in self.implementations.items() if _encodes(implementation)]

    def input_stages(self, reader: ReaderConfig) -> list[PlannedStage]:
        """The stages the ``input`` section asks for: the duplicate-id pass, unless ids may repeat."""
        if reader.duplicate_ids == "allow":
            return []
        config = DuplicateIdsConfig(index_from=reader.id_index_from)
        return [PlannedStage("input.duplicate_ids", config, DuplicateIds)]

    def id_index(self, reader: ReaderConfig) -> str | None:
        """The folder the input's own id pass leaves beside the corpus, if it runs."""
        return next((stage.implementation.index for stage in self.input_stages(reader)), None)

    def configured(self, stages: list[Any]) -> list[PlannedStage]:
        """The config's ``stages``, each with what runs it."""
        return [PlannedStage(f"stages.{i}", stage, self.implementations[stage.op]) for i, stage in enumerate(stages)]

    def planned(self, reader: ReaderConfig, stages: list[Any]) -> list[PlannedStage]:
        """The stages a run runs, in order: the input's own first, then the config's."""
        return self.input_stages(reader) + self.configured(stages)

    @contextmanager
    def using(self, op: str, implementation: Implementation) -> Iterator[None]:
        """Run ``op`` with another implementation for a while (a probe in a test, a variant in a benchmark)."""
        before = self.implementations[op]
        self.implementations[op] = implementation
        try:
            yield
        finally:
            self.implementations[op] = before


def _encodes(implementation: Implementation) -> bool:
    return issubclass(implementation, Operator) and implementation.encodes


STAGES = StageRegistry()
STAGES.add(LangIdConfig, LanguageId)
STAGES.add(ExactDedupConfig, ExactDedup)
STAGES.add(FuzzyDedupConfig, FuzzyDedup)
STAGES.add(QualityConfig, QualityFilter)
STAGES.add(EmbedConfig, Embedder)
STAGES.add(LengthConfig, LengthFilter)
