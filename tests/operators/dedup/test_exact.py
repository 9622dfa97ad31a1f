"""Exact dedup: normalised keys, one kept document per group across shards, the same one on every run."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from shardflow.config import validate
from shardflow.errors import ConfigError, OutputStateError
from shardflow.operators.base import RunContext
from shardflow.operators.dedup.exact import ExactDedup, ExactDedupConfig, dedup_key, normalise
from shardflow.operators.readers import ReaderConfig, read_documents
from shardflow.output.corpus import OutputLayout
from shardflow.pipelines.corpus import CorpusConfig, run_corpus
from shardflow.shards import Shard, list_shards
from shardflow.storage import Location
from support import sample_records, write_shard


def test_keys_ignore_case_whitespace_and_compatibility_forms() -> None:
    assert normalise("  Ｈｅｌｌｏ\tWORLD\n\nagain ") == "hello world again"
    assert dedup_key("Straße  ist\nDA") == dedup_key("STRASSE ist da")
    assert dedup_key("hello world") != dedup_key("hello, world")


def texts() -> list[str]:
    return [r["text"] for r in sample_records() if r["lang"][0] in ("eng_Latn", "fra_Latn")][:30]


def write_inputs(folder: Path) -> dict[str, str]:
    """Three shards; returns doc_id -> the id that must be kept for its group."""
    base = texts()
    write_shard(folder / "a.jsonl.zst", [{"id": f"a{i:02d}", "text": t} for i, t in enumerate(base[:20])])
    write_shard(
        folder / "b.jsonl.gz",
        [
            {"id": "b00", "text": base[0]},  # same text, other shard
            {"id": "b01", "text": base[1].upper()},  # case only
            {"id": "b02", "text": "  " + base[2].replace(" ", "   ") + "\n"},
            *({"id": f"b{i:02d}", "text": t} for i, t in enumerate(base[20:], 3)),
        ],
    )
    write_shard(
        folder / "c.jsonl",
        [
            {"id": "000", "text": base[3]},  # a lower id in a later shard: the earlier document is kept
            {"id": "c01", "text": base[0]},
            {"text": "", "id": "bad"},
        ],
    )
    expected = {f"a{i:02d}": f"a{i:02d}" for i in range(20)} | {f"b{i:02d}": f"b{i:02d}" for i in range(3, 13)}
    return expected | {"b00": "a00", "c01": "a00", "b01": "a01", "b02": "a02", "000": "a03"}


@pytest.mark.usefixtures("ray_local")
def test_one_document_per_group_across_shards_the_same_on_every_run(tmp_path: Path) -> None:
    expected = write_inputs(tmp_path / "in")
    results = []
    for attempt in ("one", "two"):
        config = validate(
            {
                "input": {"paths": [str(tmp_path / "in")]},
                "output": {"path": str(tmp_path / attempt)},
                "stages": [{"op": "langid"}, {"op": "exact_dedup"}],
            },
            CorpusConfig,
        )
        manifest = run_corpus(config).manifest
        rows = {}
        for entry in manifest["files"]:
            if entry["kind"] != "quarantine":
                for row in pq.read_table(tmp_path / attempt / entry["path"]).to_pylist():
                    rows[row["doc_id"]] = (entry["kind"], row["dup_cluster"], row["dup_rep"])
        results.append(rows)
        assert manifest["stages"][2]["reasons"] == {"exact_dedup:duplicate": 5}
        assert manifest["counts"]["quarantined"] == 1
    first, second = results
    assert first == second
    assert {doc: cluster for doc, (_, cluster, _) in first.items()} == expected
    kept = {doc for doc, (kind, _, rep) in first.items() if kind == "corpus"}
    assert kept == {doc for doc, cluster in expected.items() if doc == cluster}
    assert all(rep == (kind == "corpus") for kind, _, rep in first.values())


@pytest.mark.usefixtures("ray_local")
def test_the_duplicate_table_is_reused_by_a_resumed_run_and_refused_if_inputs_changed(tmp_path: Path) -> None:
    write_inputs(tmp_path / "in")
    reader = ReaderConfig(paths=[str(tmp_path / "in")])
    shards = list_shards([Location(str(tmp_path / "in"))])
    layout = OutputLayout(Location(str(tmp_path / "out")), "run")

    def prepare(shards: list[Shard]) -> None:
        stage = ExactDedup(ExactDedupConfig(partitions=2), RunContext(shards, layout, "attempt"), "stages.0")
        stage.prepare(read_documents(shards, reader))

    prepare(shards)
    staging = tmp_path / "out" / "_staging" / "run"
    table, index = staging / "exact_dedup", staging / "exact_index"
    files = sorted(table.glob("shard=*/*.parquet"))
    assert len({f.parent for f in files}) == 2  # the two shards that hold duplicates
    assert pq.read_table(index / "keys").num_rows == 35  # every document's key (not the empty one's)
    stamps = [f.stat().st_mtime_ns for f in files]
    prepare(shards)
    assert [f.stat().st_mtime_ns for f in files] == stamps
    with pytest.raises(OutputStateError, match="inputs changed"):
        prepare(shards[:2])


@pytest.mark.usefixtures("ray_local")
def test_incremental_run_against_an_exact_index_equals_one_run_over_both_batches(tmp_path: Path) -> None:
    expected = write_inputs(tmp_path / "in")
    night1 = [str(tmp_path / "in" / "a.jsonl.zst"), str(tmp_path / "in" / "b.jsonl.gz")]
    night2 = [str(tmp_path / "in" / "c.jsonl")]

    def run(name: str, paths: list[str], **exact: str) -> dict[str, tuple[str, str]]:
        config = {"input": {"paths": paths}, "output": {"path": str(tmp_path / name)}}
        manifest = run_corpus(validate(config | {"stages": [{"op": "exact_dedup", **exact}]}, CorpusConfig)).manifest
        return {
            row["doc_id"]: (entry["kind"], row["dup_cluster"])
            for entry in manifest["files"]
            if entry["kind"] != "quarantine"
            for row in pq.read_table(tmp_path / name / entry["path"]).to_pylist()
        }

    first = run("first", night1)
    index = str(tmp_path / "first" / "exact_index")
    second = run("second", night2, index_from=index)
    assert first | second == run("both", night1 + night2)
    assert {doc: cluster for doc, (_, cluster) in (first | second).items()} == expected
    assert second["c01"] == ("removed", "a00") and second["000"] == ("removed", "a03")
    assert (tmp_path / "second" / "exact_index" / "index.json").exists()
    with pytest.raises(ConfigError, match="already in the index"):
        run("again", night1, index_from=index)
    with pytest.raises(ConfigError, match="no exact index"):
        run("missing", night2, index_from=str(tmp_path / "nowhere"))
