"""A run's documents as the stages before a global stage leave them, kept in staging.

A global stage that must see the documents after earlier stages (fuzzy dedup after language ID) reads them
from here, and so does the rest of the run: every stage before it runs once per document instead of once
for the global pass and again in the stream (as NeMo Curator's workflows materialise between stages). The
folder is a ``ShardLedger`` (a crash costs only the shards not yet whole); rows keep every column, the
per-stage ``_seconds_`` ones included, so the manifest still says where the time went.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa

from shardflow.output.ledger import LedgerSink, ShardLedger, grouped
from shardflow.schema import SOURCE, split_source
from shardflow.shards import Shard, shard_key
from shardflow.storage import Location

__all__ = ["DocumentsSink", "documents_ledger", "read_documents_of"]

ROWS = "rows"


def documents_ledger(folder: Location) -> ShardLedger:
    return ShardLedger(folder, (ROWS,))


class DocumentsSink(LedgerSink):
    """Every row as it is, one folder per shard, one file per (shard, first line) of a block."""

    def get_name(self) -> str:
        return "WriteDocuments"

    def files(self, block: pa.Table) -> Iterable[tuple[str, pa.Table, dict[str, Any]]]:
        uris, lines = split_source(block[SOURCE])
        for uri, first_line, rows in grouped(block, uris, lines):
            path = f"{ROWS}/shard={shard_key(uri)}/{first_line:010d}.parquet"
            yield path, rows, {"shard": uri, "rows": rows.num_rows}


def read_documents_of(shard: Shard, folder: Location) -> Iterator[pa.Table]:
    """One shard's materialised rows, file by file in line order."""
    for file in folder.join(ROWS, f"shard={shard.key}").files(".parquet"):
        yield file.read_table()
