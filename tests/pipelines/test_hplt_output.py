"""``output.format: hplt``: HPLT's layout and field names, read back as the same documents."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import zstandard

from shardflow.config import validate
from shardflow.errors import ConfigError
from shardflow.operators.readers import ReaderConfig, shard_rows
from shardflow.output.hplt import hplt_shard
from shardflow.pipelines.corpus import CorpusConfig, run_corpus
from shardflow.shards import list_shards
from shardflow.storage import Location
from support import PLAIN, SAMPLE, V2, V3, V4, V12, fail_third_staged_move, sample_records, write_shard

pytestmark = pytest.mark.usefixtures("ray_local")

LANGS = ("fin_Latn", "eng_Latn", "rus_Cyrl", "zho_Hans")
DOCUMENT = ("doc_id", "text", "url", "crawl_ts")


def run(paths: list[str], output: Path, version: str = "v2", **settings: Any) -> dict[str, Any]:
    raw = {
        "input": {"paths": paths},
        "stages": [{"op": "langid"}, {"op": "exact_dedup", "partitions": 2}],
        "output": {"path": str(output), "format": "hplt", "hplt_version": version},
        "ray": {"progress": False},
        **settings,
    }
    return run_corpus(validate(raw, CorpusConfig)).manifest


def read_records(path: Path) -> list[dict[str, Any]]:
    body = zstandard.ZstdDecompressor().stream_reader(path.open("rb")).read().decode("utf-8")
    return [json.loads(line) for line in body.splitlines()]


def read_back(paths: list[str]) -> dict[str, dict[str, Any]]:
    """Each document as shardflow's reader gives it, by id."""
    config = ReaderConfig(paths=paths)
    rows = [row for shard in list_shards([Location(p) for p in paths]) for row in shard_rows(shard, config)]
    assert not [row for row in rows if row.get("quarantine_reason")]
    return {row["doc_id"]: row for row in rows}


def test_the_sample_as_hplt_shards_reads_back_as_the_same_documents(tmp_path: Path) -> None:
    inputs = [str(SAMPLE / lang / "1.jsonl.zst") for lang in LANGS]
    manifest = run(inputs, tmp_path / "out")
    corpus = [entry for entry in manifest["files"] if entry["kind"] == "corpus"]
    assert corpus and all(re.fullmatch(r"corpus/[a-z]{3}_[A-Z][a-z]{3}/\d+\.jsonl\.zst", e["path"]) for e in corpus)
    for lang in {entry["lang"] for entry in corpus}:
        numbers = sorted(int(Path(e["path"]).name.split(".")[0]) for e in corpus if e["lang"] == lang)
        assert numbers == list(range(1, len(numbers) + 1))
    files = sorted((tmp_path / "out" / "corpus").glob("*/*.jsonl.zst"))
    assert sorted(str(f.relative_to(tmp_path / "out")) for f in files) == sorted(e["path"] for e in corpus)

    source = {r["id"]: r for r in sample_records() if r["lang"][0] in LANGS}
    written = 0
    for file in files:
        for record in read_records(file):
            written += 1
            assert list(record)[:8] == ["f", "o", "s", "rs", "u", "c", "ts", "collection"]  # HPLT v2's order
            notes = record["shardflow"]
            original = dict(source[record["id"]])
            assert notes["source_lang"] == original.pop("lang")  # the input's labels, where the reader put them
            assert notes["source_prob"] == pytest.approx(original.pop("prob"), abs=1e-6)
            replaced = notes.get("input", {})
            for name, value in original.items():  # every other input field kept, or under shardflow.input
                assert (replaced[name] if name in replaced else record[name]) == value, name
            assert record["lang"][0] == file.parent.name and len(record["lang"]) == len(record["prob"]) == 3
            assert len(record["seg_langs"]) == record["text"].count("\n") + 1 == len(notes["seg_scores"])
            assert notes["dup_rep"] is True and 0 <= notes["lang_mix"] <= 1
    assert written == manifest["counts"]["kept"] == len(source)

    back = read_back([str(tmp_path / "out" / "corpus")])
    first = read_back(inputs)
    assert back.keys() == first.keys()
    for doc_id, row in back.items():
        assert {n: row[n] for n in DOCUMENT} == {n: first[doc_id][n] for n in DOCUMENT}


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_every_hplt_release_s_records_round_trip_with_the_chosen_field_names(tmp_path: Path, version: str) -> None:
    records = [V12, V2, V3, V4, PLAIN]
    write_shard(tmp_path / "in" / "mixed.jsonl.zst", records)
    manifest = run([str(tmp_path / "in")], tmp_path / "out", version)
    assert manifest["counts"]["kept"] == 1  # one text five times: exact dedup keeps the first
    kept = [record for f in (tmp_path / "out" / "corpus").glob("*/*.jsonl.zst") for record in read_records(f)]
    removed = manifest["counts"]["dropped"]
    assert removed == 4 and len(kept) == 1

    # without dedup every record is kept: each is checked field by field
    manifest = run([str(tmp_path / "in")], tmp_path / "all", version, stages=[{"op": "langid"}])
    written = {r["id"]: r for f in sorted((tmp_path / "all" / "corpus").glob("*/*.jsonl.zst")) for r in read_records(f)}
    back, first = read_back([str(tmp_path / "all" / "corpus")]), read_back([str(tmp_path / "in")])
    assert back.keys() == first.keys() == written.keys() and len(written) == 5
    for doc_id, row in back.items():
        assert {n: row[n] for n in DOCUMENT} == {n: first[doc_id][n] for n in DOCUMENT}
    v12 = next(r for r in written.values() if r["shardflow"].get("input", {}).get("id") == 7)
    v2, v3, v4, plain = (written[key] for key in ("b8ff3519", "c3", "d4", "42"))
    collection, robots = ("crawl_id", "robotstxt") if version == "v3" else ("collection", "robots")
    assert v2[collection] == "wide17" and v2[robots] == "allowed" and v3[collection] == "cc40"
    assert v12[collection] == "wide5" and v12["u"] == "https://a.example/1"
    assert v12["shardflow"]["source_lang"] == ["fi"]  # v1.2's document_lang
    assert v2["pii"] == [[1, 3]] and v2["doc_scores"] == [7.7] and v3["web-register"] == {"IN": 0.8}
    assert v4["openlid_v3"] == V4["openlid_v3"] and v4["md"] == "# t" and plain["extra"] == {"k": [1, 2]}
    assert v2["shardflow"]["source_lang"] == V2["lang"] and v2["lang"][0] == "fin_Latn" and "ts" not in plain
    assert v2["seg_langs"] == V2["seg_langs"] and "input" not in v2["shardflow"]  # the same: nothing replaced


def test_the_dense_index_needs_parquet(tmp_path: Path) -> None:
    raw = {
        "input": {"paths": [str(SAMPLE)]},
        "stages": [{"op": "embed"}],
        "index": {},
        "output": {"path": str(tmp_path / "out"), "format": "hplt"},
    }
    with pytest.raises(ConfigError, match="leave it out with output.format: hplt"):
        validate(raw, CorpusConfig)


def test_a_crash_while_moving_hplt_shards_into_place_is_finished_by_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs = [str(SAMPLE / lang / "1.jsonl.zst") for lang in LANGS]
    moved = fail_third_staged_move(monkeypatch, ".jsonl.zst")  # a staged shard moved to its <n>
    with pytest.raises(OSError, match="disk went away"):
        run(inputs, tmp_path / "out", stages=[{"op": "langid"}])
    assert not (tmp_path / "out" / "manifest.json").exists() and len(moved) == 2
    monkeypatch.undo()

    manifest = run(inputs, tmp_path / "out", stages=[{"op": "langid"}])  # the commit plan is finished
    corpus = sorted(e["path"] for e in manifest["files"] if e["kind"] == "corpus")
    on_disk = sorted(str(f.relative_to(tmp_path / "out")) for f in (tmp_path / "out").glob("corpus/*/*.jsonl.zst"))
    assert on_disk == corpus and {str(tmp_path / "out" / path) for path in corpus} >= set(map(str, moved))
    records = [r for f in (tmp_path / "out" / "corpus").glob("*/*.jsonl.zst") for r in read_records(f)]
    assert sorted(r["id"] for r in records) == sorted(r["id"] for r in sample_records() if r["lang"][0] in LANGS)
    assert not (tmp_path / "out" / "_staging").exists()


def test_a_replaced_input_field_as_deep_as_json_allows_is_kept_as_its_text() -> None:
    deep: Any = "x"
    for _ in range(252):  # as deep as orjson writes in meta (254 levels with it and the field)
        deep = [deep]
    row = {"doc_id": "d", "text": "t", "meta": json.dumps({"seg_langs": deep}), "seg_langs": ["fin_Latn"]}
    (line,) = zstandard.ZstdDecompressor().decompress(hplt_shard(pa.Table.from_pylist([row]), "v2")).splitlines()
    record = json.loads(line)
    assert record["seg_langs"] == ["fin_Latn"] and json.loads(record["shardflow"]["input"]) == {"seg_langs": deep}
