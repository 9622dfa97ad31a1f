"""Duplicate ids: a ``doc_id`` names one document of the corpus, so a record whose id an earlier record
(in input order: shards by URI, then lines) already has is quarantined as ``duplicate_id``.

A global stage that runs first, on the input as read: its pass hashes each document's id, shuffles by the
hash with Ray Data (nothing is collected on the driver) and writes, per shard, the lines whose id came
earlier and where it came first: ``(shard, line, first)``. Its operator turns those lines into quarantine
rows, so that no later stage (nor a later global pass) ever sees two documents with one id, and the counts
still reconcile. Ids derived from url and text (records without an ``id``) collide only for identical
records. ``input.duplicate_ids: allow`` leaves the stage out.
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import ray
import xxhash
from pydantic import Field

from shardflow.arrays import first_of_run, run_starts
from shardflow.config import StrictModel
from shardflow.operators.base import Annotations, GlobalStage, OperatorSpec
from shardflow.operators.dedup.keys import key_columns, node_ids
from shardflow.operators.dedup.lookup import ShardLookup
from shardflow.operators.dedup.shuffle import by_partition
from shardflow.schema import DOC_ID, QUARANTINE_REASON, SOURCE, split_source
from shardflow.shards import shard_key
from shardflow.steps import finished, mark_finished, write_step

__all__ = ["DuplicateIds", "DuplicateIdsConfig"]

IDS_SCHEMA = pa.schema(
    [("key", pa.uint64()), ("key_low", pa.uint64()), ("node", pa.int64()), (SOURCE, pa.string()), (DOC_ID, pa.string())]
)
LATER_SCHEMA = pa.schema([("shard", pa.string()), ("line", pa.int64()), ("first", pa.string())])


class DuplicateIdsConfig(StrictModel):
    """The duplicate-id pass, which ``input.duplicate_ids: quarantine`` (the default) puts before every stage."""

    op: Literal["duplicate_ids"] = "duplicate_ids"
    partitions: int = Field(8, ge=1, description="Shuffle partitions.")


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


def _later_copies(rows: pa.Table) -> pa.Table:
    """Of each group of documents sharing an id, all but the earliest, with the earliest one's source."""
    rows = rows.sort_by([(c, "ascending") for c in ("key", "key_low", "node")])
    starts = run_starts(rows["key"].to_numpy()) | run_starts(rows["key_low"].to_numpy())
    first = rows[SOURCE].take(pa.array(first_of_run(starts)))
    later = pa.array(~starts)
    uris, lines = split_source(rows[SOURCE].filter(later))
    return pa.table(
        {"shard": [shard_key(uri) for uri in uris], "line": pa.array(lines, pa.int64()), "first": first.filter(later)},
        schema=LATER_SCHEMA,
    )


class DuplicateIds(GlobalStage):
    """Quarantines every later copy of an id."""

    name = "duplicate_ids"
    sees = "input"

    def prepare(self, documents: ray.data.Dataset) -> None:
        """The table of later copies of every id, unless an earlier attempt wrote it for exactly these shards."""
        inputs = {"shards": [[shard.uri, shard.version] for shard in self.run.shards]}
        if finished(self.folder, inputs):
            return
        keys = documents.map_batches(_id_keys, batch_format="pyarrow", fn_kwargs={"ordinals": self.run.ordinals()})
        write_step(
            by_partition(keys, "key", _later_copies, self.config.partitions), self.folder, partition_cols=["shard"]
        )
        mark_finished(self.folder, inputs)

    def operator(self) -> OperatorSpec:
        arguments = {"name": self.name, "table": self.folder}
        return OperatorSpec(f"{self.run.attempt}:{self.key}", LaterIdLookup, arguments, None, lookup=True)


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
