"""Input shards: listing them (driver), and reading them in Ray read tasks that count what each shard held.

Shards are listed on the driver (names and sizes only) and read in Ray read tasks: each task streams one or
more whole shards as Arrow blocks, and after each shard leaves a marker with the number of rows it held. A
shard counts as done only when the rows written for it add up to that number, which is how a rerun tells a
finished shard from one that was cut off. What a shard's rows are is the caller's: the readers parse input
files; a run that materialised its documents reads them back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson
import pyarrow as pa
import ray
import xxhash
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from shardflow.errors import InputError
from shardflow.storage import Location, to_uri

__all__ = ["SHARD_SUFFIXES", "Shard", "bundles", "check_unchanged", "list_shards", "read_shards", "shard_key"]

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
COMPRESSED_SUFFIXES = ("", ".zst", ".zstd", ".gz")
SHARD_SUFFIXES = tuple(s + c for s in JSONL_SUFFIXES for c in COMPRESSED_SUFFIXES) + (".parquet",)

START_OVER = "run again with --set output.if_exists=overwrite to start over on the inputs as they are now"

ShardRows = Callable[["Shard"], Iterator[pa.Table]]


@dataclass(frozen=True)
class Shard:
    """One input file: where it is, how big, and a version tag (etag or mtime) for change detection."""

    location: Location
    size: int
    version: str | None = None

    @property
    def uri(self) -> str:
        return self.location.uri

    @property
    def key(self) -> str:
        """A short stable name for file names and markers."""
        return shard_key(self.uri)

    @property
    def is_parquet(self) -> bool:
        return self.uri.endswith(".parquet")


def shard_key(uri: str) -> str:
    """A short stable name for a shard, used in file and marker names."""
    return xxhash.xxh64_hexdigest(uri.encode())


# ---------------------------------------------------------------- listing (driver)


def list_shards(patterns: list[Location]) -> list[Shard]:
    """Expand ``input.paths`` (files, folders, globs) to shards, sorted by URI; a path that matches nothing is
    an ``InputError``."""
    shards: dict[str, Shard] = {}
    for position, pattern in enumerate(patterns):
        found = _expand(pattern)
        if not found:
            looked = ", ".join(SHARD_SUFFIXES)
            raise InputError(f"input.paths[{position}]: {pattern.uri!r} matches no shard files (looked for {looked})")
        for shard in found:
            shards[shard.uri] = shard
    return sorted(shards.values(), key=lambda shard: shard.uri)


def _expand(pattern: Location) -> list[Shard]:
    fs, path = pattern.filesystem()
    if fs.isfile(path):  # first: a file whose name holds [, * or ? is that file, not a pattern
        return [_shard(pattern, fs, path, fs.info(path))]
    if any(ch in path for ch in "*?["):
        entries = fs.glob(path, detail=True)
    elif fs.isdir(path):
        entries = fs.find(path, detail=True)
    elif fs.exists(path):
        return [_shard(pattern, fs, path, fs.info(path))]
    else:
        raise InputError(f"input path does not exist: {pattern}")
    return [
        _shard(pattern, fs, name, info)
        for name, info in sorted(entries.items())
        if info.get("type") == "file" and name.endswith(SHARD_SUFFIXES)
    ]


def _shard(pattern: Location, fs: Any, path: str, info: dict[str, Any]) -> Shard:
    version = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified")
    return Shard(
        pattern.at(to_uri(fs, path)), size=int(info.get("size") or 0), version=str(version) if version else None
    )


def check_unchanged(shard: Shard) -> None:
    """Raise ``InputError`` if the file is no longer what was listed (size and etag or mtime).

    Every pass of a run reads the shards it listed: dedup decisions made on one version of a shard and
    applied by line number to another would drop the wrong lines, so a shard that changed or vanished
    since the run listed it fails the run, and its staged passes are no longer valid (a rerun says so).
    """
    fs, path = shard.location.filesystem()
    fs.invalidate_cache(path)  # s3fs answers ``info`` from its listing cache otherwise
    try:
        now = _shard(shard.location, fs, path, fs.info(path))
    except FileNotFoundError:
        raise InputError(f"{shard.uri} was deleted after this run listed it; {START_OVER}") from None
    if (now.size, now.version) != (shard.size, shard.version):
        raise InputError(
            f"{shard.uri} changed after this run listed it (size {shard.size} -> {now.size}, version "
            f"{shard.version} -> {now.version}); a run never mixes two versions of a shard: {START_OVER}"
        )


# ---------------------------------------------------------------- reading (Ray read tasks)


class ShardDatasource(Datasource):
    """Read tasks of one or more whole shards (``task_bytes`` of input each, at least four tasks per CPU when
    there are enough shards); each streams its shards one after the other. Bundling small shards matters:
    Ray's cost per task (measured ~0.13 s to schedule on 2 CPUs) would otherwise dominate."""

    def __init__(
        self, shards: list[Shard], rows: ShardRows, task_bytes: int, markers: Location | None, schema: pa.Schema | None
    ) -> None:
        self.shards, self.rows, self.task_bytes = shards, rows, task_bytes
        self.markers, self.schema = markers, schema

    def get_name(self) -> str:
        return "Shards"

    def estimate_inmemory_data_size(self) -> int:
        return sum(shard.size for shard in self.shards) * 4

    def bundles(self) -> list[list[Shard]]:
        min_tasks = 4 * int(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized() else 1
        return bundles(self.shards, self.task_bytes, min_tasks)

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None):
        return [
            ReadTask(
                partial(_read_bundle, bundle, self.rows, self.markers),
                BlockMetadata(
                    num_rows=None,
                    size_bytes=sum(shard.size for shard in bundle) * 4,
                    exec_stats=None,
                    input_files=tuple(shard.uri for shard in bundle),
                ),
                schema=self.schema,
            )
            for bundle in self.bundles()
        ]


def read_shards(
    shards: list[Shard],
    rows: ShardRows,
    task_bytes: int,
    markers: Location | None = None,
    schema: pa.Schema | None = None,
) -> ray.data.Dataset:
    """``rows(shard)`` of every shard as a dataset, one block stream per read task; with ``markers``, each
    shard's row count is recorded there once the shard is read through.

    The block count is pinned to the number of read tasks: left to itself, Ray Data splits the output of
    few read tasks to reach 200 blocks, which stops it fusing the reads with the next stage, and the
    separate operators then split the CPUs between them (measured: one signature task at a time on 2 CPUs).
    """
    source = ShardDatasource(shards, rows, task_bytes, markers, schema)
    return ray.data.read_datasource(source, override_num_blocks=max(1, len(source.bundles())))


def _read_bundle(bundle: list[Shard], rows: ShardRows, markers: Location | None) -> Iterator[pa.Table]:
    for shard in bundle:
        total = 0
        check_unchanged(shard)
        for table in rows(shard):
            total += table.num_rows
            yield table
        check_unchanged(shard)  # a shard replaced while it was read fails here, before its marker
        if markers is not None:
            marker = {"uri": shard.uri, "size": shard.size, "version": shard.version, "rows": total}
            markers.join(f"{shard.key}.json").put_bytes(orjson.dumps(marker))


def bundles(shards: list[Shard], task_bytes: int, min_tasks: int) -> list[list[Shard]]:
    """Consecutive shards in groups of about equal input size: ``task_bytes`` each, or less to give
    ``min_tasks`` groups."""
    total = sum(shard.size for shard in shards)
    count = min(len(shards), max(min_tasks, -(-total // task_bytes)))
    target = total / max(count, 1)
    groups: list[list[Shard]] = [[]]
    size = 0
    for shard in shards:
        if groups[-1] and size + shard.size / 2 > target:
            groups.append([])
            size = 0
        groups[-1].append(shard)
        size += shard.size
    return groups if groups[0] else []
