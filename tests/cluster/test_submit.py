"""`shardflow submit` against a real multi-node Ray on this machine (the ``cluster`` fixture: a head and two
workers started with `ray start`, token authentication on, one worker with logical GPUs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shardflow.cluster.submit import entrypoint, job_files, package_folder, refuse_credentials
from shardflow.config import credentials_in, read_config
from shardflow.errors import ConfigError
from support import REPO, LocalCluster


def shardflow(env: dict, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardflow.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


def test_the_sample_corpus_job_runs_on_the_cluster(cluster: LocalCluster, tmp_path: Path) -> None:
    done = shardflow(
        cluster.env,
        "submit",
        "--address",
        cluster.address,
        "run",
        "configs/sample.yaml",
        "--set",  # the CPU stages (model actors on the cluster: the rerank job below)
        "stages=[{op: langid}, {op: exact_dedup}, {op: fuzzy_dedup}, {op: quality}]",
        "--set",
        "index=null",
        "--set",
        f"output.path={tmp_path / 'out'}",
        "--set",
        "ray.progress=false",
        "--follow",
    )
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-2000:])
    assert ": SUCCEEDED" in done.stderr and cluster.env["RAY_AUTH_TOKEN"] not in done.stdout + done.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["read"] == manifest["counts"]["kept"] + manifest["counts"]["dropped"]
    listed = shardflow(cluster.env, "jobs", "list", "--address", cluster.address)
    assert listed.returncode == 0 and "SUCCEEDED" in listed.stdout


def test_a_refresh_job_publishes_a_version_and_a_second_one_nothing(cluster: LocalCluster, tmp_path: Path) -> None:
    light = ["--set", "stages=[{op: exact_dedup}, {op: fuzzy_dedup}]", "--set", "index=null"]
    root = tmp_path / "corpus"
    for attempt in ("first", "second"):
        done = shardflow(
            cluster.env,
            "submit",
            "--address",
            cluster.address,
            "refresh",
            "configs/refresh.yaml",
            *light,
            "--set",
            f"output.path={root}",
            "--set",
            "ray.progress=false",
            "--follow",
        )
        assert done.returncode == 0, (attempt, done.stdout[-3000:], done.stderr[-2000:])
        if attempt == "first":
            assert "published version 1 of" in done.stdout
            record = json.loads((root / "versions" / "v000001" / "version.json").read_text())
            assert record["counts"]["read"] == sum(entry["rows"] for entry in record["inputs"]) > 0
        else:
            assert "no new or changed shards; version 1 stays current" in done.stdout
    assert json.loads((root / "CURRENT.json").read_text())["version"] == 1


def test_the_rerank_example_puts_its_model_actors_on_the_gpu_node(cluster: LocalCluster, tmp_path: Path) -> None:
    done = shardflow(
        cluster.env,
        "submit",
        "--address",
        cluster.address,
        "rerank",
        "configs/rerank.yaml",
        "--set",
        f"output.path={tmp_path / 'out'}",
        "--set",
        "top_k=5",
        "--set",
        "ray.progress=false",
        "--follow",
    )
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-2000:])
    actors = json.loads((tmp_path / "out" / "summary.json").read_text())["scored_this_attempt"]["actors"]
    assert len(actors) == 2  # one per GPU of the cluster
    assert len({actor["node_id"] for actor in actors}) == 1  # the GPU node
    assert sorted(actor["cuda_visible_devices"] for actor in actors) == ["0", "1"]
    assert "150 pairs (5 with a docid the corpus lacks)" in done.stdout and "nDCG@10" in done.stdout  # the job's log
    assert len((tmp_path / "out" / "shuffled.run").read_text().splitlines()) == 150
    metrics = json.loads((tmp_path / "out" / "shuffled.metrics.json").read_text())
    assert metrics["after"]["RR@10"] > metrics["before"]["RR@10"]


def test_a_submission_without_the_token_is_refused(cluster: LocalCluster, tmp_path: Path) -> None:
    env = {key: value for key, value in cluster.env.items() if key != "RAY_AUTH_TOKEN"}
    refused = shardflow(env, "submit", "--address", cluster.address, "run", "configs/sample.yaml")
    assert refused.returncode == 2 and "refused the request" in refused.stderr and "Traceback" not in refused.stderr
    wrong = shardflow({**env, "RAY_AUTH_TOKEN": "0" * 64}, "jobs", "list", "--address", cluster.address)
    assert wrong.returncode == 2 and "refused the request" in wrong.stderr


def test_the_job_carries_the_package_and_no_secrets(tmp_path: Path) -> None:
    snapshot = package_folder(tmp_path)  # from this checkout (an editable install): assembled by the mapping
    for module in (
        "cli.py",
        "operators/embed.py",
        "operators/dedup/fuzzy.py",
        "pipelines/rerank.py",
        "cluster/submit.py",
    ):
        assert (snapshot / module).is_file(), module
    assert list((snapshot / "operators" / "quality_thresholds").glob("*.yaml"))  # data files travel too
    sample = REPO / "configs" / "sample.yaml"
    raw = read_config(sample, ["output.path=configs"])  # an output is never uploaded, even one that exists
    assert job_files(sample, raw, REPO) == [Path("configs/sample/hplt-v2"), Path("configs/sample.yaml")]
    line = entrypoint("run", sample, REPO, ["output.path=/tmp/x y"])
    assert line == "python -m shardflow.cli run configs/sample.yaml --set 'output.path=/tmp/x y' --set ray.address=auto"
    for override in ("storage.secret=abc", "storage={key: AKIA, secret: abc}", "stages.0.api_token=t"):
        with pytest.raises(ConfigError, match="credentials are not sent with a job"):
            entrypoint("run", sample, REPO, [override])
    with pytest.raises(ConfigError, match="outside the working directory"):
        entrypoint("run", Path("/etc/hosts"), REPO, [])


def test_credentials_in_the_config_file_or_beside_the_inputs_never_travel(tmp_path: Path) -> None:
    (tmp_path / "data" / ".aws").mkdir(parents=True)
    (tmp_path / "data" / ".aws" / "credentials").write_text("[default]\n")
    (tmp_path / "job.yaml").write_text("input: {paths: [data/]}\noutput: {path: out}\nstorage: {secret: abc}\n")
    raw = read_config(tmp_path / "job.yaml")
    with pytest.raises(ConfigError, match="storage.secret holds a credential"):
        refuse_credentials(raw, "job.yaml")
    refuse_credentials(read_config(tmp_path / "job.yaml", ["storage.secret=null"]), "job.yaml")  # a null is fine
    assert credentials_in({"stages": [{"op": "embed", "token_budget": 512, "passage_tokens": 8}]}) == []
    with pytest.raises(ConfigError, match=".aws would be uploaded"):
        job_files(tmp_path / "job.yaml", raw, tmp_path)
    with pytest.raises(ConfigError, match="is a home folder"):
        job_files(tmp_path / "job.yaml", raw, Path.home())
