"""Exact dedup: one document per group of texts that are equal after normalisation, across all shards.

Two steps. First, before the DAG, a global pass over every shard computes each document's key (xxh128 of
the text after Unicode NFKC, case folding and whitespace collapsing), shuffles by key with Ray Data
(``by_partition``: nothing is collected on the driver) and keeps, per key, the lowest ``doc_id`` (ties:
the earliest source). It writes only the duplicates, partitioned by shard, as ``(line, dup_cluster)``: a
table that is usually far smaller than the corpus. Then, inside the streaming DAG, the ``exact_dedup``
operator (a ``DuplicateLookup``) drops the listed documents.

Because the first step sees every shard, a resumed run (which re-reads only unfinished shards) makes the
same choices as an uninterrupted one. Keys are computed over all readable documents, before language ID:
copies of one text get the same verdict from every row-local stage anyway.
"""

from __future__ import annotations

import unicodedata
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from pydantic import Field

from shardflow.config import Resources, StrictModel
from shardflow.operators.dedup.lookup import DUPLICATES_SCHEMA, DuplicateLookup
from shardflow.operators.dedup.steps import by_partition, finished, first_of_run, mark_finished, run_starts, write_step
from shardflow.operators.readers import ReaderConfig, Shard, read_documents, shard_key
from shardflow.schema import DOC_ID, QUARANTINE_REASON, SOURCE, split_source
from shardflow.storage import StorageConfig

KEYS_SCHEMA = pa.schema(
    [
        ("key", pa.uint64()),
        ("key_low", pa.uint64()),
        (DOC_ID, pa.string()),
        ("shard", pa.string()),
        ("line", pa.int64()),
    ]
)


class ExactDedupConfig(StrictModel):
    """An ``exact_dedup`` stage. ``table`` is filled in by the pipeline (where step one wrote its result)."""

    op: Literal["exact_dedup"] = "exact_dedup"
    table: str | None = Field(None, exclude=True, description="Set by the pipeline; not a user setting.")
    partitions: int = Field(8, ge=1, description="Shuffle partitions of step one.")
    resources: Resources = Resources()


def normalise(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed: the form two texts must share to be exact duplicates."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def dedup_key(text: str) -> int:
    """The 128-bit key of a text's normal form."""
    return xxhash.xxh128_intdigest(normalise(text).encode("utf-8"))


def document_keys(batch: pa.Table) -> pa.Table:
    """``(key, key_low, doc_id, shard, line)`` for every document of the batch (quarantined rows have no text)."""
    docs = batch.filter(pc.is_null(batch[QUARANTINE_REASON]))
    uris, lines = split_source(docs[SOURCE])
    keys = [dedup_key(text) for text in docs["text"].to_pylist()]
    return pa.table(
        {
            "key": pa.array([key >> 64 for key in keys], pa.uint64()),
            "key_low": pa.array([key & ((1 << 64) - 1) for key in keys], pa.uint64()),
            DOC_ID: docs[DOC_ID],
            "shard": [shard_key(uri) for uri in uris],
            "line": pa.array(lines, pa.int64()),
        },
        schema=KEYS_SCHEMA,
    )


def duplicates_in_partition(rows: pa.Table) -> pa.Table:
    """All members of each key group but the kept one (lowest id, then earliest source), with its id."""
    rows = rows.sort_by([(c, "ascending") for c in ("key", "key_low", DOC_ID, "shard", "line")])
    high, low = rows["key"].to_numpy(), rows["key_low"].to_numpy()
    starts = run_starts(high) | run_starts(low)
    kept = rows[DOC_ID].take(pa.array(first_of_run(starts)))
    duplicates = pa.array(~starts)
    return pa.table(
        {
            "shard": rows["shard"].filter(duplicates),
            "line": rows["line"].filter(duplicates),
            "dup_cluster": kept.filter(duplicates),
        },
        schema=DUPLICATES_SCHEMA,
    )


def ensure_duplicate_table(
    table: str, shards: list[Shard], reader: ReaderConfig, storage: StorageConfig, partitions: int
) -> None:
    """Run step one unless an earlier attempt finished it for exactly these inputs."""
    inputs = [[shard.uri, shard.version] for shard in shards]
    if finished(table, inputs, storage):
        return
    dataset = read_documents(shards, reader, storage)
    keys = dataset.map_batches(document_keys, batch_format="pyarrow")
    duplicates = by_partition(keys, "key", duplicates_in_partition, partitions)
    write_step(duplicates, table, storage, partition_cols=["shard"])
    mark_finished(table, inputs, storage)


class ExactDedup(DuplicateLookup):
    """Drops all but one copy of each text (the table says which)."""

    name = "exact_dedup"

    def __init__(self, config: ExactDedupConfig, storage: StorageConfig) -> None:
        super().__init__(config.table, storage)
