"""The stage contracts: a row-local ``Operator`` over Arrow batches, and a ``GlobalStage`` that must see every
document before any is written. Their bookkeeping lives here, once.

An operator holds only its rule: ``annotate(docs)`` gets the rows still in play (neither quarantined by the
reader nor dropped by an earlier stage) and returns the columns it adds, plus a drop reason per row
(``None`` keeps the row) or a quarantine reason (the row never becomes a document). Skipping rows that are
out of play, putting the results back in row order and prefixing reasons with the stage name live here.
Models are loaded in ``__init__``, which Ray runs once per actor, never per batch.

A global stage (exact dedup, fuzzy dedup, the duplicate-id pass) runs a resumable pass over every shard
before the streaming DAG (``prepare``), then joins the stream as an operator (``operator``), and may leave
an index beside the corpus for incremental runs. A pipeline runs both kinds without knowing which stages
they are: ``operators/registry.py`` says which implementation a config names.
"""

from __future__ import annotations

import socket
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import ray

from shardflow import progress
from shardflow.config import Resources
from shardflow.errors import ConfigError
from shardflow.output.corpus import OutputLayout
from shardflow.schema import DROP_REASON, QUARANTINE_REASON, RAW, SECONDS_PREFIX, SOURCE, stage_error, with_seconds
from shardflow.shards import Shard
from shardflow.storage import Location, StorageConfig

__all__ = ["Annotations", "GlobalStage", "Operator", "OperatorSpec", "RunContext", "in_play", "run_in_task"]


@dataclass
class Annotations:
    """What an operator adds to the rows it was given, in the same order: columns, and for some rows a drop
    reason (the row goes to ``removed/``) or a quarantine reason (it never was a document)."""

    columns: dict[str, pa.Array]
    drop_reasons: list[str | None] = field(default_factory=list)
    quarantine_reasons: list[str | None] = field(default_factory=list)
    tokens: int = 0  # what a model read for these rows (the progress display's tokens/s)


class Operator(ABC):
    """A callable class for ``Dataset.map_batches(..., batch_format="pyarrow")``."""

    name: str
    added_fields: list[pa.Field]
    # True for operators that hold no model: they run in Ray tasks, fused with the read (no actor to start,
    # no hop between processes), one instance per worker process (``run_in_task``).
    stateless: ClassVar[bool] = False
    # True for operators whose config describes the encoder of the ``embedding`` column: the dense index is
    # built from that column, and search embeds queries the same way.
    encodes: ClassVar[bool] = False

    @staticmethod
    def preflight(config: Any, storage: StorageConfig, key: str) -> None:
        """Check on the driver what validation of the config alone cannot (a model file exists)."""

    @staticmethod
    def environment(config: Any) -> dict[str, Any]:
        """What besides its config decides this stage's verdicts in a process (packages that import, files
        found there). The driver's is handed to every worker (``environment=`` of the constructor), which
        refuses to judge anything in another (``require_environment``)."""
        return {}

    @abstractmethod
    def annotate(self, docs: pa.Table) -> Annotations:
        """Columns for ``docs`` (all in play) and, optionally, a drop or quarantine reason per row."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        started = time.perf_counter()
        playing = in_play(batch)
        docs = batch.filter(playing) if not playing.all() else batch
        found = self._annotate_safely(docs) if docs.num_rows else self._empty_annotations()
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
            batch = _merge(batch, DROP_REASON, self._prefixed(found.drop_reasons), positions)
        if found.quarantine_reasons:
            batch = self._quarantine(batch, docs, found.quarantine_reasons, positions)
        progress.report(self.name, batch.num_rows, found.tokens)
        return with_seconds(batch, self.name, time.perf_counter() - started)

    def _annotate_safely(self, docs: pa.Table) -> Annotations:
        """``annotate(docs)``; if it raises, the documents one by one, and those that still make it raise are
        quarantined as ``stage_error:<stage>:<Type>`` (one hostile record must not fail a run; a stage that fails
        on everything fails it through ``max_error_fraction``)."""
        try:
            return self.annotate(docs)
        except Exception:  # noqa: BLE001 - which documents are to blame is found below
            pass
        parts, errors = [], []
        for row in range(docs.num_rows):
            try:
                parts.append(self.annotate(docs.slice(row, 1)))
                errors.append(None)
            except Exception as err:  # noqa: BLE001
                parts.append(self._null_annotations())
                errors.append(stage_error(self.name, err))
        return _concatenated(parts, errors, self.added_fields)

    def _null_annotations(self) -> Annotations:
        return Annotations({spec.name: pa.nulls(1, spec.type) for spec in self.added_fields})

    def _prefixed(self, reasons: list[str | None]) -> pa.Array:
        return pa.array([None if r is None else f"{self.name}:{r}" for r in reasons], pa.string())

    def _quarantine(
        self, batch: pa.Table, docs: pa.Table, reasons: list[str | None], positions: pa.Array | None
    ) -> pa.Table:
        """Quarantine rows keep the record as it was read (its fields as JSON), not its columns."""
        rows = [i for i, reason in enumerate(reasons) if reason is not None]
        records = [None] * len(reasons)
        for i, row in zip(rows, docs.take(pa.array(rows, pa.int64())).to_pylist(), strict=True):
            records[i] = orjson.dumps({k: v for k, v in row.items() if v is not None and not _bookkeeping(k)})
        batch = _merge(batch, QUARANTINE_REASON, pa.array(reasons, pa.string()), positions)
        return _merge(batch, RAW, pa.array(records, pa.large_binary()), positions)

    def _empty_annotations(self) -> Annotations:
        return Annotations({spec.name: pa.array([], spec.type) for spec in self.added_fields})


def _concatenated(parts: list[Annotations], errors: list[str | None], fields: list[pa.Field]) -> Annotations:
    """One row's annotations each (``parts``), as one; a row's error becomes its quarantine reason."""
    columns = {spec.name: pa.concat_arrays([_array(part.columns[spec.name]) for part in parts]) for spec in fields}
    drops = [reason for part in parts for reason in (part.drop_reasons or [None])]
    quarantined = [next(iter(part.quarantine_reasons), None) for part in parts]
    quarantines = [error or found for error, found in zip(errors, quarantined, strict=True)]
    return Annotations(columns, drop_reasons=drops, quarantine_reasons=quarantines)


def _array(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _bookkeeping(column: str) -> bool:
    return column in (SOURCE, DROP_REASON, QUARANTINE_REASON, RAW) or column.startswith(SECONDS_PREFIX)


def _merge(batch: pa.Table, name: str, values: pa.Array, positions: pa.Array | None) -> pa.Table:
    """``name`` set where ``values`` (one per row in play) has a value; other rows keep theirs."""
    if positions is not None:
        values = values.take(positions)
    index = batch.schema.get_field_index(name)
    return batch.set_column(index, batch.schema.field(name), pc.coalesce(batch[name], values))


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


def require_environment(operator: type[Operator], config: Any, expected: dict[str, Any] | None) -> None:
    """Fail loudly where this process would judge with another environment than the driver checked: a node
    without a tokenizer package or a thresholds folder would otherwise give other verdicts, silently."""
    if expected is None:
        return
    here = operator.environment(config)
    differs = [
        f"{key}: {expected.get(key)!r} on the driver, {here.get(key)!r} here"
        for key in sorted(expected)
        if expected.get(key) != here.get(key)
    ]
    if differs:
        raise ConfigError(
            f"{operator.name}: this worker ({socket.gethostname()}) is set up differently from the driver "
            f"({'; '.join(differs)}): install the same packages and files on every node"
        )


@dataclass(frozen=True)
class OperatorSpec:
    """One operator of a streaming pass: the class, its constructor arguments, and how Ray runs it (an actor
    pool with ``resources``, or Ray tasks fused with the read when it is stateless)."""

    key: str  # unique per run and stage: the instance cache of the task workers keys on it
    operator: type[Operator]
    arguments: dict[str, Any]
    resources: Resources | None
    lookup: bool = False  # a global stage's lookup: cheap, so a later pass may run it again instead of storing


_INSTANCES: dict[str, Operator] = {}


def run_in_task(batch: pa.Table, spec: OperatorSpec) -> pa.Table:
    """A stateless operator applied in a Ray task; built once per worker process and run, then reused."""
    if spec.key not in _INSTANCES:
        if len(_INSTANCES) >= 8:  # a worker outlives runs (a notebook, a test session): keep the latest few
            _INSTANCES.pop(next(iter(_INSTANCES)))
        _INSTANCES[spec.key] = spec.operator(**spec.arguments)
    return _INSTANCES[spec.key](batch)


@dataclass(frozen=True)
class RunContext:
    """What a run hands its global stages: every shard of the input, the output it stages its work in, and an
    id that is new for every attempt (it keys the operators' instance caches)."""

    shards: list[Shard]
    output: OutputLayout
    attempt: str

    @property
    def staging(self) -> Location:
        return self.output.staging

    def ordinals(self, offset: int = 0) -> dict[str, int]:
        """Each shard's position in input order (by URI), from ``offset``."""
        return {shard.uri: offset + position for position, shard in enumerate(self.shards)}


class GlobalStage(ABC):
    """A stage that sees every document before any is written.

    ``sees`` says which documents its pass reads: ``input``, the documents as read (the verdict depends only
    on the text, so any stage after the reader gives all copies of a text the same verdict: exact dedup), or
    ``upstream``, the documents as the stages before it leave them (fuzzy dedup: near copies can get
    different verdicts from language ID). An ``index`` is a folder it leaves beside the corpus, from which a
    later run can continue (its config's ``index_from``).
    """

    name: ClassVar[str]
    sees: ClassVar[Literal["input", "upstream"]]
    index: ClassVar[str | None] = None

    def __init__(self, config: Any, run: RunContext, key: str) -> None:
        self.config, self.run, self.key = config, run, key
        self.folder = run.staging.join(self.name)

    def check(self) -> None:
        """Fail before anything runs on what the config names but cannot be used (a missing ``index_from``)."""

    @abstractmethod
    def prepare(self, documents: ray.data.Dataset) -> None:
        """The pass over every document (restartable: finished steps are skipped)."""

    @abstractmethod
    def operator(self) -> OperatorSpec:
        """The operator that applies the pass's verdicts inside the stream."""

    def facts(self) -> dict[str, Any]:
        """What the pass found, for the manifest; an entry listing ``files`` (staging-relative) moves them into
        the output at commit."""
        return {}
