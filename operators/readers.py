"""Readers: HPLT shards (v1.2, v2, v3, v4), plain JSONL and parquet -> the document table.

Shards are read in Ray read tasks (``shardflow.shards``), streaming: a shard is decompressed chunk by chunk
and emitted in batches of ``batch_rows`` rows, so no process ever holds a whole shard. Every line becomes
exactly one row: a document, or a quarantine row that says where it came from (``source`` = ``URI:line``)
and why it was rejected. A shard whose stream breaks (truncated or corrupt zstd/gzip) ends with one
quarantine row holding the bytes of the broken tail.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import time
import zlib
from collections.abc import Iterable, Iterator
from functools import partial
from typing import Any, BinaryIO, Literal

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import xxhash
import zstandard
from pydantic import Field

from shardflow import progress
from shardflow.config import StrictModel
from shardflow.schema import READ_SCHEMA, stage_error, with_seconds
from shardflow.shards import Shard, read_shards
from shardflow.storage import Location

__all__ = ["ReaderConfig", "detect_layout", "map_record", "read_documents", "read_shard", "shard_rows"]

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
CHUNK_BYTES = 1 << 20
RAW_KEEP_BYTES = 1 << 20  # of a line too long to parse, the quarantine row keeps this much
# Compressed bytes per zstd call: a zstd block of at least 4 bytes decodes to at most 128 KiB, so a call yields at
# most ~4 MiB whatever the compression ratio (8 KB of zstd can hold 256 MiB of one repeated byte).
ZSTD_FEED = 128
BIG_NUMBER = re.compile(rb"[:\[,]\s*-?(?:\d{19,}|[\d.]+[eE]\+?\d{3,})")  # a number orjson would round or reject
LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")  # in a parsed string: an escape of half a pair


class ReaderConfig(StrictModel):
    """The ``input`` section: what to read and how."""

    paths: list[str] = Field(min_length=1, description="Files, directories, globs; local or s3://.")
    format: Literal["auto", "hplt", "jsonl", "parquet"] = "auto"
    batch_rows: int = Field(2000, ge=1, description="Rows per block a read task emits (at most).")
    batch_bytes: int = Field(
        64 << 20, ge=1, description="Bytes of text and raw records per block (about): big documents, small blocks."
    )
    task_bytes: int = Field(
        64 << 20, ge=1, description="Input bytes per read task: small shards are read together, big ones alone."
    )
    max_doc_bytes: int = Field(16 << 20, ge=1, description="Longer documents are quarantined as too_large.")
    duplicate_ids: Literal["quarantine", "allow"] = Field(
        "quarantine",
        description="A record whose id an earlier one has: quarantined (one extra pass over the input), or allowed.",
    )
    id_index_from: str | None = Field(
        None,
        description="The id_index/ of an earlier output: its ids count as read before these shards (a refresh "
        "sets it to its published corpus's).",
    )


class StreamError(Exception):
    """A compressed stream ended early or is corrupt; ``reason`` is the quarantine reason, ``pending`` the
    unfinished line and ``line_no`` its number (set by ``_iter_lines``)."""

    def __init__(self, reason: str, pending: bytes = b"") -> None:
        super().__init__(reason)
        self.reason = reason
        self.pending = pending
        self.line_no = 0


# ---------------------------------------------------------------- shards -> Arrow blocks (read tasks)


def read_documents(shards: list[Shard], config: ReaderConfig, markers: Location | None = None) -> ray.data.Dataset:
    """The document table of ``shards`` as a dataset; with ``markers``, each shard's row count is recorded
    there (``shardflow.shards.read_shards``)."""
    return read_shards(shards, partial(read_shard, config=config), config.task_bytes, markers, READ_SCHEMA)


def read_shard(shard: Shard, config: ReaderConfig) -> Iterator[pa.Table]:
    """Stream one shard as tables of at most ``config.batch_rows`` rows and about ``config.batch_bytes`` bytes
    (at least one table, maybe empty): a read task holds one block, whatever the documents' size."""
    rows: list[dict[str, Any]] = []
    size, emitted = 0, False
    started = time.perf_counter()
    for row in shard_rows(shard, config):
        rows.append(row)
        size += len(row.get("text") or "") + len(row.get("raw") or b"") + len(row.get("meta") or "")
        if len(rows) >= config.batch_rows or size >= config.batch_bytes:
            yield _block(rows, started)
            rows, size, emitted, started = [], 0, True, time.perf_counter()
    if rows or not emitted:
        yield _block(rows, started)


def _block(rows: list[dict[str, Any]], started: float) -> pa.Table:
    """The rows read as one block, with the time they took; counted on the progress display."""
    progress.report(progress.READ, len(rows))
    return with_seconds(pa.Table.from_pylist(rows, schema=READ_SCHEMA), "read", time.perf_counter() - started)


UNREADABLE = (FileNotFoundError, PermissionError, IsADirectoryError)


def _unreadable(uri: str, line_no: int, err: OSError) -> dict[str, Any]:
    """The quarantine row for a shard (or its rest, from ``line_no``) that the store will not hand over."""
    return _quarantine_row(uri, line_no, f"unreadable_shard: {type(err).__name__}: {err}")


def shard_rows(shard: Shard, config: ReaderConfig) -> Iterator[dict[str, Any]]:
    """Every record of a shard's file as a row dict (document or quarantine), in file order."""
    fs, path = shard.location.filesystem()
    try:
        handle = fs.open(path, "rb")
    except UNREADABLE as err:
        yield _unreadable(shard.uri, 0, err)
        return
    with handle:
        if shard.is_parquet or config.format == "parquet":
            yield from _parquet_rows(handle, shard.uri, config)
        else:
            yield from _jsonl_rows(handle, shard.uri, config)


def _jsonl_rows(handle: BinaryIO, uri: str, config: ReaderConfig) -> Iterator[dict[str, Any]]:
    line_no = 0
    max_line = config.max_doc_bytes * 4 + 4096  # JSON escapes may take several bytes per text byte
    try:
        for line_no, line, oversize in _iter_lines(_decompressed_chunks(handle), max_line):
            if oversize:
                yield _quarantine_row(uri, line_no, f"too_large: line of {oversize} bytes", line)
                continue
            obj, problem = _parse_json(line)
            yield (
                _quarantine_row(uri, line_no, problem, line)
                if problem
                else _record_row(obj, uri, line_no, config, raw=line)
            )
    except StreamError as err:  # its line, not the one after the last record: blank lines may lie between
        yield _quarantine_row(uri, err.line_no or line_no + 1, err.reason, err.pending)
    except UNREADABLE as err:  # an object store may refuse only the first read (an archived S3 object)
        yield _unreadable(uri, line_no + 1, err)


def _parquet_rows(handle: BinaryIO, uri: str, config: ReaderConfig) -> Iterator[dict[str, Any]]:
    row_no = 0
    try:
        for batch in pq.ParquetFile(handle).iter_batches(batch_size=config.batch_rows):
            for obj in batch.to_pylist():
                row_no += 1
                yield _record_row(obj, uri, row_no, config, raw=None)
    except (pa.ArrowException, OSError, UnicodeDecodeError) as err:  # Arrow does not check a string's UTF-8
        yield _quarantine_row(uri, row_no + 1, f"corrupt_parquet: {err}")


# ---------------------------------------------------------------- bytes -> lines


def _decompressed_chunks(handle: BinaryIO) -> Iterator[bytes]:
    """Decompressed bytes of ``handle``, codec sniffed from magic bytes (zstd, gzip, or none)."""
    head = handle.read(4)
    if head.startswith(ZSTD_MAGIC):
        yield from _zstd_chunks(head, handle)
    elif head.startswith(GZIP_MAGIC):
        yield from _gzip_chunks(head, handle)
    else:
        yield head
        yield from iter(partial(handle.read, CHUNK_BYTES), b"")


def _zstd_chunks(head: bytes, handle: BinaryIO) -> Iterator[bytes]:
    """zstd frames one after another, in chunks of about ``CHUNK_BYTES``; memory stays bounded whatever the
    ratio (input goes in ``ZSTD_FEED`` bytes at a time). A frame that is cut off raises ``StreamError``
    (zstandard would not)."""
    codec = zstandard.ZstdDecompressor()
    frame = codec.decompressobj()
    fed = False
    out: list[bytes] = []
    size = 0
    data = head
    while data:
        for start in range(0, len(data), ZSTD_FEED):
            piece = data[start : start + ZSTD_FEED]
            while piece:
                try:
                    produced = frame.decompress(piece)
                except zstandard.ZstdError as err:
                    yield b"".join(out)
                    raise StreamError(f"corrupt_stream: zstd: {err}") from None
                fed, piece = True, b""
                out.append(produced)
                size += len(produced)
                if frame.eof:  # a frame ended: the rest of the input starts the next one
                    piece, frame, fed = frame.unused_data, codec.decompressobj(), False
            if size >= CHUNK_BYTES:
                yield b"".join(out)
                out, size = [], 0
        data = handle.read(CHUNK_BYTES)
    yield b"".join(out)
    if fed and not frame.eof:
        raise StreamError("truncated_stream: zstd frame ends before its end mark")


class _Prefixed:
    """A file object that first returns ``head``, then the rest of ``handle`` (gzip needs the magic back)."""

    def __init__(self, head: bytes, handle: BinaryIO) -> None:
        self.head, self.handle = head, handle

    def read(self, size: int = -1) -> bytes:
        if self.head:
            out, self.head = (
                (self.head, b"") if size < 0 or size >= len(self.head) else (self.head[:size], self.head[size:])
            )
            return out
        return self.handle.read(size)


def _gzip_chunks(head: bytes, handle: BinaryIO) -> Iterator[bytes]:
    stream = gzip.GzipFile(fileobj=_Prefixed(head, handle))  # type: ignore[arg-type]
    try:
        yield from iter(partial(stream.read, CHUNK_BYTES), b"")
    except EOFError as err:
        raise StreamError(f"truncated_stream: gzip: {err}") from None
    except (gzip.BadGzipFile, zlib.error) as err:
        raise StreamError(f"corrupt_stream: gzip: {err}") from None


def _iter_lines(chunks: Iterable[bytes], max_line_bytes: int) -> Iterator[tuple[int, bytes, int]]:
    """``(line number, line, 0)`` for each non-blank line; ``(n, head, size)`` for a line over the limit.

    A line longer than ``max_line_bytes`` is not held in memory: its first bytes are kept, the rest is
    skipped up to the next newline. A ``StreamError`` from ``chunks`` carries the unfinished line with it.
    """
    parts: list[bytes] = []  # the unfinished line (only its head once it is over the limit)
    size = 0  # the unfinished line's full length
    line_no = 0
    try:
        for chunk in chunks:
            start = 0
            while (end := chunk.find(b"\n", start)) >= 0:
                line_no += 1
                yield from _finish_line(line_no, parts, chunk[start:end], size, max_line_bytes)
                parts, size, start = [], 0, end + 1
            rest = chunk[start:]
            if size < RAW_KEEP_BYTES or size + len(rest) <= max_line_bytes:
                parts.append(rest)
            size += len(rest)
    except StreamError as err:
        err.pending, err.line_no = b"".join(parts)[:max_line_bytes], line_no + 1
        raise
    if size:
        yield from _finish_line(line_no + 1, parts, b"", size, max_line_bytes)


def _finish_line(
    line_no: int, parts: list[bytes], tail: bytes, size: int, max_line_bytes: int
) -> Iterator[tuple[int, bytes, int]]:
    size += len(tail)
    if size > max_line_bytes:
        yield line_no, (b"".join(parts) + tail[:RAW_KEEP_BYTES])[:RAW_KEEP_BYTES], size
        return
    line = b"".join(parts) + tail if parts else tail
    if line and not line.isspace():
        yield line_no, line, 0


def _parse_json(line: bytes) -> tuple[Any, str | None]:
    """The parsed value, or ``None`` and the reason it is not a valid JSON record. Numbers that a double cannot
    hold (integers of 19 digits or more, exponents past 308) are kept exactly, as strings."""
    if BIG_NUMBER.search(line):
        return _parse_exactly(line)
    try:
        return orjson.loads(line), None
    except orjson.JSONDecodeError as err:
        return _diagnose(line, err)


def _parse_exactly(line: bytes) -> tuple[Any, str | None]:
    """The slower parser that keeps every number as written when it cannot be one exactly."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as bad:
        return None, f"invalid_utf8: {bad.reason} at byte {bad.start}"
    try:
        value = json.loads(text, parse_int=_exact_int, parse_float=_exact_float, parse_constant=_not_a_number)
    except RecursionError:
        return None, "too_deep: JSON nested too deeply to read"
    except ValueError as bad:
        return None, f"invalid_json: {bad}"
    if _holds_lone_surrogate(value):  # orjson refuses these; json reads them, and Arrow could not hold one
        return None, "invalid_unicode: a string holds a lone surrogate"
    return value, None


def _holds_lone_surrogate(value: Any) -> bool:
    """Whether a key or string anywhere in ``value`` holds a lone surrogate (legal in JSON escapes, not in
    Unicode); iterative, as ``value`` may be nested as deep as the parser goes."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if LONE_SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack += item
            stack += item.values()
        elif isinstance(item, list):
            stack += item
    return False


class _BigNumber(str):
    """A JSON number kept as written (a string in ``meta``); where a field must be a string, still a number."""


class _BigInteger(_BigNumber):
    """An integer past 64 bits: as an ``id``, its digits, like any integer id."""


def _exact_int(digits: str) -> int | str:
    value = int(digits)
    return value if -(1 << 63) <= value < 1 << 64 else _BigInteger(digits)


def _exact_float(digits: str) -> float | str:
    value = float(digits)
    return value if math.isfinite(value) else _BigNumber(digits)


def _not_a_number(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _diagnose(line: bytes, err: Exception) -> tuple[Any, str | None]:
    """Of a line orjson refused: tell JSON nested too deeply from invalid UTF-8, invalid JSON and a lone
    surrogate; or the value, where it is valid JSON that orjson cannot hold (a huge number at the top level)."""
    if "depth limit" in str(err):
        return None, "too_deep: JSON nested deeper than 1024 levels"
    return _parse_exactly(line)


# ---------------------------------------------------------------- record -> row


def _quarantine_row(uri: str, line_no: int, reason: str, raw: bytes | None = None) -> dict[str, Any]:
    """A row that never became a document: where it was, why, and its bytes."""
    return {"source": f"{uri}:{line_no}", "quarantine_reason": reason, "raw": raw}


def _record_row(obj: Any, uri: str, line_no: int, config: ReaderConfig, raw: bytes | None) -> dict[str, Any]:
    """Map one parsed record to a document row, or to a quarantine row if it cannot be one."""
    if not isinstance(obj, dict):
        return _quarantine_row(uri, line_no, f"wrong_type: record is a JSON {_type_name(obj)}, not an object", raw)
    try:
        row = map_record(obj, config.format, config.max_doc_bytes)
    except RecordError as err:
        return _quarantine_row(uri, line_no, str(err), raw if raw is not None else _record_bytes(obj))
    except Exception as err:  # noqa: BLE001 - one record must never fail a run: it is quarantined with the reason
        return _quarantine_row(uri, line_no, stage_error("read", err), raw if raw is not None else _record_bytes(obj))
    row["source"] = f"{uri}:{line_no}"
    return row


def _record_bytes(obj: Any) -> bytes:
    """A parquet record as bytes for its quarantine row (its repr, where JSON cannot hold it)."""
    try:
        return orjson.dumps(obj, default=str)
    except TypeError:
        return repr(obj).encode("utf-8", "backslashreplace")[:RAW_KEEP_BYTES]


class RecordError(ValueError):
    """A record that parses but cannot be a document; the message is the quarantine reason."""


Layout = Literal["v1.2", "v2", "v3", "v4", "plain"]
V4_LID_MODELS = ("openlid_v3", "openlid_v2", "glotlid_v3")  # the first present one fills source_lang


def detect_layout(obj: dict[str, Any]) -> Layout:
    """Which HPLT release wrote this record, from the field names that only that release uses."""
    if "document_lang" in obj:
        return "v1.2"
    if any(name in obj for name in V4_LID_MODELS):
        return "v4"
    if "crawl_id" in obj or "web-register" in obj:
        return "v3"
    if "lang" in obj:  # v2 proper, or the HPLT inspection samples that keep only id, lang and text
        return "v2"
    return "plain"


def map_record(obj: dict[str, Any], fmt: str, max_doc_bytes: int) -> dict[str, Any]:
    """The document columns of ``obj``; every field it does not map goes to ``meta`` as JSON."""
    layout: Layout = "plain" if fmt == "jsonl" else detect_layout(obj)
    rest = dict(obj)
    text = rest.pop("text", None)
    if text is None:
        raise RecordError(
            "missing_text: record has no 'text' field" if "text" not in obj else "missing_text: 'text' is null"
        )
    if not _is_str(text):
        raise RecordError(f"wrong_type: 'text' is a {_type_name(text)}, expected a string")
    if not text.strip():
        raise RecordError("empty_text: 'text' is empty or only whitespace")
    size = _utf8_size(text)
    if size > max_doc_bytes:
        raise RecordError(f"too_large: text of {size} bytes > max_doc_bytes {max_doc_bytes}")
    raw_id = rest.pop("id", None)
    url = _optional_str(rest.pop("u" if layout in ("v2", "v3", "v4") else "url", None), "url")
    row: dict[str, Any] = {
        "text": text,
        "url": url,
        "crawl_ts": _optional_str(rest.pop("ts", None), "ts") if layout != "plain" else None,
    }
    row["source_lang"], row["source_prob"] = _source_labels(layout, rest)
    if layout == "v1.2" or raw_id is None:
        # v1.2 ids count lines within one shard, so they are not unique across a corpus
        if raw_id is not None:
            rest["id"] = raw_id
        row["doc_id"] = xxhash.xxh128_hexdigest(f"{url or ''}\x00{text}".encode())
    elif (_is_str(raw_id) or isinstance(raw_id, (int, _BigInteger))) and not isinstance(raw_id, bool):
        row["doc_id"] = str(raw_id)
    else:
        raise RecordError(f"wrong_type: 'id' is a {_type_name(raw_id)}, expected a string")
    row["meta"] = _meta(rest) if rest else None
    return row


def _source_labels(layout: Layout, rest: dict[str, Any]) -> tuple[list[str] | None, list[float] | None]:
    """The shard's own language labels and probabilities, as the release stored them."""
    if layout == "v1.2":
        label = rest.pop("document_lang", None)
        return ([_optional_str(label, "document_lang")] if label is not None else None), None
    if layout == "v4":
        for name in V4_LID_MODELS:
            if isinstance(rest.get(name), dict):
                found = rest[name]
                return _str_list(found.get("lang"), f"{name}.lang"), _float_list(found.get("prob"), f"{name}.prob")
        return None, None
    if layout in ("v2", "v3"):
        return _str_list(rest.pop("lang", None), "lang"), _float_list(rest.pop("prob", None), "prob")
    return None, None


def _optional_str(value: Any, name: str) -> str | None:
    if value is None or _is_str(value):
        return value
    raise RecordError(f"wrong_type: '{name}' is a {_type_name(value)}, expected a string")


def _is_str(value: Any) -> bool:
    return isinstance(value, str) and not isinstance(value, _BigNumber)


def _type_name(value: Any) -> str:
    return "number" if isinstance(value, _BigNumber) else type(value).__name__


def _str_list(value: Any, name: str) -> list[str] | None:
    if value is None:
        return None
    if _is_str(value):
        return [value]
    if isinstance(value, list) and all(_is_str(v) for v in value):
        return value
    raise RecordError(f"wrong_type: '{name}' must be a string or a list of strings")


def _float_list(value: Any, name: str) -> list[float] | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)]
    if isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return [float(v) for v in value]
    raise RecordError(f"wrong_type: '{name}' must be a number or a list of numbers")


def _meta(rest: dict[str, Any]) -> str:
    """The fields the document table has no column for, as JSON (parquet may hold bytes: as text)."""
    try:
        return orjson.dumps(rest, default=str).decode()
    except TypeError as err:  # nested deeper than orjson writes (254 levels), or a lone surrogate in a string
        reason = "too_deep" if "ecursion" in str(err) else "invalid_unicode"
        raise RecordError(f"{reason}: a field cannot be kept as JSON ({err})") from None


def _utf8_size(text: str) -> int:
    """Bytes of ``text`` in UTF-8; a lone surrogate (legal in JSON escapes, not in Unicode) is an error."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise RecordError("invalid_unicode: 'text' holds a lone surrogate") from None
