"""The corpus job end to end on a real local Ray: sample, bad input, S3 in and out, rerun, crash + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from shardflow.config import load_config, validate
from shardflow.errors import ConfigError, OutputStateError
from shardflow.lease import lease
from shardflow.pipelines.corpus import RUN_LEASE, CorpusConfig, run_corpus
from shardflow.storage import Location, StorageConfig
from support import SAMPLE, fail_third_staged_move, sample_records, write_shard

pytestmark = pytest.mark.usefixtures("ray_local")


def corpus_config(
    paths: list[str], output: str, keep: list[str] | None = None, if_exists: str = "resume", **sections: Any
) -> CorpusConfig:
    raw = {
        "input": {"paths": paths},
        "output": {"path": output, "if_exists": if_exists},
        "stages": [{"op": "langid", "keep": keep or []}],
        **sections,
    }
    return validate(raw, CorpusConfig)


def read_files(root: str, manifest: dict[str, Any], kind: str, storage: StorageConfig | None = None) -> list[dict]:
    rows = []
    for entry in manifest["files"]:
        if entry["kind"] == kind:
            fs, path = Location(root, storage or StorageConfig()).join(entry["path"]).filesystem()
            with fs.open(path, "rb") as handle:
                table = pq.read_table(handle)
            assert table.num_rows == entry["rows"]
            rows += [{**row, "_lang_dir": entry["lang"]} for row in table.to_pylist()]
    return rows


def test_sample_run_writes_a_language_partitioned_corpus(tmp_path: Path) -> None:
    result = run_corpus(corpus_config([str(SAMPLE)], str(tmp_path / "out")))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest == result.manifest and not result.already_done
    records = sample_records(recrawl=True)
    assert manifest["counts"] == {"read": len(records), "kept": len(records), "dropped": 0, "quarantined": 0}
    docs = read_files(str(tmp_path / "out"), manifest, "corpus")
    assert sorted(d["doc_id"] for d in docs) == sorted(r["id"] for r in records)
    assert all(d["lang"] == d["_lang_dir"] for d in docs)
    assert {"raw", "quarantine_reason", "drop_reason"}.isdisjoint(docs[0])
    assert json.loads(docs[0]["meta"])["collection"] == "udhr-sample"
    assert sum(lang["kept"] for lang in manifest["languages"].values()) == len(records)
    assert [s["name"] for s in manifest["stages"]] == ["read", "langid"]
    assert len(manifest["inputs"]) == 57 and manifest["versions"]["ray"]
    assert not (tmp_path / "out" / "_staging").exists()


def test_bad_input_is_quarantined_and_counts_reconcile(tmp_path: Path) -> None:
    good = [{"id": r["id"], "text": r["text"]} for r in sample_records()[:300]]
    write_shard(tmp_path / "in" / "good.jsonl.zst", good[:150])
    whole = write_shard(tmp_path / "whole.jsonl.zst", good[150:]).read_bytes()
    (tmp_path / "in" / "cut.jsonl.zst").write_bytes(whole[: len(whole) // 2])
    write_shard(
        tmp_path / "in" / "bad.jsonl",
        b'{"text": "ok fine words here"}\n{"text": \n{"id": 1}\n{"text": "\xff"}\n{"text": ""}\n',
    )
    config = corpus_config([str(tmp_path / "in")], str(tmp_path / "out"), keep=["eng_Latn", "fra_Latn"])
    manifest = run_corpus(config).manifest
    counts = manifest["counts"]
    assert counts["read"] == counts["kept"] + counts["dropped"] + counts["quarantined"]
    assert counts["quarantined"] == 5  # 4 bad lines + the truncated tail of cut.jsonl.zst
    assert manifest["stages"][0]["reasons"] == {
        "invalid_json": 1,
        "missing_text": 1,
        "invalid_utf8": 1,
        "empty_text": 1,
        "truncated_stream": 1,
    }
    assert manifest["stages"][1]["reasons"] == {"langid:not_in_keep_list": counts["dropped"]}
    quarantined = read_files(str(tmp_path / "out"), manifest, "quarantine")
    assert {q["source"].rsplit("/", 1)[1] for q in quarantined} >= {"bad.jsonl:2", "bad.jsonl:3"}
    assert all(q["quarantine_reason"] and q["raw"] is not None for q in quarantined)
    removed = read_files(str(tmp_path / "out"), manifest, "removed")
    assert len(removed) == counts["dropped"] and all(r["drop_reason"] == "langid:not_in_keep_list" for r in removed)
    assert {d["lang"] for d in read_files(str(tmp_path / "out"), manifest, "corpus")} <= {"eng_Latn", "fra_Latn"}


def test_a_repeated_id_is_quarantined_naming_where_it_was_first_read(tmp_path: Path) -> None:
    write_shard(
        tmp_path / "in" / "a.jsonl",
        [{"id": "x", "text": "one"}, {"id": "y", "text": "two"}, {"id": "x", "text": "three"}],
    )
    write_shard(tmp_path / "in" / "b.jsonl", [{"id": "y", "text": "two"}, {"id": "z", "text": "four"}])
    write_shard(tmp_path / "in" / "c.jsonl", [{"text": "no id"}, {"text": "no id"}])  # ids from url + text
    a = str(tmp_path / "in" / "a.jsonl")
    config = {"input": {"paths": [str(tmp_path / "in")]}, "stages": [{"op": "exact_dedup"}], "ray": {"progress": False}}
    manifest = run_corpus(validate({**config, "output": {"path": str(tmp_path / "out")}}, CorpusConfig)).manifest
    assert manifest["counts"] == {"read": 7, "kept": 4, "dropped": 0, "quarantined": 3}
    quarantined = {q["source"]: q for q in read_files(str(tmp_path / "out"), manifest, "quarantine")}
    assert quarantined[f"{a}:3"]["quarantine_reason"] == f"duplicate_id: x was first read at {a}:1"
    assert json.loads(quarantined[f"{a}:3"]["raw"])["text"] == "three"  # the record is kept, as read
    assert quarantined[str(tmp_path / "in" / "b.jsonl:1")]["quarantine_reason"].endswith(f"first read at {a}:2")
    assert str(tmp_path / "in" / "c.jsonl:2") in quarantined
    kept = read_files(str(tmp_path / "out"), manifest, "corpus")
    assert sorted(d["text"] for d in kept) == ["four", "no id", "one", "two"]

    allowed = {
        **config,
        "input": {**config["input"], "duplicate_ids": "allow"},
        "output": {"path": str(tmp_path / "all")},
    }
    manifest = run_corpus(validate(allowed, CorpusConfig)).manifest  # repeated ids kept, identical texts deduped
    assert manifest["counts"] == {"read": 7, "kept": 5, "dropped": 2, "quarantined": 0}


def test_a_50_mb_document_is_quarantined_by_default_and_kept_when_allowed(tmp_path: Path) -> None:
    huge = "word " * (10 << 20)  # 50 MiB of text
    write_shard(tmp_path / "in" / "big.jsonl.zst", [{"id": "big", "text": huge}, {"id": "small", "text": "short one"}])
    config = {"input": {"paths": [str(tmp_path / "in")]}, "stages": [{"op": "langid"}], "ray": {"progress": False}}
    manifest = run_corpus(validate({**config, "output": {"path": str(tmp_path / "out")}}, CorpusConfig)).manifest
    assert manifest["counts"] == {"read": 2, "kept": 1, "dropped": 0, "quarantined": 1}
    (quarantined,) = read_files(str(tmp_path / "out"), manifest, "quarantine")
    assert quarantined["quarantine_reason"].startswith("too_large: text of 52428800 bytes")
    assert len(quarantined["raw"]) > 50 << 20  # the whole line, nothing lost

    raised = {
        **config,
        "input": {**config["input"], "max_doc_bytes": 64 << 20},
        "output": {"path": str(tmp_path / "ok")},
    }
    manifest = run_corpus(validate(raised, CorpusConfig)).manifest
    assert manifest["counts"] == {"read": 2, "kept": 2, "dropped": 0, "quarantined": 0}
    kept = {d["doc_id"]: d for d in read_files(str(tmp_path / "ok"), manifest, "corpus")}
    assert kept["big"]["text"] == huge and kept["big"]["lang"] == "eng_Latn"


def test_reads_shards_from_s3_and_writes_the_corpus_to_s3(s3_storage) -> None:
    storage, bucket = s3_storage
    fs, _ = Location(f"s3://{bucket}", storage).filesystem()
    for lang in ("fin_Latn", "rus_Cyrl", "zho_Hans"):
        fs.put_file(str(SAMPLE / lang / "1.jsonl.zst"), f"{bucket}/shards/{lang}/1.jsonl.zst")
    fs.pipe_file(f"{bucket}/shards/bad.jsonl", b'{"text": \n')
    # an archived object: listed and opened, then every read refused
    fs.pipe_file(f"{bucket}/shards/cold.jsonl", b'{"text": "x"}\n', StorageClass="GLACIER")
    output = f"s3://{bucket}/corpus-out"
    config = corpus_config(
        [f"s3://{bucket}/shards/"],
        output,
        storage=storage.model_dump(mode="json") | {"key": "testing", "secret": "testing"},
    )
    manifest = run_corpus(config).manifest
    stored = json.loads(fs.cat_file(f"{bucket}/corpus-out/manifest.json"))
    assert stored["counts"] == manifest["counts"] and manifest["counts"]["quarantined"] == 2
    assert manifest["stages"][0]["reasons"] == {"invalid_json": 1, "unreadable_shard": 1}
    docs = read_files(output, manifest, "corpus", storage)
    assert {d["lang"] for d in docs} >= {"fin_Latn", "rus_Cyrl", "zho_Hans"}
    assert len(docs) == manifest["counts"]["kept"] == manifest["counts"]["read"] - 2
    assert all(d["source"].startswith(f"s3://{bucket}/shards/") for d in docs)
    assert "testing" not in json.dumps(stored)  # credentials never reach outputs
    assert not fs.exists(f"{bucket}/corpus-out/_staging")


def test_rerun_is_a_no_op_another_config_is_refused_and_overwrite_replaces(tmp_path: Path) -> None:
    shard = str(SAMPLE / "fin_Latn")
    output = str(tmp_path / "out")
    first = run_corpus(corpus_config([shard], output)).manifest
    again = run_corpus(corpus_config([shard], output))
    assert again.already_done and again.manifest == first
    with pytest.raises(OutputStateError, match="made with a different config.*if_exists=overwrite"):
        run_corpus(corpus_config([shard], output, keep=["eng_Latn"]))
    replaced = run_corpus(corpus_config([shard], output, keep=["eng_Latn"], if_exists="overwrite"))
    assert replaced.manifest["counts"]["dropped"] == first["counts"]["read"]
    assert not list((tmp_path / "out" / "corpus").glob("**/*.parquet"))


def test_a_second_run_on_an_output_in_use_is_refused_naming_the_holder_and_touches_nothing(tmp_path: Path) -> None:
    output = tmp_path / "out"
    staged = output / "_staging" / "0123" / "corpus" / "part.parquet"  # the files of the run in progress
    staged.parent.mkdir(parents=True)
    staged.write_bytes(b"PAR1")
    with lease(Location(str(output)).join(RUN_LEASE), f"a run into {output}"):
        with pytest.raises(OutputStateError, match=r"a run into .*out is already running \(host .*, pid \d+"):
            run_corpus(corpus_config([str(SAMPLE / "fin_Latn")], str(output), if_exists="overwrite"))
    assert staged.read_bytes() == b"PAR1"  # neither cleared nor replaced


def _staged_stats(output: Path) -> list[Path]:
    return list(output.glob("_staging/*/stats/*.json"))


def test_a_killed_run_resumes_without_losing_or_duplicating_documents(tmp_path: Path) -> None:
    texts = [r["text"] for r in sample_records()]
    for shard in range(40):
        records = [{"id": f"{shard}-{i}", "text": f"{texts[(shard * 37 + i) % len(texts)]} {i}"} for i in range(800)]
        write_shard(tmp_path / "in" / f"{shard:02d}.jsonl.zst", records)
    output = tmp_path / "out"
    config_file = tmp_path / "run.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {
                "input": {"paths": [str(tmp_path / "in")], "batch_rows": 500},
                "stages": [{"op": "langid"}],
                "output": {"path": str(output)},
                "ray": {"num_cpus": 2, "progress": False},
            }
        )
    )

    driver = subprocess.Popen(
        [sys.executable, "-m", "shardflow.cli", "run", str(config_file)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not _staged_stats(output) and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    assert _staged_stats(output), "the run was killed before it wrote anything"
    assert not (output / "manifest.json").exists() and not (output / "corpus").exists()

    resumed = run_corpus(load_config(config_file, CorpusConfig)).manifest
    assert resumed["shards_this_attempt"] < 40  # finished shards were kept, not read again
    fresh = run_corpus(load_config(config_file, CorpusConfig, [f"output.path={tmp_path / 'fresh'}"])).manifest
    resumed_ids = [d["doc_id"] for d in read_files(str(output), resumed, "corpus")]
    fresh_ids = [d["doc_id"] for d in read_files(str(tmp_path / "fresh"), fresh, "corpus")]
    assert len(resumed_ids) == len(set(resumed_ids)) == 40 * 800
    assert sorted(resumed_ids) == sorted(fresh_ids)
    assert resumed["counts"] == fresh["counts"] and resumed["languages"] == fresh["languages"]


def test_a_crash_while_committing_is_finished_by_the_next_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shards = [str(SAMPLE / lang / "1.jsonl.zst") for lang in ("fin_Latn", "eng_Latn", "rus_Cyrl", "jpn_Jpan")]
    output = tmp_path / "out"
    fail_third_staged_move(monkeypatch, ".parquet")
    with pytest.raises(OSError, match="disk went away"):
        run_corpus(corpus_config(shards, str(output)))
    assert not (output / "manifest.json").exists() and list(output.glob("_staging/*/COMMIT.json"))
    monkeypatch.undo()

    finished = run_corpus(corpus_config(shards, str(output)))
    assert finished.manifest["shards_this_attempt"] == 4  # from the plan written by the first attempt
    expected = sorted(
        r["id"] for r in sample_records() if r["lang"][0] in ("fin_Latn", "eng_Latn", "rus_Cyrl", "jpn_Jpan")
    )
    assert sorted(d["doc_id"] for d in read_files(str(output), finished.manifest, "corpus")) == expected
    assert finished.manifest["counts"]["read"] == len(expected) and not (output / "_staging").exists()


def test_a_pool_that_takes_every_cpu_is_refused(tmp_path: Path) -> None:
    config = validate(
        {
            "input": {"paths": [str(SAMPLE / "fin_Latn")]},
            "output": {"path": str(tmp_path / "o")},
            "stages": [{"op": "langid", "resources": {"concurrency": 2}}],
        },
        CorpusConfig,
    )
    with pytest.raises(ConfigError, match=r"stages\.0\.resources: the actor pools ask for 2 CPU of .* would hang"):
        run_corpus(config)


def test_quality_stage_drops_with_reasons_per_language(tmp_path: Path) -> None:
    spam = [{"id": f"spam-{i}", "text": "buy cheap pills now\n" * 20} for i in range(5)]
    write_shard(tmp_path / "in" / "spam.jsonl", spam)
    long_docs = [
        {"id": f"{lang}-all", "text": "\n".join(r["text"] for r in sample_records() if r["lang"][0] == lang)}
        for lang in ("eng_Latn", "fin_Latn", "zho_Hans")
    ]
    write_shard(tmp_path / "in" / "long.jsonl.zst", long_docs)
    config = validate(
        {
            "input": {"paths": [str(tmp_path / "in")]},
            "output": {"path": str(tmp_path / "out")},
            "stages": [{"op": "langid"}, {"op": "quality"}],
        },
        CorpusConfig,
    )
    manifest = run_corpus(config).manifest
    quality = manifest["stages"][2]
    assert quality["name"] == "quality" and quality["in"] == 8 and quality["dropped"] == 5
    assert quality["reasons"] == {"quality:gopher_repetition.top_2_gram": 5}  # a check that separates
    assert manifest["languages"]["eng_Latn"]["drop_reasons"] == {"quality:gopher_repetition.top_2_gram": 5}
    kept = read_files(str(tmp_path / "out"), manifest, "corpus")
    assert sorted(d["doc_id"] for d in kept) == ["eng_Latn-all", "fin_Latn-all", "zho_Hans-all"]
    assert all(d["quality"]["reason"] is None for d in kept)
