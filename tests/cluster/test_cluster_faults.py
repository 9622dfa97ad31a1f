"""Faults on a real multi-node Ray (the ``cluster`` fixture): a worker node removed in the middle of a corpus
run or of a rerank, and the S3 endpoint gone for a while. Each strikes at a random point of the run (the seed
is in every failure message; ``SHARDFLOW_FAULT_SEED`` replays one). After each, every input record ends where
an undisturbed run puts it (none lost, none twice), the counts reconcile, and the report says what Ray
retried."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from shardflow.config import validate
from shardflow.pipelines.corpus import CorpusConfig, run_corpus
from shardflow.storage import Location, StorageConfig
from support import CPU_WORKER, GPU_WORKER, REPO, LocalCluster, sample_records, verdicts, write_shard

SEED = int(os.environ.get("SHARDFLOW_FAULT_SEED", random.randrange(1 << 30)))
STAGES = [{"op": "langid"}, {"op": "exact_dedup"}, {"op": "quality"}]  # quality: actor calls of seconds
SHARDS = 16


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 shards of 150 UDHR records; each shard repeats 50 of the one before (exact copies across shards)."""
    texts = [record["text"] for record in sample_records()]
    folder = tmp_path_factory.mktemp("faults") / "in"
    for shard in range(SHARDS):
        records = [{"id": f"{shard}-{i}", "text": texts[(shard * 100 + i) % len(texts)]} for i in range(150)]
        write_shard(folder / f"{shard:02d}.jsonl.zst", records)
    return folder


def corpus_config(inputs: str, output: str, storage: dict[str, Any] | None = None) -> dict[str, Any]:
    config = {"input": {"paths": [inputs], "batch_rows": 50}, "stages": STAGES, "output": {"path": output}}
    return {**config, "ray": {"progress": False}, **({"storage": storage} if storage else {})}


@pytest.fixture(scope="module")
def undisturbed(shards: Path, tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> dict[str, Any]:
    """Where every record ends in a run nothing disturbs (on the embedded Ray: the verdicts do not depend on
    where the work ran)."""
    output = str(tmp_path_factory.mktemp("undisturbed") / "out")
    manifest = run_corpus(validate(corpus_config(str(shards), output), CorpusConfig)).manifest
    return {"counts": manifest["counts"], "verdicts": verdicts(output, manifest)}


def start_driver(cluster: LocalCluster, command: str, config: dict[str, Any], folder: Path) -> subprocess.Popen:
    """``shardflow COMMAND CONFIG --address`` as a driver on the head node, as a user would run it."""
    config_file = folder / f"{command}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    return subprocess.Popen(
        [sys.executable, "-m", "shardflow.cli", command, str(config_file), "--address", cluster.gcs],
        cwd=REPO,
        env=cluster.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(driver: subprocess.Popen, seed_note: str) -> None:
    output, _ = driver.communicate(timeout=400)
    assert driver.returncode == 0, (seed_note, output[-4000:])


def wait_for(condition: Callable[[], bool], driver: subprocess.Popen, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert driver.poll() is None, f"the run ended before {what}: {driver.communicate()[0][-3000:]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.05)


NOT_WORK = ("ray::IDLE", "ray::DashboardAgent", "ray::RuntimeEnvAgent", "ray::_", "ray::ActorLocationTracker")


def is_work(title: str) -> bool:
    """A worker process title of an actor call in progress (``ray::<actor>.submit``: a batch, which in this
    module's runs takes seconds, so a kill lands inside it)."""
    return title.startswith("ray::") and not title.startswith(NOT_WORK) and title.rstrip().endswith(".submit")


def busy_worker_node(cluster: LocalCluster) -> int | None:
    """A worker node (not the head) with an actor call of the job running on it right now."""
    for process in psutil.process_iter(["cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        node = next((n for n in (CPU_WORKER, GPU_WORKER) if f"{cluster.temp / str(n)}/" in command), None)
        if node is None or "raylet/raylet" not in command:
            continue
        for child in process.children(recursive=True):
            try:
                if is_work(" ".join(child.cmdline())):
                    return node
            except psutil.Error:
                continue
    return None


def staged(fs: Any, output: str) -> bool:
    fs.invalidate_cache()  # s3fs caches listings
    return bool(fs.glob(f"{output}/_staging/*/stats/*.json"))


def test_a_node_removed_mid_run_costs_time_not_documents(
    cluster: LocalCluster, shards: Path, undisturbed: dict[str, Any], tmp_path: Path
) -> None:
    rng, note = random.Random(SEED), f"SHARDFLOW_FAULT_SEED={SEED}"
    output = str(tmp_path / "out")
    driver = start_driver(cluster, "run", corpus_config(str(shards), output), tmp_path)
    victim: list[int] = []
    try:
        time.sleep(rng.uniform(0, 6))
        wait_for(lambda: victim.append(busy_worker_node(cluster)) or victim[-1] is not None, driver, "work on a node")
        cluster.remove(victim[-1])
        finish(driver, note)
    finally:
        driver.kill()
        if victim and victim[-1] is not None:
            cluster.start(victim[-1])
        cluster.wait_for_nodes(3)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"] == undisturbed["counts"], note
    assert verdicts(output, manifest) == undisturbed["verdicts"], note
    retried = manifest["retries"]
    assert retried.get("reruns") or retried.get("actor_restarts"), (note, retried)  # the report names what was redone


def test_an_s3_outage_mid_run_costs_time_not_documents(
    cluster: LocalCluster, shards: Path, undisturbed: dict[str, Any], s3_server: Any, s3_storage: Any, tmp_path: Path
) -> None:
    rng, note = random.Random(SEED), f"SHARDFLOW_FAULT_SEED={SEED}"
    storage, bucket = s3_storage
    fs, _ = Location(f"s3://{bucket}", storage).filesystem()
    fs.put(str(shards), f"{bucket}/in", recursive=True)
    settings = {**storage.model_dump(mode="json", exclude_none=True), "key": "testing", "secret": "testing"}
    output = f"s3://{bucket}/out"
    driver = start_driver(cluster, "run", corpus_config(f"s3://{bucket}/in", output, settings), tmp_path)
    try:
        wait_for(lambda: staged(fs, f"{bucket}/out"), driver, "a staged corpus file")
        time.sleep(rng.uniform(0, 1.0))
        s3_server.outage(3.0)  # botocore's legacy retries give up after ~2.6 s
        finish(driver, note)
    finally:
        driver.kill()
    fs.invalidate_cache()
    manifest = json.loads(fs.cat_file(f"{bucket}/out/manifest.json"))
    assert manifest["counts"] == undisturbed["counts"], note
    assert verdicts(output, manifest, StorageConfig(**settings)) == undisturbed["verdicts"], note


def test_a_model_node_lost_and_replaced_mid_rerank(
    cluster: LocalCluster, tmp_path: Path, rerank_reference: dict
) -> None:
    rng, note = random.Random(SEED), f"SHARDFLOW_FAULT_SEED={SEED}"
    settings = rerank_reference["settings"]
    driver = start_driver(cluster, "rerank", {**settings, "output": {"path": str(tmp_path / "out")}}, tmp_path)
    vectors = tmp_path / "out" / "_staging" / "prepared"
    try:
        # the embedding scorer's encoders (one per GPU) write a file per block of texts: strike after the first
        wait_for(lambda: any(vectors.glob("*/role=*/part-*.parquet")), driver, "an encoded block")
        time.sleep(rng.uniform(0, 0.5))
        cluster.remove(GPU_WORKER)  # both encoder actors lived there (one per GPU)
        time.sleep(2)
        cluster.start(GPU_WORKER)  # a replacement joins; the actors restart on it
        finish(driver, note)
    finally:
        driver.kill()
        cluster.wait_for_nodes(3)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (tmp_path / "out" / "shuffled.run").read_bytes() == rerank_reference["run"], note
    assert summary["runs"]["shuffled"]["metrics"] == rerank_reference["summary"]["runs"]["shuffled"]["metrics"]
    assert summary["retries"]["actor_restarts"].get("TextBlockEncoder", 0) >= 1, (note, summary["retries"])
