"""Readers: every HPLT layout, plain JSONL and parquet, every compression, and bad input -> quarantine."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from shardflow.errors import InputError
from shardflow.operators import readers
from shardflow.operators.readers import ReaderConfig, read_documents, read_shard, shard_rows
from shardflow.schema import READ_SCHEMA
from shardflow.shards import Shard, bundles, list_shards
from shardflow.storage import Location, StorageConfig
from support import PLAIN, SHARED_DATA, TEXT, V2, V3, V4, V12, write_shard

STORAGE = StorageConfig()


def shard(path: Path | str, size: int) -> Shard:
    return Shard(Location(str(path)), size)


def listed(*paths: str, storage: StorageConfig = STORAGE) -> list[Shard]:
    return list_shards([Location(path, storage) for path in paths])


def rows_of(path: Path, **settings) -> list[dict]:
    config = ReaderConfig(paths=[str(path)], **settings)
    rows = shard_rows(shard(path, path.stat().st_size), config)
    return [{name: row.get(name) for name in READ_SCHEMA.names} for row in rows]


def meta(row: dict) -> dict:
    return json.loads(row["meta"]) if row["meta"] else {}


def test_every_hplt_layout_maps_to_the_document_table(tmp_path: Path) -> None:
    path = write_shard(tmp_path / "mixed.jsonl.zst", [V12, V2, V3, V4, PLAIN])
    v12, v2, v3, v4, plain = rows_of(path)
    assert all(r["text"] == TEXT and r["quarantine_reason"] is None for r in (v12, v2, v3, v4, plain))
    # v1.2 ids number lines within a shard, so the doc_id is a content hash and the id stays in meta
    assert len(v12["doc_id"]) == 32 and meta(v12)["id"] == 7
    assert v12["url"] == "https://a.example/1" and v12["source_lang"] == ["fi"]
    assert meta(v12)["scores"] == [0.9] and meta(v12)["collection"] == "wide5"
    assert (v2["doc_id"], v2["url"], v2["crawl_ts"]) == ("b8ff3519", V2["u"], V2["ts"])
    assert v2["source_lang"] == V2["lang"] and v2["source_prob"] == V2["prob"]
    assert set(meta(v2)) == {
        "f",
        "o",
        "s",
        "rs",
        "c",
        "collection",
        "seg_langs",
        "filter",
        "pii",
        "doc_scores",
        "robots",
    }
    assert meta(v3)["crawl_id"] == "cc40" and meta(v3)["web-register"] == {"IN": 0.8} and v3["doc_id"] == "c3"
    assert v4["source_lang"] == ["fin_Latn", "est_Latn"] and v4["source_prob"] == [0.95, 0.03]
    assert meta(v4)["openlid_v2"] == V4["openlid_v2"] and meta(v4)["md"] == "# t"
    assert plain["doc_id"] == "42" and meta(plain) == {"extra": {"k": [1, 2]}}
    assert [r["source"] for r in (v12, plain)] == [f"{path}:1", f"{path}:5"]


def test_jsonl_format_maps_only_text_and_id(tmp_path: Path) -> None:
    (row,) = rows_of(write_shard(tmp_path / "a.jsonl", [V2]), format="jsonl")
    assert row["doc_id"] == "b8ff3519" and row["source_lang"] is None and meta(row)["lang"] == V2["lang"]


@pytest.mark.parametrize("name,frames", [("a.jsonl", 1), ("a.jsonl.gz", 1), ("a.jsonl.zst", 1), ("a.jsonl.zst", 7)])
def test_compression_does_not_change_rows(tmp_path: Path, name: str, frames: int) -> None:
    records = [{**PLAIN, "id": i, "text": f"{TEXT} {i}"} for i in range(500)]
    rows = rows_of(write_shard(tmp_path / name, records, frames=frames))
    assert [r["doc_id"] for r in rows] == [str(i) for i in range(500)]
    assert all(r["quarantine_reason"] is None for r in rows)


def test_parquet_shards_read_like_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pq.write_table(
        pa.Table.from_pylist(
            [
                {"id": "p1", "text": TEXT, "url": "https://p.example", "score": 0.5},
                {"id": "p2", "text": None, "url": None, "score": 0.1},
            ]
        ),
        path,
    )
    good, bad = rows_of(path)
    assert (good["doc_id"], good["url"], meta(good)) == ("p1", "https://p.example", {"score": 0.5})
    assert bad["quarantine_reason"].startswith("missing_text") and bad["source"] == f"{path}:2"


def test_bad_records_are_quarantined_with_source_and_reason(tmp_path: Path) -> None:
    lines = [
        json.dumps(PLAIN).encode(),
        b'{"text": "cut off',
        b'{"text": "bad \xff byte"}',
        b'{"text": "lone \\udc80 surrogate"}',
        b'{"text": "   "}',
        b'{"id": "no-text"}',
        b'{"text": 5}',
        b"[1, 2]",
        json.dumps({"text": "x" * 200}).encode(),
        json.dumps({"text": TEXT, "u": 3, "lang": ["fin_Latn"], "prob": [1]}).encode(),
        b"",
        json.dumps(PLAIN).encode(),
    ]
    path = write_shard(tmp_path / "bad.jsonl.zst", b"\n".join(lines) + b"\n")
    rows = rows_of(path, max_doc_bytes=100)
    reasons = [r["quarantine_reason"] and r["quarantine_reason"].split(":")[0] for r in rows]
    assert reasons == [
        None,
        "invalid_json",
        "invalid_utf8",
        "invalid_unicode",
        "empty_text",
        "missing_text",
        "wrong_type",
        "wrong_type",
        "too_large",
        "wrong_type",
        None,
    ]
    assert rows[2]["raw"] == lines[2] and rows[2]["source"] == f"{path}:3"
    assert rows[-1]["source"] == f"{path}:12"  # the blank line is not a record, but line numbers stay true


def test_truncated_zstd_keeps_what_was_read_and_quarantines_the_tail(tmp_path: Path) -> None:
    records = [{"id": str(i), "text": f"{TEXT} {i}"} for i in range(3000)]
    whole = write_shard(tmp_path / "whole.jsonl.zst", records)
    cut = tmp_path / "cut.jsonl.zst"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    rows = rows_of(cut)
    *documents, tail = rows
    assert tail["quarantine_reason"].startswith("truncated_stream")
    assert all(r["quarantine_reason"] is None for r in documents)
    assert [r["doc_id"] for r in documents] == [str(i) for i in range(len(documents))]
    assert 0 < len(documents) < 3000 and tail["raw"] is not None


def test_corrupt_gzip_is_quarantined(tmp_path: Path) -> None:
    good = write_shard(tmp_path / "a.jsonl.gz", [PLAIN] * 50).read_bytes()
    broken = tmp_path / "b.jsonl.gz"
    broken.write_bytes(good[:20] + b"\x00garbage\x00" * 10)
    (row,) = [r for r in rows_of(broken) if r["quarantine_reason"]]
    assert row["quarantine_reason"].split(":")[0] in ("corrupt_stream", "truncated_stream")


def test_a_line_over_the_limit_is_skipped_in_bounded_memory(tmp_path: Path) -> None:
    huge = json.dumps({"text": "y" * 3_000_000}).encode()
    path = write_shard(
        tmp_path / "huge.jsonl", b"\n".join([json.dumps(PLAIN).encode(), huge, json.dumps(PLAIN).encode()])
    )
    first, big, last = rows_of(path, max_doc_bytes=1000)
    assert big["quarantine_reason"].startswith("too_large") and len(big["raw"]) <= 1 << 20
    assert first["quarantine_reason"] is None and last["quarantine_reason"] is None and last["source"].endswith(":3")


@pytest.mark.usefixtures("ray_local")
def test_read_shard_streams_batches_and_the_read_task_leaves_a_marker(tmp_path: Path) -> None:
    path = write_shard(tmp_path / "s.jsonl.zst", [{"id": str(i), "text": TEXT} for i in range(2500)])
    config = ReaderConfig(paths=[str(path)], batch_rows=1000)
    tables = list(read_shard(shard(path, 1), config))
    assert [t.num_rows for t in tables] == [1000, 1000, 500] and tables[0].schema == READ_SCHEMA
    read = read_documents(listed(str(path)), config, Location(str(tmp_path / "markers")))
    assert sum(batch.num_rows for batch in read.iter_batches(batch_format="pyarrow")) == 2500
    (marker,) = (tmp_path / "markers").iterdir()
    assert orjson.loads(marker.read_bytes())["rows"] == 2500


def test_small_shards_are_read_together_in_order_and_big_ones_alone() -> None:
    small = [shard(f"s{i:02d}", 100) for i in range(40)]
    groups = bundles(small, task_bytes=1000, min_tasks=2)
    assert [len(g) for g in groups] == [10] * 4  # 4,000 bytes in tasks of 1,000
    assert [s for g in groups for s in g] == small  # every shard once, in input order
    assert len(bundles(small, task_bytes=10**9, min_tasks=8)) == 8  # enough tasks for the CPUs
    mixed = [shard("a", 5000), shard("b", 10), shard("c", 10), shard("d", 5000)]
    assert [[s.uri for s in g] for g in bundles(mixed, task_bytes=2000, min_tasks=1)] == [["a"], ["b", "c"], ["d"]]
    assert bundles([], task_bytes=1, min_tasks=4) == []


def test_listing_expands_dirs_and_globs_and_names_what_is_missing(tmp_path: Path) -> None:
    for name in ("fin_Latn/1.jsonl.zst", "fin_Latn/2.jsonl.zst", "eng_Latn/1.jsonl.gz", "eng_Latn/README.md"):
        write_shard(tmp_path / name, [PLAIN])
    found = listed(str(tmp_path))
    assert [Path(s.uri).relative_to(tmp_path).as_posix() for s in found] == [
        "eng_Latn/1.jsonl.gz",
        "fin_Latn/1.jsonl.zst",
        "fin_Latn/2.jsonl.zst",
    ]
    assert len(listed(f"{tmp_path}/fin_*/*.zst")) == 2
    with pytest.raises(InputError, match="does not exist: .*nope.jsonl"):
        listed(str(tmp_path / "nope.jsonl"))
    with pytest.raises(InputError, match=r"input.paths\[1\].*matches no shard files"):
        listed(str(tmp_path), f"{tmp_path}/*.parquet")
    literal = write_shard(tmp_path / "part[1].jsonl", [PLAIN])  # a name that looks like a pattern is that file
    assert [s.uri for s in listed(str(literal))] == [str(literal)]


def test_a_shard_deleted_after_listing_is_quarantined(tmp_path: Path) -> None:
    (row,) = shard_rows(shard(tmp_path / "gone.jsonl", 0), ReaderConfig(paths=["x"]))
    assert row["quarantine_reason"].startswith("unreadable_shard: FileNotFoundError")


@pytest.mark.shared_data
def test_real_hplt_records_from_shared_data() -> None:
    folder = SHARED_DATA / "hplt-format"
    v12 = rows_of(folder / "monotextor_sample1_hplt_v1.2_fi_20docs.jsonl.zst")
    assert len(v12) == 20 and all(r["quarantine_reason"] is None and r["source_lang"] == ["fi"] for r in v12)
    assert all("scores" in meta(r) and "langs" in meta(r) for r in v12)
    (example,) = rows_of(folder / "hplt_v2_documented_example_ILLUSTRATIVE.jsonl")
    assert example["doc_id"] == "b8ff3519ba78334d6f63ed20239c42ce" and example["crawl_ts"] == "2021-05-09T10:26:25Z"
    assert example["source_lang"] == ["eng_Latn", "fra_Latn", "deu_Latn"] and "pii" in meta(example)
    excerpts = folder / "../hplt-v2-excerpts/fin_Latn.jsonl.zst"
    if excerpts.exists():
        body = zstandard.ZstdDecompressor().stream_reader(excerpts.open("rb")).read().decode().splitlines()
        assert len(rows_of(excerpts)) == len(body)


def test_s3_credentials_and_endpoint_from_the_aws_environment(
    s3_storage: tuple[StorageConfig, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    storage, bucket = s3_storage
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": storage.endpoint_url,
    }.items():
        monkeypatch.setenv(name, value)
    Location(f"s3://{bucket}/env/a.jsonl", storage).put_bytes(b'{"text": "from the environment"}\n')
    (found,) = listed(f"s3://{bucket}/env/*.jsonl", storage=StorageConfig())  # settings from the environment only
    (row,) = shard_rows(found, ReaderConfig(paths=["x"]))
    assert row["text"] == "from the environment" and row["source"] == f"s3://{bucket}/env/a.jsonl:1"


def test_a_zstd_bomb_is_read_in_memory_bounded_by_the_limit_not_by_the_ratio(tmp_path: Path) -> None:
    path = tmp_path / "bomb.jsonl.zst"
    with path.open("wb") as out:
        with zstandard.ZstdCompressor(level=3).stream_writer(out, closefd=False) as writer:
            for _ in range(256):  # 256 MiB of one line, in a few KB
                writer.write(b"a" * (1 << 20))
        out.write(zstandard.ZstdCompressor().compress(b'\n{"id": "ok", "text": "fine"}\n'))
    assert path.stat().st_size < 64 << 10
    tracemalloc.start()
    rows = rows_of(path, max_doc_bytes=1000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [row["quarantine_reason"] is None for row in rows] == [False, True] and rows[1]["doc_id"] == "ok"
    assert rows[0]["quarantine_reason"] == f"too_large: line of {256 << 20} bytes" and len(rows[0]["raw"]) <= 1 << 20
    assert peak < 32 << 20, f"{peak / 2**20:.0f} MiB"


def test_deep_json_and_numbers_a_double_cannot_hold(tmp_path: Path) -> None:
    lines = [
        '{"text": "t", "x": ' + "[" * 300 + "]" * 300 + "}",  # orjson reads it, cannot write it back
        '{"text": "t", "x": ' + "[" * 5000 + "]" * 5000 + "}",  # past orjson's and Python's depth
        '{"text": "t", "n": NaN}',
        '{"text": "t", "n": 1e400, "big": 123456789012345678901234567890, "low": -9223372036854775809, "k": 12}',
        '{"text": "call: 12345678901234567890123, ok", "k": 1}',  # long digits inside a string: read exactly
    ]
    path = tmp_path / "odd.jsonl"
    path.write_text("\n".join(lines) + "\n")
    deep, deeper, nan, big, string = rows_of(path)
    assert deep["quarantine_reason"].startswith("too_deep") and deep["raw"] == lines[0].encode()
    assert deeper["quarantine_reason"].startswith("too_deep") and deeper["raw"] == lines[1].encode()
    assert nan["quarantine_reason"] == "invalid_json: NaN is not a JSON number"
    assert big["quarantine_reason"] is None
    assert meta(big) == {"n": "1e400", "big": "123456789012345678901234567890", "low": "-9223372036854775809", "k": 12}
    assert string["quarantine_reason"] is None and string["text"] == "call: 12345678901234567890123, ok"
    assert meta(string) == {"k": 1}


def test_blocks_are_cut_by_bytes_as_well_as_by_rows(tmp_path: Path) -> None:
    path = write_shard(tmp_path / "big.jsonl", [{"id": str(i), "text": "x" * 600} for i in range(10)])
    tables = list(read_shard(shard(path, 1), ReaderConfig(paths=[str(path)], batch_bytes=1000)))
    assert [table.num_rows for table in tables] == [2, 2, 2, 2, 2]


def test_an_unexpected_error_on_one_record_quarantines_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = readers.map_record

    def failing(obj: dict, fmt: str, max_doc_bytes: int) -> dict:
        if obj.get("id") == "bad":
            raise RuntimeError("a bug\nover two lines")
        return real(obj, fmt, max_doc_bytes)

    monkeypatch.setattr(readers, "map_record", failing)
    path = write_shard(tmp_path / "s.jsonl", [{"id": "good", "text": TEXT}, {"id": "bad", "text": TEXT}])
    good, bad = rows_of(path)
    assert good["quarantine_reason"] is None
    assert bad["quarantine_reason"] == "stage_error:read:RuntimeError: a bug over two lines" and bad["raw"]
