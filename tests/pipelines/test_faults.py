"""Faults in the corpus job on a real local Ray: a killed CPU worker or model actor costs time, not documents."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from shardflow.config import validate
from shardflow.pipelines.corpus import CorpusConfig, run_corpus
from support import kill_worker_when, sample_records, verdicts, write_shard, write_tiny_encoder


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> dict[str, Any]:
    """480 UDHR records in 12 shards through langid, exact dedup and a tiny encoder, and where an undisturbed
    run puts every record."""
    folder = tmp_path_factory.mktemp("faults")
    records = sample_records()[:480]
    for shard in range(12):
        write_shard(folder / "in" / f"{shard:02d}.jsonl.zst", records[shard::12])
    model = write_tiny_encoder(folder / "model", "bert", [r["text"] for r in records])
    stages = [{"op": "langid"}, {"op": "exact_dedup"}, {"op": "embed", "model": str(model), "token_budget": 64}]
    config = {"input": {"paths": [str(folder / "in")], "batch_rows": 8}, "stages": stages, "ray": {"progress": False}}
    output = str(folder / "undisturbed")
    undisturbed = run_corpus(validate({**config, "output": {"path": output}}, CorpusConfig)).manifest
    assert undisturbed["retries"] == {"failed_attempts": {}, "reruns": {}, "actor_restarts": {}}
    return {"config": config, "counts": undisturbed["counts"], "verdicts": verdicts(output, undisturbed)}


@pytest.mark.parametrize(
    ("victim", "retried"),
    [("ray::MapWorker(MapBatches(Embedder)).submit", "actor_restarts"), ("ray::ReadShards", "reruns")],
    ids=["model-actor", "read-task"],
)
def test_a_killed_worker_costs_time_not_documents(job: dict, tmp_path: Path, victim: str, retried: str) -> None:
    with ThreadPoolExecutor(1) as pool:
        killed = pool.submit(kill_worker_when, victim)
        config = validate({**job["config"], "output": {"path": str(tmp_path / "out")}}, CorpusConfig)
        disturbed = run_corpus(config).manifest
    assert killed.result() is not None, f"no {victim} process was running to kill"
    assert disturbed["counts"] == job["counts"]
    assert verdicts(str(tmp_path / "out"), disturbed) == job["verdicts"]
    name = victim.removeprefix("ray::").split(".")[0]  # the report names what Ray retried
    assert [what for what in disturbed["retries"][retried] if what.startswith(name)], disturbed["retries"]
