"""The streaming half of every dedup stage: look each document up in a duplicate table.

A global pass (exact or fuzzy) writes the documents to remove as ``(shard, line, dup_cluster)`` parquet,
partitioned by shard, where ``dup_cluster`` is the id of the document kept in their place. Inside the DAG
the stage's operator reads the table of each batch's shards (once per worker; the few latest shards stay
cached), sets ``dup_cluster`` and ``dup_rep`` on every document, and drops the duplicates.
"""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from shardflow.operators.base import Annotations, Operator
from shardflow.schema import DEDUP_FIELDS, DOC_ID, SOURCE, split_source
from shardflow.shards import shard_key
from shardflow.steps import shard_partition
from shardflow.storage import Location

__all__ = ["DUPLICATES_SCHEMA", "DuplicateLookup", "ShardLookup"]

DUPLICATES_SCHEMA = pa.schema([("shard", pa.string()), ("line", pa.int64()), ("dup_cluster", pa.string())])
CACHED_SHARDS = 64


class ShardTable:
    """``line -> value`` per shard from a table partitioned by shard, the latest shards cached."""

    def __init__(self, table: Location, value: str) -> None:
        self.table, self.value = table, value
        self.cache: dict[str, dict[int, str]] = {}

    def of(self, uri: str) -> dict[int, str]:
        shard = shard_key(uri)
        if shard not in self.cache:
            if len(self.cache) >= CACHED_SHARDS:
                self.cache.pop(next(iter(self.cache)))
            rows = shard_partition(self.table, shard, ["line", self.value])
            self.cache[shard] = dict(zip(rows["line"].to_pylist(), rows[self.value].to_pylist(), strict=True))
        return self.cache[shard]


class ShardLookup(Operator):
    """A stateless operator that looks every document up, by its shard and line, in a table a global pass
    wrote (partitioned by shard); what it does with what it finds is the subclass's."""

    column: ClassVar[str]  # the table's column of values
    stateless = True

    def __init__(self, name: str, table: Location) -> None:
        self.name = name
        self.table = ShardTable(table, self.column)

    def found(self, docs: pa.Table) -> list[str | None] | None:
        """Per document, the table's value for it; None when no shard of the batch has any row in the table."""
        uris, lines = split_source(docs[SOURCE])
        tables = {uri: self.table.of(uri) for uri in set(uris)}
        if not any(tables.values()):  # most shards: nothing to look up per row
            return None
        return [tables[uri].get(line) for uri, line in zip(uris, lines, strict=True)]


class DuplicateLookup(ShardLookup):
    """Sets ``dup_cluster`` and ``dup_rep`` on every document; drops those the table lists."""

    column = "dup_cluster"
    added_fields = DEDUP_FIELDS

    def annotate(self, docs: pa.Table) -> Annotations:
        kept = pa.array(self.found(docs) or [None] * docs.num_rows, pa.string())
        representative = pc.is_null(kept)
        return Annotations(
            {"dup_cluster": pc.coalesce(kept, docs[DOC_ID].combine_chunks()), "dup_rep": representative},
            drop_reasons=pc.if_else(representative, pa.scalar(None, pa.string()), "duplicate").to_pylist(),
        )
