"""The operator contract: a row-local stage over Arrow batches, with its bookkeeping in one place.

A subclass holds only its rule: ``annotate(docs)`` gets the rows still in play (neither quarantined by the
reader nor dropped by an earlier stage) and returns the columns it adds, plus a drop reason per row
(``None`` keeps the row). Skipping rows that are out of play, putting the results back in row order and
prefixing reasons with the stage name live here, once. Models are loaded in ``__init__``, which Ray runs
once per actor, never per batch.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shardflow.schema import DROP_REASON, QUARANTINE_REASON, with_seconds
from shardflow.storage import StorageConfig


@dataclass
class Annotations:
    """What an operator adds to the rows it was given, in the same order."""

    columns: dict[str, pa.Array]
    drop_reasons: list[str | None] = field(default_factory=list)


class Operator(ABC):
    """A callable class for ``Dataset.map_batches(..., batch_format="pyarrow")``."""

    name: ClassVar[str]
    added_fields: ClassVar[list[pa.Field]]
    # True for operators that hold no model: they run in Ray tasks, fused with the read (no actor to start,
    # no hop between processes), one instance per worker process (``run_in_task``).
    stateless: ClassVar[bool] = False

    @staticmethod
    def preflight(config: Any, storage: StorageConfig, key: str) -> None:
        """Check on the driver what validation of the config alone cannot (a model file exists)."""

    @abstractmethod
    def annotate(self, docs: pa.Table) -> Annotations:
        """Columns for ``docs`` (all in play) and, optionally, a drop reason per row."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        started = time.perf_counter()
        playing = in_play(batch)
        docs = batch.filter(playing) if not playing.all() else batch
        found = self.annotate(docs) if docs.num_rows else self._empty_annotations()
        positions = _positions(playing)
        for spec in self.added_fields:
            column = found.columns[spec.name]
            column = column if positions is None else column.take(positions)
            index = batch.schema.get_field_index(spec.name)
            if index < 0:
                batch = batch.append_column(spec, column)
            else:  # a field an earlier stage set (dedup after dedup): rows out of play keep its value
                batch = batch.set_column(index, spec, pc.coalesce(column, batch[spec.name]))
        if found.drop_reasons:
            reasons = pa.array([None if r is None else f"{self.name}:{r}" for r in found.drop_reasons], pa.string())
            if positions is not None:
                reasons = reasons.take(positions)
            index = batch.schema.get_field_index(DROP_REASON)
            merged = pc.coalesce(batch[DROP_REASON], reasons)
            batch = batch.set_column(index, DROP_REASON, merged)
        return with_seconds(batch, self.name, time.perf_counter() - started)

    def _empty_annotations(self) -> Annotations:
        return Annotations({spec.name: pa.array([], spec.type) for spec in self.added_fields})


def in_play(batch: pa.Table) -> np.ndarray:
    """Rows neither quarantined nor dropped, as a boolean mask."""
    mask = pc.and_(pc.is_null(batch[QUARANTINE_REASON]), pc.is_null(batch[DROP_REASON]))
    return mask.to_numpy(zero_copy_only=False)


def _positions(in_play: np.ndarray) -> pa.Array | None:
    """For each row, its index among the rows in play (null when out of play); ``None`` when all are in play."""
    if in_play.all():
        return None
    index = np.cumsum(in_play) - 1
    return pa.array(index, type=pa.int64(), mask=~in_play)


_INSTANCES: dict[tuple[str, str], Operator] = {}


def run_in_task(batch: pa.Table, operator: type[Operator], config: Any, storage: StorageConfig) -> pa.Table:
    """A stateless operator applied in a Ray task; built once per worker process, then reused."""
    key = (operator.__qualname__, repr(config))  # repr shows the fields the pipeline sets, dumps do not
    if key not in _INSTANCES:
        if len(_INSTANCES) >= 8:  # a worker outlives runs (a notebook, a test session): keep the latest few
            _INSTANCES.pop(next(iter(_INSTANCES)))
        _INSTANCES[key] = operator(config, storage)
    return _INSTANCES[key](batch)
