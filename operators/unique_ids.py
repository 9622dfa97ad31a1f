"""Duplicate ids: a ``doc_id`` names one document of the corpus, so a record whose id an earlier record
(in input order: shards by URI, then lines) already has is quarantined as ``duplicate_id``.

Like exact dedup's first step, a global pass before the streaming DAG reads every shard, hashes each
document's id, shuffles by the hash with Ray Data (nothing is collected on the driver) and writes, per
shard, the lines whose id came earlier and where it came first: ``(shard, line, first)``. Every reader of
the run (the dedup steps' passes too) then turns those lines into quarantine rows, so no stage ever sees two
documents with one id and the counts still reconcile. Ids derived from url and text (records without an
``id``) collide only for identical records. ``input.duplicate_ids: allow`` skips the pass.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from shardflow.operators.dedup.steps import (
    by_partition,
    finished,
    first_of_run,
    key_columns,
    mark_finished,
    node_ids,
    run_starts,
    write_step,
)
from shardflow.operators.readers import ReaderConfig, Shard, read_documents, shard_key
from shardflow.schema import DOC_ID, QUARANTINE_REASON, SOURCE, split_source
from shardflow.storage import StorageConfig

IDS_SCHEMA = pa.schema(
    [("key", pa.uint64()), ("key_low", pa.uint64()), ("node", pa.int64()), (SOURCE, pa.string()), (DOC_ID, pa.string())]
)
LATER_SCHEMA = pa.schema([("shard", pa.string()), ("line", pa.int64()), ("first", pa.string())])
PARTITIONS = 8


def id_keys(batch: pa.Table, ordinals: dict[str, int]) -> pa.Table:
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


def later_copies(rows: pa.Table) -> pa.Table:
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


def ensure_duplicate_ids(table: str, shards: list[Shard], reader: ReaderConfig, storage: StorageConfig) -> None:
    """Write the table of later copies of every id unless an earlier attempt did, for exactly these shards."""
    inputs = {"shards": [[shard.uri, shard.version] for shard in shards]}
    if finished(table, inputs, storage):
        return
    ordinals = {shard.uri: position for position, shard in enumerate(shards)}
    keys = read_documents(shards, reader, storage).map_batches(
        id_keys, batch_format="pyarrow", fn_kwargs={"ordinals": ordinals}
    )
    write_step(by_partition(keys, "key", later_copies, PARTITIONS), table, storage, partition_cols=["shard"])
    mark_finished(table, inputs, storage)
