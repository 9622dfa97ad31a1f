"""The streaming half of every dedup stage: look each document up in a duplicate table.

A global step (exact or fuzzy) writes the documents to remove as ``(shard, line, dup_cluster)`` parquet,
partitioned by shard, where ``dup_cluster`` is the id of the document kept in their place. Inside the DAG
the stage's operator reads the table of each batch's shards (once per actor; the few latest shards stay
cached), sets ``dup_cluster`` and ``dup_rep`` on every document, and drops the duplicates.
"""

from __future__ import annotations

import pyarrow as pa

from shardflow.operators.base import Annotations, Operator
from shardflow.operators.dedup.steps import shard_partition
from shardflow.operators.readers import shard_key
from shardflow.schema import DEDUP_FIELDS, DOC_ID, SOURCE, split_source
from shardflow.storage import StorageConfig

DUPLICATES_SCHEMA = pa.schema([("shard", pa.string()), ("line", pa.int64()), ("dup_cluster", pa.string())])
CACHED_SHARDS = 64


class DuplicateLookup(Operator):
    """Sets ``dup_cluster`` and ``dup_rep`` on every document; drops those the table lists."""

    added_fields = DEDUP_FIELDS
    stateless = True

    def __init__(self, table: str | None, storage: StorageConfig) -> None:
        if table is None:
            raise ValueError(f"{self.name} needs the duplicate table that the pipeline computes first")
        self.table, self.storage = table, storage
        self.cache: dict[str, dict[int, str]] = {}

    def annotate(self, docs: pa.Table) -> Annotations:
        uris, lines = split_source(docs[SOURCE])
        clusters, reasons = [], []
        for doc_id, uri, line in zip(docs[DOC_ID].to_pylist(), uris, lines, strict=True):
            kept = self.duplicates_of(shard_key(uri)).get(line)
            clusters.append(kept or doc_id)
            reasons.append(None if kept is None else "duplicate")
        return Annotations(
            {"dup_cluster": pa.array(clusters, pa.string()), "dup_rep": pa.array([r is None for r in reasons])},
            drop_reasons=reasons,
        )

    def duplicates_of(self, shard: str) -> dict[int, str]:
        """Line -> kept id for one shard's duplicates."""
        if shard not in self.cache:
            if len(self.cache) >= CACHED_SHARDS:
                self.cache.pop(next(iter(self.cache)))
            rows = shard_partition(self.table, shard, self.storage, ["line", "dup_cluster"])
            found = dict(zip(rows["line"].to_pylist(), rows["dup_cluster"].to_pylist(), strict=True))
            self.cache[shard] = found
        return self.cache[shard]
