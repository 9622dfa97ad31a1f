"""The rerank job end to end: real local Ray, real models (the offline default encoder, tiny checkpoints)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardflow.config import validate
from shardflow.errors import ConfigError, OutputStateError
from shardflow.lease import lease
from shardflow.pipelines.corpus import CorpusConfig, run_corpus
from shardflow.pipelines.rerank import LEASE_FILE, Attempt, RerankConfig, _publish, rerank
from shardflow.storage import Location
from support import REPO, kill_worker_when, write_rerank_task, write_shard, write_tiny_encoder


def parsed(run: Path) -> list[list[str]]:
    return [line.split() for line in run.read_text().splitlines()]


@pytest.mark.usefixtures("ray_local")
def test_the_default_embedding_reranker_fixes_a_shuffled_cross_lingual_run(tmp_path: Path) -> None:
    inputs = write_rerank_task(tmp_path / "in")
    config = validate(
        {**inputs, "top_k": 100, "chunks": 3, "output": {"path": str(tmp_path / "out")}, "ray": {"progress": False}},
        RerankConfig,
    )
    summary = rerank(config, progress=False)
    assert summary["pairs"] == {"pairs": 30 * 91, "missing_docids": 30}
    metrics = json.loads((tmp_path / "out" / "shuffled.metrics.json").read_text())
    assert metrics["before"]["nDCG@10"] < 0.3 and metrics["after"]["nDCG@10"] >= 0.8, metrics
    assert metrics["after"]["RR@10"] > metrics["before"]["RR@10"] and metrics["after"]["R@100"] == 1.0
    lines = parsed(tmp_path / "out" / "shuffled.run")
    assert len(lines) == 30 * 91 and all(line[5] == "shardflow-embedding" for line in lines)
    for qid in {line[0] for line in lines}:
        ranked = [line for line in lines if line[0] == qid]
        assert [int(line[3]) for line in ranked] == list(range(1, 92))
        assert ranked[-1][2] == f"ghost-{qid}"  # not in the corpus: kept, counted, ranked last
        assert [float(line[4]) for line in ranked] == sorted((float(line[4]) for line in ranked), reverse=True)


@pytest.mark.usefixtures("ray_local")
def test_a_rerun_scores_only_the_missing_chunks_and_writes_the_identical_run(tmp_path: Path) -> None:
    inputs = write_rerank_task(tmp_path / "in", articles=12)
    texts = [json.loads(line)["text"] for line in Path(inputs["corpus"]["path"]).read_text().splitlines()]
    model = write_tiny_encoder(tmp_path / "ce", "bert-1", texts)
    raw = {
        **inputs,
        "chunks": 6,
        "top_k": 20,
        "scorer": {"kind": "cross_encoder", "model": str(model), "max_length": 64},
        "output": {"path": str(tmp_path / "out")},
        "ray": {"progress": False},
    }
    first = rerank(validate(raw, RerankConfig), progress=False)
    scores = sorted((tmp_path / "out" / "_staging" / "scores").glob("*/chunk-*.parquet"))
    assert first["scored_this_attempt"]["chunks"] == len(scores) >= 4 and first["pairs"]["pairs"] == 12 * 20
    run = tmp_path / "out" / "shuffled.run"
    reference = run.read_bytes()
    assert len(parsed(run)) == 12 * 20
    for lost in scores[::2]:  # as if the job had been killed with half of the chunks written
        lost.unlink()
    run.unlink()
    again = rerank(validate(raw, RerankConfig), progress=False)
    assert again["scored_this_attempt"]["chunks"] == len(scores[::2])
    assert run.read_bytes() == reference
    nothing = rerank(validate(raw, RerankConfig), progress=False)
    assert nothing["scored_this_attempt"]["chunks"] == 0 and run.read_bytes() == reference

    # fusion rewrites the runs from the same scores; a plain reference: reciprocal rank fusion of the
    # reranked run's ranks and the input run's, 0.5 / (60 + rank) each, unscorable pairs (ghosts) last
    fused = rerank(validate({**raw, "fusion": {"method": "rrf"}}, RerankConfig), progress=False)
    assert fused["scored_this_attempt"]["chunks"] == 0
    first = {(q, d): int(r) for q, _, d, r, _, _ in parsed(Path(inputs["runs"][0])) if int(r) <= 20}
    expected, found, unfused = {}, {}, {}
    for line in parsed(run):
        found.setdefault(line[0], []).append(line[2])
    for line in reference.decode().splitlines():
        unfused.setdefault(line.split()[0], []).append(line.split()[2])
    for qid, reranked in unfused.items():
        real = [d for d in reranked if not d.startswith("ghost-")]
        rrf = {d: 0.5 / (60 + real.index(d) + 1) + 0.5 / (60 + first[(qid, d)]) for d in real}
        ghosts = sorted((d for d in reranked if d.startswith("ghost-")), key=lambda d: first[(qid, d)])
        expected[qid] = sorted(real, key=lambda d: (-rrf[d], first[(qid, d)])) + ghosts
    assert found == expected != unfused and {line[5] for line in parsed(run)} == {"shardflow-cross_encoder+rrf"}


@pytest.mark.usefixtures("ray_local")
def test_bm25_reranks_with_statistics_of_the_job_s_distinct_candidates(tmp_path: Path) -> None:
    inputs = write_rerank_task(tmp_path / "in", articles=6)
    raw = {**inputs, "chunks": 3, "scorer": {"kind": "bm25"}, "output": {"path": str(tmp_path / "out")}}
    summary = rerank(validate({**raw, "ray": {"progress": False}}, RerankConfig), progress=False)
    assert summary["pairs"]["pairs"] == 6 * 19 and summary["scored_this_attempt"]["chunks"] == 3
    (statistics,) = (tmp_path / "out" / "_staging" / "prepared").glob("*/statistics.json")
    assert json.loads(statistics.read_text())["documents"] == 18  # each candidate once, not once per query
    lines = parsed(tmp_path / "out" / "shuffled.run")
    assert {line[5] for line in lines} == {"shardflow-bm25"}
    for qid in {line[0] for line in lines}:
        ranked = [line for line in lines if line[0] == qid]
        assert ranked[-1][2] == f"ghost-{qid}" and len(ranked) == 19
        assert [float(line[4]) for line in ranked] == sorted((float(line[4]) for line in ranked), reverse=True)


def test_run_files_must_be_trec_lines(tmp_path: Path, ray_local: None) -> None:
    inputs = write_rerank_task(tmp_path / "in", articles=2)
    bad = tmp_path / "in" / "bad.run"
    bad.write_text("a1 Q0 fra_Latn-1 1 0.5 tag\na1 fra_Latn-2 2\n")
    raw = {**inputs, "runs": [str(bad)], "output": {"path": str(tmp_path / "out")}, "ray": {"progress": False}}
    with pytest.raises(Exception, match=r"bad.run: not a TREC run line .*'a1 fra_Latn-2 2'"):
        rerank(validate(raw, RerankConfig), progress=False)


@pytest.mark.usefixtures("ray_local")
def test_the_listwise_scorer_reranks_each_query_list_in_the_job(tmp_path: Path) -> None:
    inputs = write_rerank_task(tmp_path / "in", articles=4)
    texts = [json.loads(line)["text"] for line in Path(inputs["corpus"]["path"]).read_text().splitlines()]
    labels = " ".join(chr(ord("A") + i) for i in range(26))
    model = write_tiny_encoder(tmp_path / "first", "qwen3-lm", [*texts, labels], lowercase=False)
    raw = {
        **inputs,
        "chunks": 2,
        "scorer": {"kind": "first", "model": str(model), "window": 5, "stride": 2, "passage_tokens": 16},
        "output": {"path": str(tmp_path / "out")},
        "ray": {"progress": False},
    }
    summary = rerank(validate(raw, RerankConfig), progress=False)
    lines = parsed(tmp_path / "out" / "shuffled.run")
    assert summary["pairs"]["pairs"] == len(lines) == 4 * 13
    for qid in ("a1", "a2", "a3", "a4"):
        ranked = [line for line in lines if line[0] == qid]
        assert [line[4] for line in ranked[:12]] == [f"{12 - i:.6f}" for i in range(12)]  # list length - position
        assert ranked[-1][2] == f"ghost-{qid}"


def test_a_job_killed_after_some_chunks_resumes_to_the_uninterrupted_output(
    tmp_path: Path, rerank_reference: dict
) -> None:
    settings, reference = rerank_reference["settings"], rerank_reference["run"]
    config_file = tmp_path / "rerank.yaml"
    config_file.write_text(json.dumps({**settings, "output": {"path": str(tmp_path / "killed")}}))
    job = subprocess.Popen(
        [sys.executable, "-m", "shardflow.cli", "rerank", str(config_file)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the kill takes its local Ray with it
    )
    scores = tmp_path / "killed" / "_staging" / "scores"
    deadline = time.monotonic() + 240
    while len(list(scores.glob("*/chunk-*.parquet"))) < 2 and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    written = len(list(scores.glob("*/chunk-*.parquet")))
    assert 2 <= written < 8 and not (tmp_path / "killed" / "shuffled.run").exists()

    resumed = rerank(validate({**settings, "output": {"path": str(tmp_path / "killed")}}, RerankConfig), False)
    fresh = rerank_reference["summary"]
    # a worker of the killed job may still publish before the resumed job takes the lease, never after: the
    # resumed job scores at most the chunks missing when they were counted, and writes the uninterrupted run
    assert resumed["scored_this_attempt"]["chunks"] <= fresh["scored_this_attempt"]["chunks"] - written
    assert (tmp_path / "killed" / "shuffled.run").read_bytes() == reference
    assert not (tmp_path / "killed" / LEASE_FILE).exists()  # the dead job's lease taken over, then released
    assert resumed["runs"]["shuffled"]["metrics"] == fresh["runs"]["shuffled"]["metrics"]

    # in one more run, a worker of the join (a CPU task) killed, then a scorer actor: both redone, nothing lost
    results = tmp_path / "actor" / "_staging" / "scores"
    two_done = lambda: len(list(results.glob("*/chunk-*.parquet"))) >= 2  # noqa: E731
    kills = lambda: [kill_worker_when("ray::JoinShuffleReduce"), kill_worker_when("ray::ChunkScorer", two_done)]  # noqa: E731
    with ThreadPoolExecutor(1) as pool:
        killed = pool.submit(kills)
        survived = rerank(validate({**settings, "output": {"path": str(tmp_path / "actor")}}, RerankConfig), False)
    assert None not in killed.result(), killed.result()
    assert survived["retries"]["actor_restarts"] == {"ChunkScorer": 1}
    assert [name for name in survived["retries"]["reruns"] if name.startswith("JoinShuffleReduce")], survived["retries"]
    assert (tmp_path / "actor" / "shuffled.run").read_bytes() == reference


def test_a_second_rerank_into_the_same_output_refuses_naming_the_first(tmp_path: Path) -> None:
    inputs = write_rerank_task(tmp_path / "in", articles=2)
    raw = {**inputs, "output": {"path": str(tmp_path / "out")}, "ray": {"progress": False}}
    holder = rf"already running \(host {socket.gethostname()}, pid {os.getpid()},"
    with lease(Location(str(tmp_path / "out" / LEASE_FILE)), "the first rerank"):
        with pytest.raises(OutputStateError, match=holder):
            rerank(validate(raw, RerankConfig), progress=False)
    assert not (tmp_path / "out" / "_staging").exists()


def test_a_straggler_of_a_replaced_attempt_cannot_publish_a_chunk(tmp_path: Path) -> None:
    result = pa.table({"qid": ["a1"], "rerank_score": [0.5]})
    out = Location(str(tmp_path / "scores" / "chunk-00000.parquet"))
    with lease(Location(str(tmp_path / LEASE_FILE)), "the resumed rerank") as held:
        assert not _publish(result, out, Attempt(held.where, "the-killed-attempt"))
        assert not (tmp_path / "scores").exists() or not list((tmp_path / "scores").iterdir())
        assert _publish(result, out, Attempt(held.where, held.holder["id"]))
    assert out.read_table().equals(result) and [f.name for f in (tmp_path / "scores").iterdir()] == [out.name]
    assert not _publish(result, out, Attempt(held.where, held.holder["id"]))  # its job has ended


@pytest.mark.usefixtures("ray_local")
def test_a_changed_scorer_or_queries_refuses_to_resume_and_restart_starts_over(tmp_path: Path) -> None:
    inputs = write_rerank_task(tmp_path / "in", articles=3)
    raw = {**inputs, "chunks": 2, "scorer": {"kind": "bm25", "k1": 0.9}, "ray": {"progress": False}}
    out, run = {"path": str(tmp_path / "out")}, tmp_path / "out" / "shuffled.run"
    rerank(validate({**raw, "output": out}, RerankConfig), progress=False)
    before = run.read_bytes()

    shorter = {**raw, "scorer": {"kind": "bm25", "k1": 2.0}}
    with pytest.raises(ConfigError, match=r"scorer\.k1: 0\.9 -> 2\.0\); rerun with --restart"):
        rerank(validate({**shorter, "output": out}, RerankConfig), progress=False)
    queries = tmp_path / "in" / "other-queries.jsonl"
    queries.write_text(Path(inputs["queries"]).read_text().replace("All human beings", "All people"))
    with pytest.raises(ConfigError, match=r"\(queries_xxh64: \"\w+\" -> \"\w+\"\); rerun with --restart"):
        rerank(validate({**raw, "queries": str(queries), "output": out}, RerankConfig), progress=False)
    assert run.read_bytes() == before

    restarted = rerank(validate({**shorter, "output": out}, RerankConfig), progress=False, restart=True)
    rerank(validate({**shorter, "output": {"path": str(tmp_path / "fresh")}}, RerankConfig), progress=False)
    assert restarted["scored_this_attempt"]["chunks"] == 2
    assert run.read_bytes() == (tmp_path / "fresh" / "shuffled.run").read_bytes() != before
    assert len(list((tmp_path / "out" / "_staging" / "scores").iterdir())) == 1


def corpus_as(form: str, docs: list[dict], folder: Path) -> dict:
    """The same documents as a TSV file, a parquet file with other field names, or a shardflow output."""
    if form == "tsv":
        (folder / "corpus.tsv").write_text("".join(f"{d['doc_id']}\t{' '.join(d['text'].split())}\n" for d in docs))
        return {"path": str(folder / "corpus.tsv")}
    if form == "parquet":
        table = pa.table({"pid": [d["doc_id"] for d in docs], "body": [d["text"] for d in docs]})
        pq.write_table(table, folder / "corpus.parquet")
        return {"path": str(folder / "corpus.parquet"), "id_field": "pid", "text_field": "body"}
    write_shard(folder / "shards" / "a.jsonl.zst", [{"id": d["doc_id"], "text": d["text"]} for d in docs])
    output = {"path": str(folder / "corpus"), "format": "hplt" if form == "hplt" else "parquet"}
    config = {"input": {"paths": [str(folder / "shards")]}, "output": output, "ray": {"progress": False}}
    run_corpus(validate(config, CorpusConfig))
    return {"path": str(folder / "corpus")}


@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize("form", ["tsv", "parquet", "shardflow", "hplt"])
def test_the_corpus_may_be_tsv_parquet_or_a_shardflow_output(tmp_path: Path, form: str) -> None:
    inputs = write_rerank_task(tmp_path / "in", articles=3)
    docs = [json.loads(line) for line in Path(inputs["corpus"]["path"]).read_text().splitlines()]
    raw = {
        **inputs,
        "corpus": corpus_as(form, docs, tmp_path / "in"),
        "chunks": 2,
        "scorer": {"kind": "bm25"},  # any scorer: what is tested is reading the corpus
        "output": {"path": str(tmp_path / "out")},
        "ray": {"progress": False},
    }
    summary = rerank(validate(raw, RerankConfig), progress=False)
    assert summary["pairs"] == {"pairs": 3 * 10, "missing_docids": 3}
    assert len(parsed(tmp_path / "out" / "shuffled.run")) == 30


def test_runs_queries_corpus_and_output_on_s3(s3_storage, tmp_path: Path, ray_local: None) -> None:
    storage, bucket = s3_storage
    write_rerank_task(tmp_path / "in", articles=3)
    fs, _ = Location(f"s3://{bucket}", storage).filesystem()
    for name in ("shuffled.run", "queries.jsonl", "corpus.jsonl", "qrels.txt"):
        fs.put_file(str(tmp_path / "in" / name), f"{bucket}/in/{name}")
    raw = {
        "runs": [f"s3://{bucket}/in/shuffled.run"],
        "queries": f"s3://{bucket}/in/queries.jsonl",
        "corpus": {"path": f"s3://{bucket}/in/corpus.jsonl"},
        "qrels": f"s3://{bucket}/in/qrels.txt",
        "chunks": 2,
        "scorer": {"kind": "bm25"},  # its statistics are prepared on S3 too
        "output": {"path": f"s3://{bucket}/out"},
        "storage": storage.model_dump(),
        "ray": {"progress": False},
    }
    summary = rerank(validate(raw, RerankConfig), progress=False)
    assert summary["pairs"] == {"pairs": 30, "missing_docids": 3}
    run = fs.cat_file(f"{bucket}/out/shuffled.run").decode().splitlines()
    assert len(run) == 30 and set(json.loads(fs.cat_file(f"{bucket}/out/shuffled.metrics.json"))) == {"before", "after"}
