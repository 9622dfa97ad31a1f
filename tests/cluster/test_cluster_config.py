"""The cluster configs keep their promises: token auth on every node, nothing exposed, one nightly refresh at a time."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from support import REPO


def test_every_node_starts_with_token_auth_and_the_dashboard_stays_on_loopback() -> None:
    config = yaml.safe_load((REPO / "cluster" / "ray-cluster.yaml").read_text())
    starts = config["head_start_ray_commands"][1:] + config["worker_start_ray_commands"][1:]
    assert starts and all(command.startswith("RAY_AUTH_MODE=token ") for command in starts)
    assert "--dashboard-host=127.0.0.1" in config["head_start_ray_commands"][1]
    assert "0.0.0.0" not in (REPO / "cluster" / "ray-cluster.yaml").read_text()
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token", "~/shardflow-dist": "./dist"}
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


KUBERAY = REPO / "cluster" / "kuberay"
NIGHT = 24 * 3600


def kuberay_documents(name: str) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all((KUBERAY / name).read_text()) if doc}


def assert_refresh_rayjob(spec: dict) -> None:
    cluster = spec["rayClusterSpec"]
    assert spec["entrypoint"].startswith("python -m shardflow.cli refresh /etc/shardflow/refresh.yaml ")
    assert cluster["authOptions"] == {"mode": "token"}
    assert cluster["headGroupSpec"]["serviceType"] == "ClusterIP"
    assert spec["shutdownAfterJobFinishes"] is True
    # A run is failed, and its cluster deleted, well before the next night's run starts.
    assert spec["activeDeadlineSeconds"] + spec["ttlSecondsAfterFinished"] < NIGHT - 3600
    volumes = cluster["headGroupSpec"]["template"]["spec"]["volumes"]
    assert {"name": "config", "configMap": {"name": "shardflow-refresh-config"}} in volumes


def test_the_nightly_schedules_expose_nothing_and_hold_no_credentials() -> None:
    for name in ("refresh-nightly.yaml", "refresh-cronjob.yaml"):
        text = (KUBERAY / name).read_text()
        assert not any(word in text for word in ("LoadBalancer", "NodePort", "Ingress", "0.0.0.0", "hostNetwork"))
        assert not any(word in text for word in ("AWS_", "secretKeyRef", "password", "aws_secret"))
        assert "Service" not in {doc["kind"] for doc in yaml.safe_load_all(text)}


def test_the_raycronjob_refreshes_at_two_with_token_auth_using_only_fields_kuberay_1_6_knows() -> None:
    docs = kuberay_documents("refresh-nightly.yaml")
    assert list(docs) == ["RayCronJob"]
    cron = docs["RayCronJob"]
    assert cron["apiVersion"] == "ray.io/v1" and cron["spec"]["schedule"] == "0 2 * * *"
    # KubeRay 1.6's RayCronJobSpec is schedule, jobTemplate (a RayJobSpec) and suspend; an unknown field
    # such as concurrencyPolicy would be refused, so the run's deadline is what keeps runs apart.
    assert set(cron["spec"]) <= {"schedule", "jobTemplate", "suspend"} and cron["spec"]["suspend"] is False
    assert_refresh_rayjob(cron["spec"]["jobTemplate"])


def test_the_fallback_cronjob_forbids_overlap_and_may_only_touch_rayjobs() -> None:
    docs = kuberay_documents("refresh-cronjob.yaml")
    cron = docs["CronJob"]["spec"]
    assert cron["schedule"] == "0 2 * * *" and cron["concurrencyPolicy"] == "Forbid"
    assert 0 < cron["startingDeadlineSeconds"] <= 3600
    job = cron["jobTemplate"]["spec"]
    pod = job["template"]["spec"]
    assert job["backoffLimit"] == 0 and pod["restartPolicy"] == "Never"

    account = pod["serviceAccountName"]
    assert docs["ServiceAccount"]["metadata"]["name"] == account
    assert docs["RoleBinding"]["subjects"] == [{"kind": "ServiceAccount", "name": account}]
    role = docs["Role"]
    assert docs["RoleBinding"]["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert len(role["rules"]) == 1
    rule = role["rules"][0]
    assert rule["apiGroups"] == ["ray.io"] and rule["resources"] == ["rayjobs"]
    assert set(rule["verbs"]) <= {"create", "get", "list", "delete"} and "create" in rule["verbs"]
    assert "ClusterRole" not in docs and "ClusterRoleBinding" not in docs

    # The pod creates RayJobs from the ConfigMap's template: generated names, the RayCronJob's RayJob.
    template = yaml.safe_load(docs["ConfigMap"]["data"]["rayjob.yaml"])
    assert template["kind"] == "RayJob" and "name" not in template["metadata"]
    assert template["metadata"]["generateName"] == "shardflow-refresh-"
    assert template["metadata"]["labels"] == {"app.kubernetes.io/name": "shardflow-refresh"}
    assert_refresh_rayjob(template["spec"])
    assert template["spec"] == kuberay_documents("refresh-nightly.yaml")["RayCronJob"]["spec"]["jobTemplate"]
    mounted = {volume["name"]: volume for volume in pod["volumes"]}
    container = pod["containers"][0]
    mount = next(m for m in container["volumeMounts"] if "configMap" in mounted[m["name"]])
    assert mounted[mount["name"]]["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    script = container["args"][0]
    assert f"kubectl create -f {mount['mountPath']}/rayjob.yaml" in script
    assert "app.kubernetes.io/name=shardflow-refresh" in script
    # The waiting pod outlives its refresh (so Forbid covers the whole run) but not the night.
    assert (
        template["spec"]["activeDeadlineSeconds"] + template["spec"]["ttlSecondsAfterFinished"]
        < (job["activeDeadlineSeconds"])
    )
    assert job["activeDeadlineSeconds"] < NIGHT


FAKE_KUBECTL = """#!/bin/bash
echo "$*" >> "$CALLS"
case "$1 $2" in
  "get rayjobs") if [[ "$*" == *jsonpath* ]]; then printf '%b' "$LISTED"; else printf '%b' "$NAMES"; fi ;;
  "create -f") echo rayjob.ray.io/shardflow-refresh-abcde ;;
  "get rayjob.ray.io/shardflow-refresh-abcde")
    if [[ "$*" == *jobDeploymentStatus* ]]; then printf Complete; else printf '%s' "$JOB_STATUS"; fi ;;
esac
"""


def run_scheduler_script(tmp_path: Path, listed: str, names: str = "", job_status: str = "SUCCEEDED"):
    kubectl = tmp_path / "bin" / "kubectl"
    kubectl.parent.mkdir()
    kubectl.write_text(FAKE_KUBECTL)
    kubectl.chmod(0o755)
    cron = kuberay_documents("refresh-cronjob.yaml")["CronJob"]["spec"]
    script = cron["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"][0]
    calls = tmp_path / "calls"
    calls.touch()
    env = {
        **os.environ,
        "PATH": f"{kubectl.parent}{os.pathsep}{os.environ['PATH']}",
        "CALLS": str(calls),
        "LISTED": listed,
        "NAMES": names,
        "JOB_STATUS": job_status,
    }
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    return done, calls.read_text().splitlines()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("state", ["", "New", "Initializing", "Running", "Suspended", "Retrying"])
def test_the_scheduler_pod_starts_nothing_while_a_refresh_has_not_ended(tmp_path: Path, state: str) -> None:
    listed = f"shardflow-refresh-aaaaa Complete\\nshardflow-refresh-bbbbb {state}\\n"
    done, calls = run_scheduler_script(tmp_path, listed)
    assert done.returncode == 0, done.stderr
    assert "shardflow-refresh-bbbbb" in done.stdout
    assert not any(call.startswith(("create", "delete")) for call in calls)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("job_status, code", [("SUCCEEDED", 0), ("FAILED", 1)])
def test_the_scheduler_pod_prunes_old_runs_starts_one_and_reports_how_it_ended(
    tmp_path: Path, job_status: str, code: int
) -> None:
    listed = "shardflow-refresh-a Complete\\nshardflow-refresh-b Failed\\nshardflow-refresh-c ValidationFailed\\n"
    names = "".join(f"rayjob.ray.io/shardflow-refresh-{run}\\n" for run in "abc")
    done, calls = run_scheduler_script(tmp_path, listed, names, job_status)
    assert done.returncode == code, done.stderr
    assert [call for call in calls if call.startswith(("create", "delete"))] == [
        "delete rayjob.ray.io/shardflow-refresh-a",
        "create -f /etc/shardflow-refresh/rayjob.yaml -o name",
    ]
    assert "get rayjob.ray.io/shardflow-refresh-abcde -o jsonpath={.status.jobDeploymentStatus}" in calls
