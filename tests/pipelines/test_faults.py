"""Faults in the corpus job on a real local Ray: a killed CPU worker or model actor costs time, not documents."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from shardflow.config import validate
from shardflow.errors import OutputStateError
from shardflow.operators.dedup.exact import ExactDedup
from shardflow.operators.registry import STAGES
from shardflow.pipelines.corpus import CorpusConfig, run_corpus
from shardflow.storage import Location, StorageConfig
from support import jsonl_bytes, kill_worker_when, sample_records, verdicts, write_shard, write_tiny_encoder


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


def test_a_shard_replaced_between_the_dedup_pass_and_the_stream_fails_the_run_then_reruns(
    s3_storage: tuple[StorageConfig, str], tmp_path: Path
) -> None:
    storage, bucket = s3_storage
    fs, _ = Location(f"s3://{bucket}", storage).filesystem()
    records = sample_records()[:40]
    for shard in range(2):
        fs.pipe_file(f"{bucket}/in/{shard}.jsonl", jsonl_bytes(records[shard::2]))
    replacement = jsonl_bytes(records[1::2][::-1] + records[:3])  # other lines at the same numbers

    class Replacing(ExactDedup):  # defined here: the driver runs ``prepare``, between the pass and the stream
        def prepare(self, documents: Any) -> None:
            super().prepare(documents)
            if fs.cat_file(f"{bucket}/in/1.jsonl") != replacement:
                fs.pipe_file(f"{bucket}/in/1.jsonl", replacement)

    output = f"s3://{bucket}/out"
    config = {
        "input": {"paths": [f"s3://{bucket}/in/"]},
        "output": {"path": output},
        "stages": [{"op": "exact_dedup"}],
        "storage": storage.model_dump(mode="json") | {"key": "testing", "secret": "testing"},
        "ray": {"progress": False},
    }
    with STAGES.using("exact_dedup", Replacing), pytest.raises(Exception, match=r"in/1.jsonl changed after this run"):
        run_corpus(validate(config, CorpusConfig))
    assert not fs.exists(f"{bucket}/out/manifest.json")  # nothing of the mixed run was committed
    with pytest.raises(OutputStateError, match="inputs changed"):  # its passes were computed on the old shard
        run_corpus(validate(config, CorpusConfig))
    config["output"]["if_exists"] = "overwrite"
    with STAGES.using("exact_dedup", Replacing):  # starts over on the shard as it is now
        manifest = run_corpus(validate(config, CorpusConfig)).manifest
    assert manifest["counts"] == {"read": 43, "kept": 40, "dropped": 0, "quarantined": 3}  # the repeated ids
