"""Exact dedup: one document per group of texts that are equal after normalisation, across all shards.

Two steps. First, before the DAG, a global pass over every shard computes each document's key (xxh128 of
the text after Unicode NFKC, case folding and whitespace collapsing), shuffles by key with Ray Data
(``groupby(key).map_groups``; nothing is collected on the driver) and keeps, per group, the lowest
``doc_id`` (ties: the earliest source). It writes only the duplicates, partitioned by shard, as
``(line, dup_cluster)``: a table that is usually far smaller than the corpus. Then, inside the streaming
DAG, the ``exact_dedup`` operator looks up each batch's shards in that table, sets ``dup_cluster`` (the kept
document's id) and ``dup_rep`` on every document, and drops the duplicates.

Because the first step sees every shard, a resumed run (which re-reads only unfinished shards) makes the
same choices as an uninterrupted one. Keys are computed over all readable documents, before language ID:
copies of one text get the same verdict from every row-local stage anyway.
"""

from __future__ import annotations

import unicodedata
from typing import Literal

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import xxhash
from pyarrow.fs import FSSpecHandler, PyFileSystem
from pydantic import Field

from shardflow.config import Resources, StrictModel
from shardflow.errors import OutputStateError
from shardflow.operators.base import Annotations, Operator
from shardflow.operators.readers import ReaderConfig, Shard, ShardDatasource, shard_key
from shardflow.schema import DEDUP_FIELDS, DOC_ID, QUARANTINE_REASON, SOURCE, split_source
from shardflow.storage import StorageConfig, filesystem, join, put_bytes

DONE = "_DONE.json"
KEYS_SCHEMA = pa.schema([("key", pa.string()), (DOC_ID, pa.string()), ("shard", pa.string()), ("line", pa.int64())])
DUPLICATES_SCHEMA = pa.schema([("shard", pa.string()), ("line", pa.int64()), ("dup_cluster", pa.string())])


class ExactDedupConfig(StrictModel):
    """An ``exact_dedup`` stage. ``table`` is filled in by the pipeline (where step one wrote its result)."""

    op: Literal["exact_dedup"] = "exact_dedup"
    table: str | None = Field(None, exclude=True, description="Set by the pipeline; not a user setting.")
    resources: Resources = Resources()


def normalise(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed: the form two texts must share to be exact duplicates."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def dedup_key(text: str) -> str:
    return xxhash.xxh128_hexdigest(normalise(text).encode("utf-8"))


def document_keys(batch: pa.Table) -> pa.Table:
    """``(key, doc_id, shard, line)`` for every document of the batch (quarantined rows have no text)."""
    docs = batch.filter(pc.is_null(batch[QUARANTINE_REASON]))
    uris, lines = split_source(docs[SOURCE])
    return pa.table(
        {
            "key": [dedup_key(text) for text in docs["text"].to_pylist()],
            DOC_ID: docs[DOC_ID],
            "shard": [shard_key(uri) for uri in uris],
            "line": pa.array(lines, pa.int64()),
        },
        schema=KEYS_SCHEMA,
    )


def duplicates_in_group(group: pa.Table) -> pa.Table:
    """All members of one key group but the kept one, each with the kept one's id."""
    if group.num_rows < 2:
        return DUPLICATES_SCHEMA.empty_table()
    ordered = group.sort_by([(DOC_ID, "ascending"), ("shard", "ascending"), ("line", "ascending")])
    kept = ordered[DOC_ID][0].as_py()
    rest = ordered.slice(1)
    return pa.table(
        {"shard": rest["shard"], "line": rest["line"], "dup_cluster": pa.array([kept] * rest.num_rows, pa.string())},
        schema=DUPLICATES_SCHEMA,
    )


def ensure_duplicate_table(table: str, shards: list[Shard], reader: ReaderConfig, storage: StorageConfig) -> None:
    """Run step one unless an earlier attempt finished it for exactly these inputs."""
    fs, path = filesystem(table, storage)
    inputs = [[shard.uri, shard.version] for shard in shards]
    done = join(path, DONE)
    if fs.exists(done):
        if orjson.loads(fs.cat_file(done))["inputs"] == inputs:
            return
        raise OutputStateError(
            "the inputs changed since this interrupted run computed its duplicates; "
            "rerun with --set output.if_exists=overwrite"
        )
    if fs.exists(path):
        fs.rm(path, recursive=True)
    dataset = ray.data.read_datasource(ShardDatasource(shards, reader, storage))
    keys = dataset.map_batches(document_keys, batch_format="pyarrow")
    duplicates = keys.groupby("key").map_groups(duplicates_in_group, batch_format="pyarrow")
    duplicates.write_parquet(path, partition_cols=["shard"], filesystem=PyFileSystem(FSSpecHandler(fs)))
    put_bytes(join(table, DONE), orjson.dumps({"inputs": inputs}), storage)


class ExactDedup(Operator):
    """Sets ``dup_cluster`` and ``dup_rep`` on every document; drops all but one copy of each text."""

    name = "exact_dedup"
    added_fields = DEDUP_FIELDS

    def __init__(self, config: ExactDedupConfig, storage: StorageConfig) -> None:
        if config.table is None:
            raise ValueError("exact_dedup needs the duplicate table that the pipeline computes first")
        self.table, self.storage = config.table, storage
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
        """Line -> kept id for one shard's duplicates, read once per actor (the few latest shards stay)."""
        if shard not in self.cache:
            if len(self.cache) >= 64:
                self.cache.pop(next(iter(self.cache)))
            fs, path = filesystem(join(self.table, f"shard={shard}"), self.storage)
            found: dict[int, str] = {}
            for part in sorted(fs.glob(join(path, "*.parquet"))):
                with fs.open(part, "rb") as handle:
                    rows = pq.read_table(handle, columns=["line", "dup_cluster"])
                found.update(zip(rows["line"].to_pylist(), rows["dup_cluster"].to_pylist(), strict=True))
            self.cache[shard] = found
        return self.cache[shard]
