"""The ``shardflow`` command as a user runs it: a subprocess with its own embedded Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from support import REPO, sample_records


def shardflow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardflow.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_run_the_sample_then_rerun_it(tmp_path: Path) -> None:
    output = tmp_path / "corpus"
    relative = os.path.relpath(output, REPO)  # as the sample's own out/sample is: relative to where it runs
    # four of the sample's 56 languages: embedding every kept article on the CPU is most of the whole
    # sample's two minutes, and the rest of the path is the same
    keep = ("--set", "stages.0.keep=[eng_Latn,fra_Latn,fin_Latn,deu_Latn]")
    first = shardflow("run", "configs/sample.yaml", *keep, "--set", f"output.path={relative}")
    assert first.returncode == 0, first.stderr[-3000:]
    # a log (no terminal): progress every 30 s, then the summary; none of Ray's INFO lines and known warnings
    printed = (first.stdout + first.stderr).splitlines()
    assert len(printed) < 40, first.stderr
    assert not [line for line in printed if "INFO" in line or "core_worker.cc" in line or "Token auth" in line]
    manifest = json.loads((output / "manifest.json").read_text())
    counts = manifest["counts"]
    assert manifest["stages"][2] | {"reasons": None} == {
        "name": "exact_dedup",
        "in": manifest["stages"][1]["out"],
        "out": manifest["stages"][1]["out"] - 12,
        "dropped": 12,
        "quarantined": 0,
        "reasons": None,
    }  # the re-crawl shard
    assert counts["read"] == len(sample_records(recrawl=True)) and counts["quarantined"] == 0
    assert f"read {counts['read']:,} = kept {counts['kept']:,} + dropped {counts['dropped']:,}" in first.stderr
    assert all(stage in first.stderr for stage in ("langid", "exact_dedup", "quality"))
    assert f"report: {relative}/report.html" in first.stderr and (output / "report.json").exists()
    (output / "report.html").unlink()
    rebuilt = shardflow("report", str(output))
    assert rebuilt.returncode == 0 and (output / "report.html").exists()

    again = shardflow("run", "configs/sample.yaml", *keep, "--set", f"output.path={relative}")
    assert again.returncode == 0 and "already complete" in again.stderr

    # the sample's index, searched with the real default encoder: an English query finds its article
    kept = pq.read_table(output / "corpus", columns=["doc_id", "text"], partitioning=None).to_pylist()
    heading = "Article 26 Everyone has the right to education"
    article = next(row for row in kept if " ".join(row["text"].split()).startswith(heading))
    queries = tmp_path / "queries.tsv"
    queries.write_text("q1\tthe right to education\nq2\tvoting in free elections\n")
    found = shardflow("search", str(output), "--queries", str(queries), "--out", str(tmp_path / "run"), "--k", "5")
    assert found.returncode == 0, found.stderr[-3000:]
    lines = [line.split() for line in (tmp_path / "run").read_text().splitlines()]
    assert [(qid, rank) for qid, _, _, rank, _, _ in lines] == [(q, str(r)) for q in ("q1", "q2") for r in range(1, 6)]
    assert lines[0][2] == article["doc_id"] and {line[2] for line in lines} <= {row["doc_id"] for row in kept}
    assert manifest["index"]["vectors"] == counts["kept"] and manifest["index"]["factory"] == "Flat"


def test_user_errors_are_one_line_with_exit_status_2(tmp_path: Path) -> None:
    typo = shardflow("run", "configs/sample.yaml", "--set", "output.pth=x")
    assert typo.returncode == 2 and typo.stderr.strip() == "shardflow: config error: output.pth: unknown key"
    missing = shardflow(
        "run",
        "configs/sample.yaml",
        "--set",
        f"input.paths=[{tmp_path}/none.jsonl.zst]",
        "--set",
        f"output.path={tmp_path}/out",
    )
    assert missing.returncode == 2 and missing.stderr.strip().endswith(
        f"input path does not exist: {tmp_path}/none.jsonl.zst"
    )
    assert "Traceback" not in missing.stderr
    no_file = shardflow("run", str(tmp_path / "nope.yaml"))
    assert no_file.returncode == 2 and "config file not found" in no_file.stderr


def test_help_documents_the_command() -> None:
    helped = shardflow("run", "--help")
    assert helped.returncode == 0 and "--set KEY=VALUE" in helped.stdout and "--address" in helped.stdout
    submitted = shardflow("submit", "--help")
    assert (
        submitted.returncode == 0
        and "--follow" in submitted.stdout
        and "token" not in submitted.stdout.split("options")[1]
    )
    listed = shardflow("jobs", "--help")
    assert listed.returncode == 0 and "list,status,logs,stop" in listed.stdout
    reranked = shardflow("rerank", "--help")  # the bundled example itself runs in tests/cluster/test_submit.py
    assert reranked.returncode == 0 and "--set KEY=VALUE" in reranked.stdout
    searched = shardflow("search", "--help")
    assert searched.returncode == 0 and all(flag in searched.stdout for flag in ("--queries", "--out", "--k"))
