"""What a shard holds, judged from its first MiB: its compression, the record layouts of its first lines, and
how many records a compressed byte carries.

A run uses it to size the blocks it hands to its actor pools (rows are not known before the stream has read
them, and a pool of eight GPUs fed two blocks leaves six idle); ``shardflow validate`` uses it to describe the
inputs before anything starts. Reading a head costs one ranged read per shard, on S3 too, whatever the
shard's size. The head of a compressed shard is decompressed up to ``TEXT_CAP`` bytes only, so that a
hostile shard (a few KB of zstd holding GBs of one byte) costs no memory.
"""

from __future__ import annotations

import io
import zlib
from collections import Counter
from dataclasses import dataclass, field

import orjson
import pyarrow.parquet as pq
import zstandard

from shardflow.operators.readers import GZIP_MAGIC, ZSTD_MAGIC, detect_layout
from shardflow.shards import Shard

__all__ = ["ShardSniff", "estimate_records", "sniff_shard"]

HEAD_BYTES = 1 << 20  # compressed bytes read from each sniffed shard
TEXT_CAP = 16 << 20  # decompressed bytes looked at, at most
LAYOUT_LINES = 200  # first lines whose layout is recognised
SAMPLED_SHARDS = 3  # shards sniffed to estimate a run's records: the first, the middle and the last


@dataclass(frozen=True)
class ShardSniff:
    """One shard's head: ``records`` complete lines (or parquet rows) in ``consumed`` bytes of the file, of
    ``size``; ``exact`` when those are all of its records. ``layouts`` counts the layouts of the first lines
    (``v2``, ``plain``, ..., or why a line is not a record)."""

    uri: str
    size: int
    compression: str  # zstd, gzip, none, or parquet
    records: int
    consumed: int
    exact: bool
    text_bytes: int = 0  # decompressed bytes of those records
    layouts: Counter[str] = field(default_factory=Counter)
    error: str | None = None  # the head could not be read or decompressed

    @property
    def estimated_records(self) -> int:
        if self.exact or not self.consumed:
            return self.records
        return round(self.records * self.size / self.consumed)


def sniff_shard(shard: Shard) -> ShardSniff:
    """Read and judge the head of ``shard``; a shard that cannot be read says why in ``error``."""
    fs, path = shard.location.filesystem()
    try:
        if shard.is_parquet:
            with fs.open(path, "rb") as handle:
                rows = pq.ParquetFile(handle).metadata.num_rows
            return ShardSniff(shard.uri, shard.size, "parquet", rows, shard.size, True, layouts=Counter(parquet=1))
        with fs.open(path, "rb") as handle:
            head = handle.read(HEAD_BYTES)
    except Exception as err:  # noqa: BLE001 - a store's or parquet's error is described, not raised
        return ShardSniff(shard.uri, shard.size, "unknown", 0, 0, False, error=f"{type(err).__name__}: {err}")
    compression, text, consumed, error = _head_text(head)
    whole = consumed >= shard.size and len(text) < TEXT_CAP and error is None
    lines = text.split(b"\n")
    complete = lines if whole and lines[-1] else lines[:-1]
    counted = sum(len(line) + 1 for line in complete)
    return ShardSniff(
        shard.uri,
        shard.size,
        compression,
        len(complete),
        consumed,
        whole,
        counted,
        Counter(_layout(line) for line in complete[:LAYOUT_LINES]),
        error,
    )


def estimate_records(shards: list[Shard]) -> int:
    """About how many records ``shards`` hold, from the heads of a few of them (exact where those were whole)."""
    if not shards:
        return 0
    picks = sorted({0, len(shards) // 2, len(shards) - 1})[:SAMPLED_SHARDS]
    sniffed = [sniff_shard(shards[i]) for i in picks]
    records = sum(s.records for s in sniffed)
    consumed = sum(s.consumed for s in sniffed)
    rest = sum(shard.size for shard in shards) - sum(s.size for s in sniffed)
    exact = sum(s.estimated_records for s in sniffed)
    return exact + (round(records * rest / consumed) if consumed else 0)


def _head_text(head: bytes) -> tuple[str, bytes, int, str | None]:
    """``(compression, decompressed text, compressed bytes it took, error)`` of a file's first bytes."""
    try:
        if head.startswith(ZSTD_MAGIC):
            source = io.BytesIO(head)
            reader = zstandard.ZstdDecompressor().stream_reader(source, read_size=1 << 14, read_across_frames=True)
            pieces, size = [], 0
            while size < TEXT_CAP and (piece := reader.read(min(1 << 20, TEXT_CAP - size))):
                pieces.append(piece)
                size += len(piece)
            return "zstd", b"".join(pieces), source.tell(), None
        if head.startswith(GZIP_MAGIC):
            codec = zlib.decompressobj(16 + zlib.MAX_WBITS)
            text = codec.decompress(head, TEXT_CAP)
            return "gzip", text, len(head) - len(codec.unconsumed_tail), None
    except (zstandard.ZstdError, zlib.error) as err:
        return ("zstd" if head.startswith(ZSTD_MAGIC) else "gzip"), b"", 0, f"corrupt_stream: {err}"
    return "none", head[:TEXT_CAP], min(len(head), TEXT_CAP), None


def _layout(line: bytes) -> str:
    """The record layout of one line (``v2``, ``plain``, ...), or why it is none (as the reader would say)."""
    if not line.strip():
        return "empty_line"
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return "invalid_json"
    return detect_layout(record) if isinstance(record, dict) else "not_an_object"
