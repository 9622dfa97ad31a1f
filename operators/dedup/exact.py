"""Exact dedup: one document per group of texts that are equal after normalisation, across all shards.

A global stage. First, before the DAG, a pass over every shard computes each document's key (xxh128 of
the text after Unicode NFKC, case folding and whitespace collapsing), shuffles by key with Ray Data
(``by_partition``: nothing is collected on the driver) and keeps, per key, the earliest document in input
order (shards by URI, then lines: the rule fuzzy dedup follows too). It writes every document's key as
``(shard, line, dup_cluster, key, key_low, doc_id)``, ``dup_cluster`` being the kept document's id on the
duplicates and null on kept documents: the output's ``exact_index/``. The duplicates among them, partitioned
by shard, are the table that the ``exact_dedup`` operator (a ``DuplicateLookup``) reads inside the streaming
DAG to drop them.

With ``index_from`` a later run adds the kept keys of an earlier output's index to its shuffle, ahead of
every new document, so a new document whose text the old corpus holds is dropped in favour of the old one;
its index holds this run's keys and lists the old index's folders as its earlier ``parts``.

Because the first step sees every shard, a resumed run (which re-reads only unfinished shards) makes the
same choices as an uninterrupted one. Keys are computed over the input as read (``sees = "input"``), wherever
the stage stands: copies of one text get the same verdict from every stage before it anyway.
"""

from __future__ import annotations

import unicodedata
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import xxhash
from pydantic import Field

from shardflow.arrays import first_of_run, run_starts
from shardflow.config import Resources, StrictModel
from shardflow.operators.base import GlobalStage, OperatorSpec, RunContext
from shardflow.operators.dedup.index import (
    checked_index,
    index_parts,
    read_index_manifest,
    write_index_manifest,
)
from shardflow.operators.dedup.keys import key_columns, node_ids
from shardflow.operators.dedup.lookup import DUPLICATES_SCHEMA, DuplicateLookup
from shardflow.operators.dedup.shuffle import by_partition
from shardflow.schema import DOC_ID, QUARANTINE_REASON, SOURCE, split_source
from shardflow.shards import shard_key
from shardflow.steps import finished, mark_finished, read_step, write_step

__all__ = ["ExactDedup", "ExactDedupConfig", "dedup_key", "normalise"]

KEYS_SCHEMA = pa.schema(
    [
        ("key", pa.uint64()),
        ("key_low", pa.uint64()),
        (DOC_ID, pa.string()),
        ("shard", pa.string()),
        ("line", pa.int64()),
        ("node", pa.int64()),  # input order; -1 for the keys of an earlier output's index
    ]
)
TABLE_SCHEMA = pa.schema([*DUPLICATES_SCHEMA, ("key", pa.uint64()), ("key_low", pa.uint64()), (DOC_ID, pa.string())])
INDEX_FORMAT = "shardflow-exact-index/1"
KEYS = "keys"  # the index's parquet folder


class ExactDedupConfig(StrictModel):
    """An ``exact_dedup`` stage."""

    op: Literal["exact_dedup"] = "exact_dedup"
    index_from: str | None = Field(
        None, description="The exact_index/ of an earlier output: drop new documents whose text it holds (incremental)."
    )
    partitions: int = Field(8, ge=1, description="Shuffle partitions of step one.")
    resources: Resources = Resources()


def normalise(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed: the form two texts must share to be exact duplicates."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def dedup_key(text: str) -> int:
    """The 128-bit key of a text's normal form."""
    return xxhash.xxh128_intdigest(normalise(text).encode("utf-8"))


def _document_keys(batch: pa.Table, ordinals: dict[str, int]) -> pa.Table:
    """``(key, key_low, doc_id, shard, line, node)`` for every document of the batch (quarantined rows have
    no text)."""
    docs = batch.filter(pc.is_null(batch[QUARANTINE_REASON]))
    uris, lines = split_source(docs[SOURCE])
    keys = [dedup_key(text) for text in docs["text"].to_pylist()]
    return pa.table(
        {
            **key_columns(keys),
            DOC_ID: docs[DOC_ID],
            "shard": [shard_key(uri) for uri in uris],
            "line": pa.array(lines, pa.int64()),
            "node": pa.array(node_ids(docs[SOURCE], ordinals), pa.int64()),
        },
        schema=KEYS_SCHEMA,
    )


def _index_keys(batch: pa.Table) -> pa.Table:
    """An earlier output's kept keys as rows that sort before every new document of their key."""
    kept = batch.filter(pc.is_null(batch["dup_cluster"]))
    return pa.table(
        {
            "key": kept["key"],
            "key_low": kept["key_low"],
            DOC_ID: kept[DOC_ID],
            "shard": pa.nulls(kept.num_rows, pa.string()),
            "line": pa.nulls(kept.num_rows, pa.int64()),
            "node": pa.array(np.full(kept.num_rows, -1, np.int64)),
        },
        schema=KEYS_SCHEMA,
    )


def _resolve_partition(rows: pa.Table) -> pa.Table:
    """Every new document of the partition with its key; ``dup_cluster`` = the id of its group's earliest
    document (an indexed one first) on all members but that one."""
    rows = rows.sort_by([(c, "ascending") for c in ("key", "key_low", "node")])
    high, low = rows["key"].to_numpy(), rows["key_low"].to_numpy()
    starts = run_starts(high) | run_starts(low)
    kept = rows[DOC_ID].take(pa.array(first_of_run(starts)))
    new = pc.greater_equal(rows["node"], 0)
    return pa.table(
        {
            "shard": rows["shard"].filter(new),
            "line": rows["line"].filter(new),
            "dup_cluster": pc.if_else(pa.array(starts), pa.nulls(len(starts), pa.string()), kept).filter(new),
            "key": rows["key"].filter(new),
            "key_low": rows["key_low"].filter(new),
            DOC_ID: rows[DOC_ID].filter(new),
        },
        schema=TABLE_SCHEMA,
    )


def _duplicates_only(keys: pa.Table) -> pa.Table:
    return keys.filter(pc.is_valid(keys["dup_cluster"])).select(DUPLICATES_SCHEMA.names)


class ExactDedup(GlobalStage):
    """Drops all but one copy of each text (the earliest in input order, or the one an earlier run kept)."""

    name = "exact_dedup"
    sees = "input"
    index = "exact_index"

    def __init__(self, config: ExactDedupConfig, run: RunContext, key: str) -> None:
        super().__init__(config, run, key)
        self.table = self.folder
        self.keys_index = run.staging.join(self.index)
        self.index_from = run.staging.at(config.index_from) if config.index_from else None
        self.inputs = {"shards": [[shard.uri, shard.version] for shard in run.shards], "index_from": config.index_from}

    def check(self) -> None:
        """An ``index_from`` must be an exact index that does not cover the new shards."""
        if self.index_from is not None:
            checked_index(self.index_from, self.key, "exact", self.run.shards)

    def prepare(self, documents: ray.data.Dataset) -> None:
        """Step one unless an earlier attempt finished it for exactly these inputs: every key into the run's
        exact index (with ``index.json``), then the duplicates among them into the stage's table."""
        if not finished(self.keys_index, self.inputs):
            self._index(documents)
            mark_finished(self.keys_index, self.inputs)
        if not finished(self.table, self.inputs):
            keys = read_step(self.keys_index.join(KEYS), TABLE_SCHEMA)
            duplicates = keys.map_batches(_duplicates_only, batch_format="pyarrow")
            write_step(duplicates, self.table, partition_cols=["shard"])
            mark_finished(self.table, self.inputs)

    def _index(self, documents: ray.data.Dataset) -> None:
        """Every document's key, and its group's kept id on duplicates, after the kept keys of ``index_from``'s
        parts (which it lists as its own earlier parts: nothing is copied)."""
        keys = documents.map_batches(
            _document_keys, batch_format="pyarrow", fn_kwargs={"ordinals": self.run.ordinals()}
        )
        old = read_index_manifest(self.index_from) if self.index_from else {"shards": []}
        old_parts = index_parts(self.index_from, old) if self.index_from else []
        if old_parts:
            stored = read_step([part.join(KEYS) for part in old_parts], TABLE_SCHEMA)
            keys = keys.union(stored.map_batches(_index_keys, batch_format="pyarrow"))
        resolved = by_partition(keys, "key", _resolve_partition, self.config.partitions)
        write_step(resolved, self.keys_index.join(KEYS))
        shards_now = [{"uri": shard.uri, "version": shard.version} for shard in self.run.shards]
        manifest = {
            "format": INDEX_FORMAT,
            "shards": old["shards"] + shards_now,
            "parts": [*(part.uri for part in old_parts), "."],
        }
        write_index_manifest(self.keys_index, manifest)

    def operator(self) -> OperatorSpec:
        arguments = {"name": self.name, "table": self.table}
        return OperatorSpec(f"{self.run.attempt}:{self.key}", DuplicateLookup, arguments, None, lookup=True)

    def facts(self) -> dict[str, Any]:
        return {self.index: {"path": self.index, "files": self.run.output.artifact_files(self.index)}}
