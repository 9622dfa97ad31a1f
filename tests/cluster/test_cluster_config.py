"""The cluster launcher config keeps its promises: token auth on every node, the dashboard on loopback."""

from __future__ import annotations

import yaml

from support import REPO


def test_every_node_starts_with_token_auth_and_the_dashboard_stays_on_loopback() -> None:
    config = yaml.safe_load((REPO / "cluster" / "ray-cluster.yaml").read_text())
    starts = config["head_start_ray_commands"][1:] + config["worker_start_ray_commands"][1:]
    assert starts and all(command.startswith("RAY_AUTH_MODE=token ") for command in starts)
    assert "--dashboard-host=127.0.0.1" in config["head_start_ray_commands"][1]
    assert "0.0.0.0" not in (REPO / "cluster" / "ray-cluster.yaml").read_text()
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    groups = config["available_node_types"]
    assert {"head", "cpu_workers", "gpu_workers"} <= set(groups) and groups["head"]["resources"] == {"CPU": 0}


def test_the_rayjob_turns_token_auth_on_and_exposes_nothing() -> None:
    job = yaml.safe_load((REPO / "cluster" / "kuberay" / "rayjob-corpus.yaml").read_text())
    cluster = job["spec"]["rayClusterSpec"]
    assert job["kind"] == "RayJob" and cluster["authOptions"] == {"mode": "token"}
    assert cluster["headGroupSpec"]["serviceType"] == "ClusterIP"
    assert job["spec"]["entrypoint"].startswith("python -m shardflow.cli run ")
    groups = {group["groupName"]: group for group in cluster["workerGroupSpecs"]}
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu["nvidia.com/gpu"] == "4"
