"""Duplicate ids: a ``doc_id`` names one document of the corpus, so a record whose id an earlier record
(in input order: shards by URI, then lines) already has is quarantined as ``duplicate_id``.

A global stage that runs first, on the input as read: its pass hashes each document's id, shuffles by the
hash with Ray Data (nothing is collected on the driver) and writes, per shard, the lines whose id came
earlier and where it came first: ``(shard, line, first)``. Its operator turns those lines into quarantine
rows, so that no later stage (nor a later global pass) ever sees two documents with one id, and the counts
still reconcile. Ids derived from url and text (records without an ``id``) collide only for identical
records. ``input.duplicate_ids: allow`` leaves the stage out.

The pass leaves ``id_index/`` beside the corpus: the hash and first source of every id it kept. With
``input.id_index_from`` (a refresh sets it to its published corpus's), the ids of that index count as read
before this run's shards, so an id seen on an earlier night is a duplicate tonight, as in one run over all.
"""

from __future__ import annotations

from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import ray
import xxhash
from pydantic import Field

from shardflow.arrays import first_of_run, run_starts
from shardflow.config import StrictModel
from shardflow.operators.base import Annotations, GlobalStage, OperatorSpec
from shardflow.operators.dedup.index import checked_index, index_parts, read_index_manifest, write_index_manifest
from shardflow.operators.dedup.keys import key_columns, node_ids
from shardflow.operators.dedup.lookup import ShardLookup
from shardflow.operators.dedup.shuffle import by_partition
from shardflow.schema import DOC_ID, QUARANTINE_REASON, SOURCE, split_source
from shardflow.shards import shard_key
from shardflow.steps import finished, mark_finished, read_step, write_step

__all__ = ["DuplicateIds", "DuplicateIdsConfig"]

IDS_SCHEMA = pa.schema(
    [("key", pa.uint64()), ("key_low", pa.uint64()), ("node", pa.int64()), (SOURCE, pa.string()), (DOC_ID, pa.string())]
)
RESOLVED_SCHEMA = IDS_SCHEMA.append(pa.field("first", pa.string()))  # first: null on the first copy of an id
INDEX_SCHEMA = pa.schema([("key", pa.uint64()), ("key_low", pa.uint64()), (SOURCE, pa.string())])
LATER_SCHEMA = pa.schema([("shard", pa.string()), ("line", pa.int64()), ("first", pa.string())])
INDEX_FORMAT = "shardflow-id-index/1"
KEYS = "keys"
EARLIER = -1  # the node of an id from ``index_from``: before every shard of this run


class DuplicateIdsConfig(StrictModel):
    """The duplicate-id pass, which ``input.duplicate_ids: quarantine`` (the default) puts before every stage."""

    op: Literal["duplicate_ids"] = "duplicate_ids"
    partitions: int = Field(8, ge=1, description="Shuffle partitions.")
    index_from: str | None = Field(None, description="An earlier output's id_index/ (from input.id_index_from).")


def _id_keys(batch: pa.Table, ordinals: dict[str, int]) -> pa.Table:
    """``(key, key_low, node, source, doc_id)`` for every document of the batch."""
    docs = batch.filter(pc.is_null(batch[QUARANTINE_REASON]))
    keys = [xxhash.xxh128_intdigest(doc_id.encode("utf-8")) for doc_id in docs[DOC_ID].to_pylist()]
    return pa.table(
        {
            **key_columns(keys),
            "node": pa.array(node_ids(docs[SOURCE], ordinals), pa.int64()),
            SOURCE: docs[SOURCE],
            DOC_ID: docs[DOC_ID],
        },
        schema=IDS_SCHEMA,
    )


def _resolve_ids(rows: pa.Table) -> pa.Table:
    """Every document of this run with the source of its id's first copy in ``first`` (null on that first
    copy itself); the ids of an earlier index come first and are not returned."""
    rows = rows.sort_by([(c, "ascending") for c in ("key", "key_low", "node")])
    starts = run_starts(rows["key"].to_numpy()) | run_starts(rows["key_low"].to_numpy())
    first = rows[SOURCE].take(pa.array(first_of_run(starts)))
    resolved = rows.append_column("first", pc.if_else(pa.array(starts), None, first))
    return resolved.filter(pc.not_equal(rows["node"], EARLIER)).cast(RESOLVED_SCHEMA)


def _later_copies(rows: pa.Table) -> pa.Table:
    """Of the resolved documents, the later copies of an id: ``(shard, line, first)``."""
    later = rows.filter(pc.is_valid(rows["first"]))
    uris, lines = split_source(later[SOURCE])
    return pa.table(
        {"shard": [shard_key(uri) for uri in uris], "line": pa.array(lines, pa.int64()), "first": later["first"]},
        schema=LATER_SCHEMA,
    )


def _first_copies(rows: pa.Table) -> pa.Table:
    """Of the resolved documents, the first copy of each id: this run's part of the id index."""
    return rows.filter(pc.is_null(rows["first"])).select(INDEX_SCHEMA.names)


def _earlier_ids(rows: pa.Table) -> pa.Table:
    """Rows of an earlier id index as documents read before every shard of this run."""
    count = rows.num_rows
    return pa.table(
        {
            "key": rows["key"],
            "key_low": rows["key_low"],
            "node": pa.array([EARLIER] * count, pa.int64()),
            SOURCE: rows[SOURCE],
            DOC_ID: pa.nulls(count, pa.string()),
        },
        schema=IDS_SCHEMA,
    )


class DuplicateIds(GlobalStage):
    """Quarantines every later copy of an id."""

    name = "duplicate_ids"
    sees = "input"
    index = "id_index"

    def __init__(self, config: DuplicateIdsConfig, run: Any, key: str) -> None:
        super().__init__(config, run, key)
        self.id_index = run.staging.join(self.index)
        self.index_from = run.staging.at(config.index_from) if config.index_from else None
        self.inputs = {"shards": [[shard.uri, shard.version] for shard in run.shards], "index_from": config.index_from}

    def check(self) -> None:
        """An ``index_from`` must be an id index that does not cover the new shards."""
        if self.index_from is not None:
            checked_index(self.index_from, "input", "id", self.run.shards)

    def prepare(self, documents: ray.data.Dataset) -> None:
        """Every id resolved to its first copy (after ``index_from``'s ids) into the run's id index, then the
        later copies into the stage's table; each step unless an earlier attempt finished it for these inputs."""
        resolved = self.run.staging.join(f"{self.name}_resolved")  # a step of the run, not part of the index
        if not finished(self.id_index, self.inputs):
            keys = documents.map_batches(_id_keys, batch_format="pyarrow", fn_kwargs={"ordinals": self.run.ordinals()})
            old = read_index_manifest(self.index_from) if self.index_from else {"shards": []}
            old_parts = index_parts(self.index_from, old) if self.index_from else []
            if old_parts:
                stored = read_step([part.join(KEYS) for part in old_parts], INDEX_SCHEMA)
                keys = keys.union(stored.map_batches(_earlier_ids, batch_format="pyarrow"))
            write_step(by_partition(keys, "key", _resolve_ids, self.config.partitions), resolved)
            write_step(
                read_step(resolved, RESOLVED_SCHEMA).map_batches(_first_copies, batch_format="pyarrow"),
                self.id_index.join(KEYS),
            )
            shards_now = [{"uri": shard.uri, "version": shard.version} for shard in self.run.shards]
            parts = [*(part.uri for part in old_parts), "."]
            write_index_manifest(
                self.id_index, {"format": INDEX_FORMAT, "shards": old["shards"] + shards_now, "parts": parts}
            )
            mark_finished(self.id_index, self.inputs)
        if not finished(self.folder, self.inputs):
            later = read_step(resolved, RESOLVED_SCHEMA).map_batches(_later_copies, batch_format="pyarrow")
            write_step(later, self.folder, partition_cols=["shard"])
            mark_finished(self.folder, self.inputs)

    def operator(self) -> OperatorSpec:
        arguments = {"name": self.name, "table": self.folder}
        return OperatorSpec(f"{self.run.attempt}:{self.key}", LaterIdLookup, arguments, None, lookup=True)

    def facts(self) -> dict[str, Any]:
        return {self.index: {"path": self.index, "files": self.run.output.artifact_files(self.index)}}


class LaterIdLookup(ShardLookup):
    """Turns the later copies of an id into quarantine rows that name where the id was first read."""

    column = "first"
    added_fields: list[pa.Field] = []

    def annotate(self, docs: pa.Table) -> Annotations:
        firsts = self.found(docs)
        if firsts is None:
            return Annotations({})
        reasons = [
            None if first is None else f"duplicate_id: {doc_id} was first read at {first}"
            for doc_id, first in zip(docs[DOC_ID].to_pylist(), firsts, strict=True)
        ]
        return Annotations({}, quarantine_reasons=reasons)
