"""Faults in the corpus job on a real local Ray: a killed CPU worker or model actor costs time, not documents."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from shardflow.config import validate
from shardflow.pipelines.corpus import CorpusConfig, run_corpus
from support import kill_worker_when, sample_records, verdicts, write_shard, write_tiny_encoder

pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.mark.parametrize(
    ("victim", "retried"),
    [("ray::MapWorker(MapBatches(Embedder)).submit", "actor_restarts"), ("ray::ReadShards", "tasks")],
    ids=["model-actor", "read-task"],
)
def test_a_killed_worker_costs_time_not_documents(tmp_path: Path, victim: str, retried: str) -> None:
    records = sample_records()[:480]
    for shard in range(12):
        write_shard(tmp_path / "in" / f"{shard:02d}.jsonl.zst", records[shard::12])
    model = write_tiny_encoder(tmp_path / "model", "bert", [r["text"] for r in records])
    stages = [{"op": "langid"}, {"op": "exact_dedup"}, {"op": "embed", "model": str(model), "token_budget": 64}]

    def run(name: str) -> dict[str, Any]:
        config = {
            "input": {"paths": [str(tmp_path / "in")], "batch_rows": 8},
            "output": {"path": str(tmp_path / name)},
            "stages": stages,
            "ray": {"progress": False},
        }
        return run_corpus(validate(config, CorpusConfig)).manifest

    undisturbed = run("undisturbed")
    with ThreadPoolExecutor(1) as pool:
        killed = pool.submit(kill_worker_when, victim)
        disturbed = run("disturbed")
    assert killed.result() is not None, f"no {victim} process was running to kill"
    assert disturbed["counts"] == undisturbed["counts"]
    assert verdicts(str(tmp_path / "disturbed"), disturbed) == verdicts(str(tmp_path / "undisturbed"), undisturbed)
    assert undisturbed["retries"] == {"tasks": {}, "actor_restarts": {}}
    name = victim.removeprefix("ray::").split(".")[0]  # the report names what Ray retried
    assert [what for what in disturbed["retries"][retried] if what.startswith(name)], disturbed["retries"]
