"""Fuzzing the readers and the row-local stages with a seeded generator (no new dependency).

Thousands of records, valid and hostile (wrong types, huge numbers, NaN, lone surrogates, control characters,
nesting thousands of levels deep), then mutated as bytes (truncations, bit flips, random bytes, invalid UTF-8,
latin-1 and UTF-16, BOMs, CRLF, blank and over-long lines), are written as plain, zstd, gzip and parquet shards,
whole and with their compressed stream cut or corrupted. For every shard: each line the reader counts as a record
ends as exactly one row (kept, dropped or quarantined with a reason), where an independent decoder says it should;
no exception escapes the reader or the stages (language ID with the bundled model, quality, length); no record
makes a stage fail (``stage_error``); and the reader's memory stays under a bound set by its limits, while the
input holds far more than that.
"""

from __future__ import annotations

import functools
import gzip
import io
import itertools
import random
import tracemalloc
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from shardflow.operators import readers
from shardflow.operators.langid import LangIdConfig, LanguageId
from shardflow.operators.length import LengthConfig, LengthFilter
from shardflow.operators.quality import QualityConfig, QualityFilter
from shardflow.operators.readers import ReaderConfig, read_shard
from shardflow.schema import DROP_REASON, QUARANTINE_REASON, RAW, SOURCE, STAGE_ERROR
from shardflow.shards import Shard
from shardflow.storage import Location, StorageConfig
from support import sample_records

SEED = 16_6
MAX_DOC_BYTES = 2048
MAX_LINE = MAX_DOC_BYTES * 4 + 4096  # the reader's limit on one line (readers._jsonl_rows)
BATCH_ROWS = 50
BATCH_BYTES = 1 << 20
SHARDS_PER_KIND = 10
RECORDS_PER_SHARD = (20, 150)
BOMB_BYTES = 64 << 20  # one line of this many bytes, in a few KB of zstd
ZSTD_CALL_BYTES = readers.ZSTD_FEED // 4 * (128 << 10)  # the most one zstd call yields: 128 KiB per 4-byte block
# The reader holds a decompressed chunk and a zstd call's output (joined, then split: three copies at most), the
# unfinished line (its first MiB at most) and one block of rows: a bound set by its limits, not by the input
# (the bomb alone decompresses to several times the bound).
MEMORY_BOUND = 3 * (readers.CHUNK_BYTES + ZSTD_CALL_BYTES) + BATCH_BYTES + 2 * readers.RAW_KEEP_BYTES + (2 << 20)
# The shards this seed generates, and a floor under the lines they hold (9,014 with zstandard 0.25 and this
# Python's zlib); docs/output-and-bad-input.md ("Fuzzing") quotes both.
EXPECTED_SHARDS = 132
MIN_LINES = 8_000
STREAM_ERRORS = ("truncated_stream", "corrupt_stream")


# ---------------------------------------------------------------- JSON with tokens no encoder writes


class Raw(str):
    """A JSON token written as is: ``1e400``, ``NaN``, ``-0``, a 3,000-level nest, a string with a lone surrogate."""


def dump(value: Any, rng: random.Random) -> str:
    """JSON text of ``value`` with random spacing and escaping; ``Raw`` values go in verbatim."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        sep = rng.choice([":", ": ", " : "])
        return "{" + rng.choice([",", ", "]).join(f"{dump(k, rng)}{sep}{dump(v, rng)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v, rng) for v in value) + "]"
    if isinstance(value, str):
        return orjson.dumps(value).decode() if rng.random() < 0.7 else _ascii_escaped(value)
    return orjson.dumps(value).decode()


def _ascii_escaped(text: str) -> str:
    """``text`` as a JSON string with every non-ASCII character as ``\\uXXXX`` (astral ones as a pair)."""
    out = []
    for char in text:
        code = ord(char)
        if char in '"\\' or code < 0x20:
            out.append(orjson.dumps(char).decode()[1:-1])
        elif code < 0x80:
            out.append(char)
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            code -= 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
    return '"' + "".join(out) + '"'


# ---------------------------------------------------------------- records, valid and hostile

CHAR_RANGES = [
    (0x20, 0x7E),  # ASCII
    (0x00, 0x1F),  # control characters, NUL
    (0x7F, 0x9F),  # DEL, C1 controls
    (0xA0, 0x24F),  # Latin-1, Latin extended
    (0x400, 0x4FF),  # Cyrillic
    (0x600, 0x6FF),  # Arabic
    (0x900, 0x97F),  # Devanagari
    (0xE00, 0xE7F),  # Thai
    (0x300, 0x36F),  # combining marks
    (0x2000, 0x206F),  # spaces, joiners, bidi controls, U+2028/2029
    (0x3040, 0x30FF),  # kana
    (0x4E00, 0x9FFF),  # CJK
    (0xE000, 0xF8FF),  # private use
    (0xFDD0, 0xFDEF),  # noncharacters
    (0xFE00, 0xFEFF),  # variation selectors, BOM
    (0xFFF0, 0xFFFF),  # specials
    (0x1F300, 0x1FAFF),  # emoji
    (0x10FFF0, 0x10FFFF),  # the last plane
]


def random_text(rng: random.Random, texts: list[str]) -> str:
    kind = rng.random()
    if kind < 0.45:  # a real HPLT document, or a slice of one
        text = rng.choice(texts)
        start = rng.randrange(len(text)) if rng.random() < 0.3 else 0
        return text[start : start + rng.choice([40, 400, 4000])]
    if kind < 0.75:  # characters from everywhere
        ranges = rng.sample(CHAR_RANGES, rng.randint(1, 4))
        return "".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(rng.randint(1, 300)))
    if kind < 0.85:  # spam that the quality rules drop
        return "\n".join([rng.choice(["buy now", "click here!!!", "$$$", "a"])] * rng.randint(1, 60))
    if kind < 0.92:  # only whitespace: empty_text
        return "".join(rng.choice(" \t\n\r\u3000\u00a0\u2028") for _ in range(rng.randint(1, 20)))
    return rng.choice(texts)[:200] + "x" * rng.randint(MAX_DOC_BYTES - 300, MAX_DOC_BYTES + 300)  # around the limit


BIG_NUMBERS = [
    "1e400",
    "-1e400",
    "1E+999",
    "1e-400",
    "-0",
    "-0.0",
    "5e-324",
    "1.7976931348623157e308",
    "1.8e308",
    str(2**70),
    str(-(2**70)),
    str(2**64),
    str(2**64 - 1),
    str(-(2**63) - 1),
    "9" * 400,
    "0." + "1" * 100,
]
NOT_NUMBERS = ["NaN", "Infinity", "-Infinity", "nan", "inf", "01", "1.", ".5", "+1", "0x10", "1e", "--1"]
WRONG_TYPES: list[Any] = [5, -1.5, 0, True, False, [], ["x", 1], {}, {"a": "b"}, Raw("1e400"), Raw(str(2**70))]


def junk(rng: random.Random, depth: int = 0) -> Any:
    """Any JSON value, nested a little (deep nests come from ``deep``)."""
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return rng.choice([None, True, False, 0, -1, 2**63 - 1, -(2**63), 0.5, -1e-300])
    if kind == 1:
        return Raw(rng.choice(BIG_NUMBERS))
    if kind == 2:
        return "".join(chr(rng.randint(*rng.choice(CHAR_RANGES))) for _ in range(rng.randint(0, 30)))
    if kind == 3:
        return rng.choice(["", "fin_Latn", "2021-05-09T10:26:25Z", "https://a.example/x?y=1", "\x00", "\u2028"])
    if kind in (4, 5):
        return rng.randint(-(10**6), 10**6)
    if kind == 6:
        return [junk(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if kind == 7:
        return {f"k{i}": junk(rng, depth + 1) for i in range(rng.randint(0, 4))}
    return Raw(deep(rng, rng.randint(2, 40)))


def deep(rng: random.Random, levels: int) -> str:
    inner = rng.choice(["1", '"x"', "[]", "{}", "1e400"])
    if rng.random() < 0.5:
        return "[" * levels + inner + "]" * levels
    return '{"a":' * levels + inner + "}" * levels


@dataclass
class Line:
    """One generated line and what the reader must make of it: ``expect`` is ``"doc"`` (a document with this
    ``text``), a quarantine reason prefix, or ``None`` (any one row)."""

    data: bytes
    expect: str | None = None
    text: str | None = None


def record(rng: random.Random, texts: list[str], n: int) -> dict[str, Any]:
    """A valid record in one of the layouts the reader knows."""
    text = random_text(rng, texts)
    layout = rng.choice(["v1.2", "v2", "v3", "v4", "plain", "bare"])
    if layout == "v1.2":
        return {"id": n, "document_lang": "fi", "scores": [0.9], "text": text, "url": "https://a.example/1"}
    if layout == "v2":
        return {"id": f"v2-{n}", "u": "https://b.example/", "ts": "2021-05-09T10:26:25Z", "lang": ["fin_Latn"],
                "prob": [0.9], "text": text, "pii": [[1, 3]], "seg_langs": ["fin_Latn"]}  # fmt: skip
    if layout == "v3":
        return {"id": f"v3-{n}", "u": "https://c.example/", "crawl_id": "cc40", "lang": "fin_Latn", "prob": 1,
                "web-register": {"IN": 0.8}, "text": text}  # fmt: skip
    if layout == "v4":
        return {"id": f"v4-{n}", "u": "https://d.example/", "text": text,
                "openlid_v3": {"lang": ["fin_Latn", "est_Latn"], "prob": [0.95, 0.03]}, "md": "# t"}  # fmt: skip
    if layout == "plain":
        return {"text": text, "id": n, "extra": {"k": [1, 2]}}
    return {"text": text}


SURROGATE = Raw('"lone \\ud800 surrogate"')
FIELDS = ["id", "u", "url", "ts", "lang", "prob", "document_lang", "openlid_v3", "web-register"]


def hostile(rng: random.Random, obj: dict[str, Any]) -> tuple[dict[str, Any] | Raw, str | None]:
    """One defect in a valid record, and the reason prefix it must be quarantined with (``None``: it may also
    be kept, or it depends on the layout)."""
    kind = rng.randrange(16)
    text = obj.get("text")
    if kind == 0:
        obj.pop("text", None)
        return obj, "missing_text"
    if kind == 1:
        obj["text"] = None
        return obj, "missing_text"
    if kind == 2:
        obj["text"] = rng.choice(WRONG_TYPES)
        return obj, "wrong_type"
    if kind == 3:
        obj["text"] = "".join(rng.choice(" \t\n\r\u3000\u00a0") for _ in range(rng.randint(0, 9)))
        return obj, "empty_text"
    if kind == 4:
        lone = f"\\u{rng.randint(0xD800, 0xDFFF):04x}"
        obj["text"] = Raw(f'"{rng.choice(["", "x", "ab "])}{lone}{rng.choice(["", "y"])}"')
        return obj, "invalid_unicode"
    if kind == 5:  # a lone surrogate somewhere else (and maybe a big number that sends the line to the slow parser)
        obj[rng.choice([*FIELDS, "x"])] = SURROGATE
        if rng.random() < 0.5:
            obj["n"] = Raw(rng.choice(BIG_NUMBERS[:3]))
        return obj, "invalid_unicode"
    if kind == 6:
        obj["n"] = Raw(rng.choice(NOT_NUMBERS))
        return obj, "invalid_json"
    if kind == 7:  # nested past what the reader keeps (254 levels) or reads (1,024)
        obj["deep"] = Raw(deep(rng, rng.randint(260, 3000)))
        return obj, "too_deep"
    if kind == 8:
        obj["id"] = rng.choice([1.5, True, [], {}, ["a"], Raw("1e400"), Raw("-0.0")])
        return obj, "wrong_type" if "document_lang" not in obj else None
    if kind == 9:
        obj[rng.choice(FIELDS[1:])] = rng.choice(WRONG_TYPES)
        return obj, None
    if kind == 10:  # numbers a double cannot hold, and deep-but-readable nests, in fields kept in meta
        obj[f"big{rng.randrange(3)}"] = Raw(rng.choice(BIG_NUMBERS))
        obj["nest"] = Raw(deep(rng, rng.randint(1, 200)))
        return obj, "doc" if isinstance(text, str) and text.strip() and len(text.encode()) <= MAX_DOC_BYTES else None
    if kind == 11:
        value = rng.choice([[obj], "text", 12, None, True, [], Raw("1e400"), Raw(str(2**70)), Raw(" -0 ")])
        return Raw(dump(value, rng)), "wrong_type"
    if kind == 12:  # the same key twice
        return Raw(dump(obj, rng)[:-1] + ', "text": ' + dump(rng.choice([5, None, "second"]), rng) + "}"), None
    if kind == 13:
        obj["x"] = junk(rng)
        return obj, None
    if kind == 14:
        obj["text"] = "y" * (MAX_DOC_BYTES + rng.randint(1, 500))
        return obj, "too_large"
    obj["text"] = Raw(dump(text, rng)[:-1] + "\x01\x1f" + '"') if isinstance(text, str) else text  # raw control chars
    return obj, "invalid_json"


def mutated(rng: random.Random, data: bytes) -> bytes:
    """The bytes of a line, hurt in one or more ways (the result may hold newlines: more lines, or fewer)."""
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        kind = rng.randrange(13)
        if kind == 0 and data:
            data = data[: rng.randrange(len(data))]
        elif kind == 1 and data:
            flipped = bytearray(data)
            for _ in range(rng.randint(1, 4)):
                flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            data = bytes(flipped)
        elif kind == 2:
            at = rng.randint(0, len(data))
            data = data[:at] + rng.randbytes(rng.randint(1, 40)) + data[at:]
        elif kind == 3:
            at = rng.randint(0, len(data))
            bad = rng.choice([b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80", b"\x80\x80"])
            data = data[:at] + bad + data[at:]
        elif kind == 4:
            data = data.decode("utf-8", "replace").encode(rng.choice(["latin-1", "cp1252"]), "replace")
        elif kind == 5:
            data = data.decode("utf-8", "replace").encode(rng.choice(["utf-16", "utf-16-le", "utf-16-be", "utf-32"]))
        elif kind == 6:
            data = rng.choice([b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff"]) + data
        elif kind == 7:
            data = data + b"\r"
        elif kind == 8:
            at = rng.randint(0, len(data))
            data = data[:at] + rng.choice([b"\x00", b"\x00" * 9, b"\x1b[31m", b"\x0b\x0c", b"\x85", b"\r"]) + data[at:]
        elif kind == 9:
            data = rng.randbytes(rng.randint(1, 200))
        elif kind == 10:
            data = rng.choice([b" ", b"\t", b"  \r"]) * rng.randint(1, 3) + data + b" " * rng.randint(0, 3)
        elif kind == 11:
            data = data + b"," + data  # two records on one line
        else:
            data = data.replace(b'"', b"'", rng.randint(1, 3))
    return data


def lines_of_shard(rng: random.Random, texts: list[str], count: int, first_id: int) -> list[Line]:
    lines: list[Line] = []
    for n in range(first_id, first_id + count):
        obj = record(rng, texts, n)
        roll = rng.random()
        if roll < 0.3:
            text = obj["text"]
            ok = bool(text.strip()) and len(text.encode()) <= MAX_DOC_BYTES
            lines.append(Line(dump(obj, rng).encode(), "doc" if ok else None, text if ok else None))
        elif roll < 0.6:  # one defect in an otherwise good record
            if not (obj["text"].strip() and len(obj["text"].encode()) <= MAX_DOC_BYTES):
                obj["text"] = rng.choice(texts)[:500]
            value, expect = hostile(rng, obj)
            lines.append(Line(dump(value, rng).encode("utf-8", "surrogatepass"), expect, obj.get("text")))
        elif roll < 0.9:
            value, _ = hostile(rng, obj) if rng.random() < 0.3 else (obj, None)
            lines.append(Line(mutated(rng, dump(value, rng).encode("utf-8", "surrogatepass"))))
        elif roll < 0.95:
            lines.append(Line(rng.choice([b"", b" ", b"\t", b"\r", b"\x0b\x0c", b" \r"])))  # blank: no record
        elif roll < 0.98:
            lines.append(Line(rng.choice([b"\x00", b"{}", b"[]", b"null", b"\xef\xbb\xbf", b"\xff\xfe", b"\x1a"])))
        else:  # over the line limit: some of it JSON, some only spaces
            size = MAX_LINE + rng.randint(1, 3 * MAX_LINE)
            noise = rng.randbytes(size).replace(b"\n", b"")
            body = rng.choice([b" " * size, b'{"text": "' + b"z" * size + b'"}', noise])
            lines.append(Line(body, "too_large"))
    return lines


def joined(rng: random.Random, lines: list[Line]) -> tuple[bytes, dict[int, Line]]:
    """The shard's bytes, and the line number each expectation is for (a line that holds a newline: none)."""
    out, expected, number = [], {}, 1
    newline = rng.choice([b"\n", b"\n", b"\r\n"])
    for line in lines:
        if len(line.data) > MAX_LINE:  # whatever else is wrong with it, the reader only measures it
            line.expect = "too_large"
        if line.expect and b"\n" not in line.data:
            expected[number] = line
        out.append(line.data + newline)
        number += line.data.count(b"\n") + 1
    body = b"".join(out)
    return (body[: -len(newline)] if rng.random() < 0.2 else body), expected


# ---------------------------------------------------------------- shards, whole and broken


def zstd(body: bytes, rng: random.Random) -> bytes:
    """``body`` in zstd: one frame or several, in blocks of a few hundred bytes or of zstd's own size (a cut
    stream decodes up to its last whole block)."""
    codec = zstandard.ZstdCompressor(level=rng.choice([1, 3, 19]), write_checksum=rng.random() < 0.5)
    sink = io.BytesIO()
    writer = codec.stream_writer(sink, closefd=False)
    small, at = rng.random() < 0.7, 0
    while at < len(body):
        step = rng.randint(50, 2000) if small else rng.randint(1, len(body))
        writer.write(body[at : at + step])
        writer.flush(zstandard.FLUSH_FRAME if rng.random() < 0.05 else zstandard.FLUSH_BLOCK)
        at += step
    writer.close()
    return sink.getvalue()


def broken(data: bytes, rng: random.Random) -> tuple[bytes, bool]:
    """Compressed bytes cut or corrupted; ``True`` when only cut (what was read must be a prefix)."""
    kind = rng.randrange(5)
    if kind == 0:
        return data[: rng.randrange(len(data))], True
    flipped = bytearray(data)
    if kind == 1:
        for _ in range(rng.randint(1, 6)):
            flipped[rng.randrange(4, len(flipped))] ^= 1 << rng.randrange(8)
    elif kind == 2:
        at = rng.randrange(4, len(flipped))
        flipped[at : at + 16] = rng.randbytes(16)
    elif kind == 3:
        flipped += rng.choice([rng.randbytes(rng.randint(1, 64)), b"\x00" * 7, data[:10]])
    else:
        at = rng.randrange(len(flipped))
        flipped[at:] = rng.randbytes(len(flipped) - at)
    return bytes(flipped), False


def decoded(data: bytes) -> tuple[bytes, bool]:
    """An independent decode of a shard's bytes, codec sniffed as the reader does: the text, and whether the
    stream breaks off (then the text is not used)."""
    if data.startswith(readers.ZSTD_MAGIC):
        out, codec = [], zstandard.ZstdDecompressor()
        while data:
            frame = codec.decompressobj()
            try:
                out.append(frame.decompress(data))
            except zstandard.ZstdError:
                return b"", True
            if not frame.eof:
                return b"", True
            data = frame.unused_data
        return b"".join(out), False
    if data.startswith(readers.GZIP_MAGIC):
        try:
            return gzip.decompress(data), False
        except (EOFError, OSError, zlib.error):
            return b"", True
    return data, False


def counted(body: bytes) -> list[int]:
    """The numbers of the lines that are records, as the reader defines them: split at ``\\n`` only, blank
    (ASCII whitespace) lines are not records unless over the line limit, a last line needs no newline."""
    segments = body.split(b"\n")
    if segments[-1] == b"":
        segments.pop()
    return [n for n, seg in enumerate(segments, 1) if len(seg) > MAX_LINE or (seg and not seg.isspace())]


@dataclass
class Case:
    path: Path
    body: bytes | None  # the text before compression: None for parquet
    expected: dict[int, Line] = field(default_factory=dict)
    intact: Case | None = None  # for a broken stream or file: the whole shard it was made from
    prefix: bool = False
    form: str = "auto"  # the reader's format: HPLT layouts told apart, or every record as plain JSONL
    records: int = 0  # parquet: rows written


def cases(folder: Path) -> list[Case]:
    rng = random.Random(SEED)
    texts = [r["text"] for r in sample_records()]
    out: list[Case] = []
    n = 0

    def write(name: str, data: bytes, body: bytes | None, expected: dict[int, Line], **extra: Any) -> Case:
        path = folder / name
        path.write_bytes(data)
        out.append(Case(path, body, expected, **extra))
        return out[-1]

    for i in range(SHARDS_PER_KIND * 4):
        lines = lines_of_shard(rng, texts, rng.randint(*RECORDS_PER_SHARD), n)
        n += len(lines)
        body, expected = joined(rng, lines)
        codec, form = ("plain", "zst", "gz", "zst")[i % 4], ("auto", "auto", "jsonl")[i % 3]
        if codec == "plain":
            write(f"s{i}.jsonl", body, body, expected, form=form)
            continue
        data = zstd(body, rng) if codec == "zst" else gzip.compress(body, compresslevel=rng.choice([1, 9]))
        whole = write(f"s{i}.jsonl.{codec}", data, body, expected, form=form)
        for j in range(2):  # the same stream, broken (its own generator: compressed sizes vary by library version)
            bad, cut = broken(data, random.Random(f"{SEED}:{i}:{j}"))
            write(f"s{i}-broken{j}.jsonl.{codec}", bad, None, {}, intact=whole, prefix=cut, form=form)

    for i in range(SHARDS_PER_KIND):  # raw bytes and junk files
        data = rng.choice(
            [
                rng.randbytes(rng.randint(0, 5000)),
                b"",
                b"\n" * rng.randint(1, 5000),
                b"{}\n" * rng.randint(1, 1000),
                readers.ZSTD_MAGIC + rng.randbytes(100),
                readers.GZIP_MAGIC + rng.randbytes(100),
                readers.ZSTD_MAGIC[:3],
                zstd(b"", rng),
            ]
        )
        write(f"junk{i}.jsonl", data, None, {})

    # A zstd bomb: one line of BOMB_BYTES in a few KB, between two good records, whole and cut off.
    bomb = io.BytesIO()
    with zstandard.ZstdCompressor(level=3).stream_writer(bomb, closefd=False) as writer:
        writer.write(b'{"id": "a", "text": "before"}\n{"text": "')
        for _ in range(BOMB_BYTES >> 20):
            writer.write(b"b" * (1 << 20))
    bomb.write(zstandard.ZstdCompressor().compress(b'"}\n{"id": "c", "text": "after"}\n'))
    body = b'{"id": "a", "text": "before"}\n{"text": "' + b"b" * BOMB_BYTES + b'"}\n{"id": "c", "text": "after"}\n'
    expected = {1: Line(b"", "doc", "before"), 2: Line(b"", "too_large"), 3: Line(b"", "doc", "after")}
    whole = write("bomb.jsonl.zst", bomb.getvalue(), body, expected)
    write("bomb-cut.jsonl.zst", bomb.getvalue()[: len(bomb.getvalue()) // 2], None, {}, intact=whole, prefix=True)

    for i in range(SHARDS_PER_KIND):  # parquet: odd columns, whole, cut and corrupted
        rows = [{"id": rng.choice([f"p{n + k}", None]), "text": rng.choice([random_text(rng, texts), None, "", " "]),
                 "url": rng.choice([None, "https://p.example"]), "score": rng.choice([0.5, float("nan"), None]),
                 "nested": {"a": [rng.randint(-(2**63), 2**63 - 1)]}, "blob": rng.randbytes(rng.randint(0, 8))}
                for k in range(rng.randint(1, 300))]  # fmt: skip
        n += len(rows)
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), sink, row_group_size=rng.choice([7, 100, 1000]))
        whole = write(f"p{i}.parquet", sink.getvalue(), None, {}, records=len(rows))
        bad, _ = broken(sink.getvalue(), random.Random(f"{SEED}:p{i}"))
        write(f"p{i}-broken.parquet", bad, None, {}, records=len(rows), intact=whole)
    return out


# ---------------------------------------------------------------- the test


def run(path: Path, config: ReaderConfig) -> tuple[list[pa.Table], int]:
    """The reader's blocks for one shard, and the reader's peak of traced memory."""
    tracemalloc.start()
    try:
        tables = list(read_shard(Shard(Location(str(path)), path.stat().st_size), config))
        return tables, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def line_of(source: str) -> int:
    return int(source.rsplit(":", 1)[1])


def check_states(rows: list[dict[str, Any]], where: Path) -> None:
    """Each row is exactly one of kept, dropped (with a reason) or quarantined (with a reason); none failed a stage."""
    for row in rows:
        quarantined, dropped = row[QUARANTINE_REASON], row[DROP_REASON]
        assert quarantined is None or dropped is None, (where, row[SOURCE])
        assert quarantined != "" and dropped != "", (where, row[SOURCE])
        assert not (quarantined or "").startswith(STAGE_ERROR), (where, row[SOURCE], quarantined)


def _unsourced(row: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in row.items() if name not in (SOURCE, "_seconds_read")}


def check_reader(case: Case, rows: list[dict[str, Any]], intact: dict[Path, list[dict[str, Any]]]) -> int:
    """The reader's rows for one shard against what its bytes hold; returns the lines (or parquet rows) it had,
    0 for a broken copy of a shard already counted."""
    where = case.path
    numbers = [line_of(row[SOURCE]) for row in rows]
    assert numbers == sorted(set(numbers)), (where, "line numbers repeat or go back")
    assert all(row[SOURCE] == f"{where}:{line_of(row[SOURCE])}" for row in rows), where
    check_states(rows, where)
    if case.path.suffix == ".parquet":  # rows read so far, then at most one row for the rest
        errors = [n for n, row in enumerate(rows) if (row[QUARANTINE_REASON] or "").startswith("corrupt_parquet")]
        assert errors in ([], [len(rows) - 1]), (where, "corrupt_parquet is the last row if any")
        assert numbers == list(range(1, len(rows) + 1)), where
        assert len(rows) - len(errors) <= case.records and (errors or len(rows) == case.records), where
        return 0 if case.intact else case.records
    body, breaks = decoded(case.path.read_bytes()) if case.body is None else (case.body, False)
    errors = [n for n, row in enumerate(rows) if (row[QUARANTINE_REASON] or "").startswith(STREAM_ERRORS)]
    if not breaks:
        assert not errors, (where, rows[errors[0]][QUARANTINE_REASON] if errors else None)
        assert numbers == counted(body), (where, "one row per record line")
    else:
        assert errors == [len(rows) - 1], (where, "a broken stream ends with exactly one row for its tail")
    if breaks and case.prefix and case.intact and case.intact.body:  # cut: what the whole gives, then the tail
        whole, tail = intact[case.intact.path], rows[-1]
        before = [row for row in whole if line_of(row[SOURCE]) < line_of(tail[SOURCE])]
        assert [_unsourced(r) for r in rows[:-1]] == [_unsourced(r) for r in before], where
        segment = (case.intact.body.split(b"\n") + [b""])[line_of(tail[SOURCE]) - 1]
        assert tail[RAW] is not None and segment.startswith(tail[RAW]), (where, "the tail holds the start of its line")
    for number, line in case.expected.items():
        (row,) = [r for r in rows if line_of(r[SOURCE]) == number] or [None]
        assert row is not None, (where, number, "an expected record gave no row")
        if line.expect == "doc":
            assert row[QUARANTINE_REASON] is None and row["text"] == line.text, (where, number, row[QUARANTINE_REASON])
        else:
            assert (row[QUARANTINE_REASON] or "").startswith(line.expect), (where, number, line.expect, row)
    return 0 if case.intact else body.count(b"\n") + (not body.endswith(b"\n") and bool(body))


# Languages whose tokenizers the quality stage loads in a second or so (spaCy, jieba, PyThaiNLP, fallbacks);
# language ID drops the rest before quality (each language's first tokenizer costs up to 8 s).
KEEP = ["eng_Latn", "fin_Latn", "deu_Latn", "rus_Cyrl", "ell_Grek", "arb_Arab", "hin_Deva", "kor_Hang"]
KEEP += ["zho_Hans", "zho_Hant", "jpn_Jpan", "tha_Thai"]


def pipelines() -> list[list[Callable[[pa.Table], pa.Table]]]:
    """The row-local stages as a run chains them: language ID, quality and length; and quality (without a
    language: every text reaches it) in annotate mode, which computes every score, then length."""
    storage = StorageConfig()
    length = LengthFilter(LengthConfig(min_chars=5, max_chars=1500), storage)
    return [
        [LanguageId(LangIdConfig(keep=KEEP), storage), QualityFilter(QualityConfig(mode="filter")), length],
        [QualityFilter(QualityConfig(mode="annotate")), length],
    ]


def test_every_fuzzed_line_ends_as_exactly_one_row(tmp_path: Path) -> None:
    generated = cases(tmp_path)
    configs = {
        form: ReaderConfig(
            paths=["-"], format=form, batch_rows=BATCH_ROWS, batch_bytes=BATCH_BYTES, max_doc_bytes=MAX_DOC_BYTES
        )
        for form in ("auto", "jsonl")
    }
    stages = pipelines()
    intact: dict[Path, list[dict[str, Any]]] = {}
    lines = peak = 0
    for case in generated:
        tables, used = run(case.path, configs[case.form])
        peak = max(peak, used)
        rows = [row for table in tables for row in table.to_pylist()]
        intact[case.path] = rows
        lines += check_reader(case, rows, intact)
        for table, pipeline in itertools.product(tables, stages):  # block by block, as a read task hands them on
            out = functools.reduce(lambda batch, stage: stage(batch), pipeline, table)
            assert out[SOURCE].to_pylist() == table[SOURCE].to_pylist(), case.path
            check_states(out.to_pylist(), case.path)
    assert peak < MEMORY_BOUND < BOMB_BYTES, f"the reader held {peak / 2**20:.1f} MiB"
    # How many lines a cut stream still holds depends on the codec library's output: a floor, not a count.
    assert len(generated) == EXPECTED_SHARDS and lines >= MIN_LINES, (len(generated), lines)


@pytest.mark.parametrize("text", ["\x00", "\u2028\u2029", "\ufeff" * 3, "\U0010ffff", "\x1b[31m red", "a\u0301" * 50])
def test_odd_texts_pass_every_row_local_stage(text: str) -> None:
    table = pa.Table.from_pylist([{"text": text, "source": "m:1"}], schema=readers.READ_SCHEMA)
    for pipeline in pipelines():
        check_states(functools.reduce(lambda batch, stage: stage(batch), pipeline, table).to_pylist(), Path("m"))
