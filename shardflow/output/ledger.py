"""A folder of rows written per shard, and the books that tell which shards it holds whole.

Read tasks leave one marker per shard (``shards/<key>.json``: the rows the shard held); write tasks write
data files named by (shard, first line), so that a retried task overwrites rather than duplicates, and then
a stats file (``stats/<uuid>.json``) listing what they wrote. A shard is finished when the rows its files
hold add up to its marker, so a rerun after a crash keeps finished shards and redoes the rest. The corpus
output's staging area is one such folder; so is a run's materialised copy of its documents.
"""

from __future__ import annotations

import time
import uuid
from abc import ABC, abstractmethod
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa
from ray.data import Datasink

from shardflow import progress
from shardflow.shards import Shard, shard_key
from shardflow.storage import Location

MARKERS, STATS = "shards", "stats"


@dataclass(frozen=True)
class ShardLedger:
    """The folder, and the subfolders that hold its data files (everything else in it is left alone)."""

    folder: Location
    data: tuple[str, ...]

    @property
    def markers(self) -> Location:
        return self.folder.join(MARKERS)

    def record(self, written: list[dict[str, Any]]) -> None:
        """What one write task wrote: ``path`` (relative to the folder), ``shard`` (URI) and ``rows`` per file."""
        self.folder.join(STATS, f"{uuid.uuid4().hex}.json").put_bytes(orjson.dumps(written))

    def entries(self) -> dict[str, dict[str, Any]]:
        """What write tasks reported, by file; a retried task reports the same file twice, counted once."""
        entries: dict[str, dict[str, Any]] = {}
        for stats in self.folder.join(STATS).files(".json"):
            for entry in orjson.loads(stats.read_bytes()):
                entries[entry["path"]] = entry
        return entries

    def marked(self) -> dict[str, dict[str, Any]]:
        """Shard URI -> its marker (rows read), for the shards a read task read through."""
        return {marker["uri"]: marker for marker in (file.read_json() for file in self.markers.files(".json"))}

    def finished(self, shards: list[Shard], entries: dict[str, dict[str, Any]], marked: dict[str, Any]) -> set[str]:
        """The shards whose written rows add up exactly to the rows their read task counted."""
        written: Counter[str] = Counter()
        for entry in entries.values():
            written[entry["shard"]] += entry["rows"]
        return {
            shard.uri for shard in shards if shard.uri in marked and written[shard.uri] == marked[shard.uri]["rows"]
        }

    def keep_finished(self, shards: list[Shard]) -> list[Shard]:
        """Keep what an earlier attempt finished, clear the rest; return the shards still to write."""
        entries, marked = self.entries(), self.marked()
        done = self.finished(shards, entries, marked)
        keep = {path: entry for path, entry in entries.items() if entry["shard"] in done}
        for folder in self.data:
            for path in self.folder.join(folder).relative_files():
                if f"{folder}/{path}" not in keep:
                    self.folder.join(folder, path).remove()
        for marker in self.markers.files(".json"):
            if marker.read_json()["uri"] not in done:
                marker.remove()
        self.folder.join(STATS).remove()
        if keep:
            self.folder.join(STATS, "resumed.json").put_bytes(orjson.dumps(list(keep.values())))
        return [shard for shard in shards if shard.uri not in done]


def grouped(block: pa.Table, labels: list[Hashable], lines: list[int]) -> Iterable[tuple[Any, int, pa.Table]]:
    """The rows of ``block`` by label (one per row), each group with the line of its first row: the rows of
    one file, named by (shard, first line)."""
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for row, label in enumerate(labels):
        groups[label].append(row)
    for label, rows in groups.items():
        yield label, lines[rows[0]], block.take(pa.array(rows, pa.int64()))


class LedgerSink(Datasink, ABC):
    """Writes each block's rows to files under a ledger's folder and records them; which rows go to which
    file, and what is written of them, is the subclass's."""

    def __init__(self, ledger: ShardLedger, compression: str) -> None:
        self.ledger = ledger
        self.compression = None if compression == "none" else compression

    @abstractmethod
    def files(self, block: pa.Table) -> Iterable[tuple[str, pa.Table, dict[str, Any]]]:
        """``(path relative to the folder, the table to write, facts for its stats entry)`` per file of a
        non-empty block; the facts name the ``shard`` (URI) and count its ``rows``."""

    def write(self, blocks: Iterable[pa.Table], ctx: Any) -> list[dict[str, Any]]:
        written = []
        for block in blocks:
            if block.num_rows:
                written += [self._write_file(path, table, facts) for path, table, facts in self.files(block)]
                progress.report(progress.WRITE, block.num_rows)
        if written:
            self.ledger.record(written)
        return written

    def write_file(self, where: Location, table: pa.Table) -> None:
        """Write one file's rows (parquet; a subclass may write other formats)."""
        where.write_table(table, self.compression)

    def _write_file(self, path: str, table: pa.Table, facts: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        self.write_file(self.ledger.folder.join(path), table)
        if "seconds" in facts:
            facts["seconds"]["write"] = facts["seconds"].get("write", 0.0) + time.perf_counter() - started
        return {"path": path, **facts}


def file_name(uri: str, first_line: int, suffix: str = ".parquet") -> str:
    """The name of the file of one shard's rows from ``first_line`` on: a retry writes the same name."""
    return f"{shard_key(uri)}-{first_line:010d}{suffix}"
