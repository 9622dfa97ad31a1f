"""The cluster configs keep their promises: token auth on every node, nothing exposed, one nightly refresh at a time."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
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


# Secrets and cluster defaults (issue 16, item 19): pinned images and installs, an instance profile and a
# security group on every `ray up` node, a service account with an IAM role on every Ray pod, and a
# NetworkPolicy that admits a head's ports only from its own cluster, its submitter and the operator.

RAY_UP = REPO / "cluster" / "ray-cluster.yaml"
DOCKERFILE = REPO / "Dockerfile"
IRSA = "eks.amazonaws.com/role-arn"
PINNED = re.compile(r"[A-Za-z0-9_.-]+(\[[A-Za-z0-9_,.-]+\])?==[0-9][A-Za-z0-9_.+!-]*")
PIN_OPTIONS = {"--no-cache-dir", "--no-deps", "-U", "--upgrade"}
GIT_REF = r"[0-9a-f]{40}|v?\d+(\.\d+)+\S*"  # a commit or a version tag, never a branch


def config_documents() -> list[tuple[str, dict]]:
    """Every YAML document of cluster/, named by its file, and the RayJob templates kept in ConfigMaps."""
    found = []
    for path in [RAY_UP, *sorted(KUBERAY.glob("*.yaml"))]:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            found.append((path.name, doc))
            if doc.get("kind") == "ConfigMap":
                for key, text in (doc.get("data") or {}).items():
                    if key.endswith((".yaml", ".yml")):
                        found += [(f"{path.name}:{key}", inner) for inner in yaml.safe_load_all(text) if inner]
    return found


def walk(node: object) -> Iterator[tuple[object, object]]:
    """Every (key, value) pair below node, at any depth (list items have the key None)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield (None if isinstance(node, list) else key), value
        yield from walk(value)


def strings() -> list[tuple[str, str]]:
    """Every string in the configs (commands, entrypoints, scripts) and every line of the Dockerfile."""
    found = [(name, value) for name, doc in config_documents() for _, value in walk(doc) if isinstance(value, str)]
    return found + [("Dockerfile", line) for line in DOCKERFILE.read_text().splitlines()]


def images() -> list[tuple[str, str]]:
    """Every image the configs and the Dockerfile name (ARG defaults stand for FROM ${ARG})."""
    found = [
        (name, value)
        for name, doc in config_documents()
        for key, value in walk(doc)
        if key in {"image", "head_image", "worker_image"} and isinstance(value, str)
    ]
    dockerfile = DOCKERFILE.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", dockerfile, re.M))
    for base in re.findall(r"^FROM (\S+)", dockerfile, re.M):
        base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), base)
        if not re.search(r"^FROM \S+ AS " + re.escape(base) + r"$", dockerfile, re.M | re.I):  # a stage, not an image
            found.append(("Dockerfile", base))
    return found


def test_every_image_is_pinned_to_a_version_or_a_digest() -> None:
    found = images()
    assert {name for name, _ in found} >= {"rayjob-corpus.yaml", "refresh-nightly.yaml", "refresh-cronjob.yaml"}
    for name, image in found:
        last = image.rsplit("/", 1)[-1]
        assert "@sha256:" in image or ":" in last, f"{name}: {image} has no tag (Docker reads it as :latest)"
        if "@sha256:" not in image:
            assert last.rsplit(":", 1)[1] not in {"latest", "nightly", "master", "main"}, f"{name}: {image}"
        assert "$" not in image, f"{name}: {image} is not a fixed name"


def test_nothing_is_installed_from_a_branch_or_an_unpinned_name() -> None:
    for name, text in strings():
        for url in re.findall(r"git\+[^\s\"']+", text):
            ref = url.rsplit("@", 1)[1] if "@" in url.split("://", 1)[-1] else ""
            assert re.fullmatch(GIT_REF, ref), f"{name}: {url} follows a branch"
        for command in re.split(r"&&|;|\n", text):
            if not re.search(r"\bpip3? install\b", command):
                continue
            targets = shlex.split(command.split("install", 1)[1])
            for target in targets:
                if target.startswith("-"):
                    assert target in PIN_OPTIONS, f"{name}: unexpected pip option in {command!r}"
                else:
                    pinned = PINNED.fullmatch(target) or target.endswith(".whl") or "git+" in target
                    assert pinned, f"{name}: {target} is not pinned"  # (a git+ URL's ref is checked above)
    setup = "\n".join(yaml.safe_load(RAY_UP.read_text())["setup_commands"])
    assert 'ray[data,default]==2.60.0"' in setup  # the Ray of the image and of rayVersion


def test_every_ray_up_node_has_an_instance_profile_and_the_one_security_group() -> None:
    config = yaml.safe_load(RAY_UP.read_text())
    nodes = {name: group["node_config"] for name, group in config["available_node_types"].items()}
    groups = set()
    for name, node in nodes.items():
        profile = node.get("IamInstanceProfile", {})
        assert re.fullmatch(r"arn:aws:iam::\d{12}:instance-profile/[\w+=,.@-]+", profile.get("Arn", "")), name
        ids = node.get("SecurityGroupIds")
        assert ids and all(re.fullmatch(r"sg-[0-9a-f]{8,17}", sg) for sg in ids), name
        groups.add(tuple(ids))
    assert len(groups) == 1  # one group: Ray's ports open inside it, between the cluster's nodes
    head = nodes[config["head_node_type"]]["IamInstanceProfile"]["Arn"]
    # The head's profile may launch instances; the workers get one that may not.
    assert all(
        node["IamInstanceProfile"]["Arn"] != head for key, node in nodes.items() if key != config["head_node_type"]
    )
    # The group's rules are written down where the user sets it: Ray's ports from the group, SSH from one CIDR.
    text = RAY_UP.read_text()
    assert "all traffic from the group itself" in text and "TCP 22 from your CIDR" in text


def test_the_dashboard_never_binds_every_address() -> None:
    config = yaml.safe_load(RAY_UP.read_text())
    head = " ".join(config["head_start_ray_commands"])
    assert re.findall(r"--dashboard-host[= ](\S+)", head) == ["127.0.0.1"]
    for name, text in strings():
        for host in re.findall(r"--dashboard-host[= ](\S+)", text):
            assert host in {"127.0.0.1", "localhost"}, f"{name}: --dashboard-host={host}"
    for name, doc in config_documents():
        for key, value in walk(doc):
            if key == "rayStartParams":
                assert value.get("dashboard-host", "127.0.0.1") != "0.0.0.0", name


def ray_clusters() -> list[tuple[str, dict]]:
    """Every RayJob spec (a RayJob's, a RayCronJob's jobTemplate, the ConfigMap's template) with its file."""
    return [
        (name, value)
        for name, doc in config_documents()
        for _, value in walk(doc)
        if isinstance(value, dict) and "rayClusterSpec" in value
    ]


def ray_pod_templates(spec: dict) -> list[tuple[str, dict]]:
    """(node type, pod template) of a RayJob spec's head and every worker group."""
    cluster = spec["rayClusterSpec"]
    templates = [("head", cluster["headGroupSpec"]["template"])]
    return templates + [("worker", group["template"]) for group in cluster["workerGroupSpecs"]]


def pod_labels(node_type: str, template: dict) -> dict[str, str]:
    """The labels KubeRay gives a Ray pod made from template (the template's, and those it adds)."""
    labels = dict((template.get("metadata") or {}).get("labels") or {})
    return labels | {
        "ray.io/node-type": node_type,
        "ray.io/is-ray-node": "yes",
        "app.kubernetes.io/created-by": "kuberay-operator",
    }


def selects(selector: dict, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels are understood here: {selector}"
    return set(selector["matchLabels"].items()) <= set(labels.items())


def test_every_ray_pod_runs_as_a_service_account_with_an_iam_role() -> None:
    accounts = {doc["metadata"]["name"]: doc for _, doc in config_documents() if doc.get("kind") == "ServiceAccount"}
    clusters = ray_clusters()
    assert {name for name, _ in clusters} == {
        "rayjob-corpus.yaml",
        "refresh-nightly.yaml",
        "refresh-cronjob.yaml:rayjob.yaml",
    }
    for name, spec in clusters:
        for node_type, template in ray_pod_templates(spec):
            account = template["spec"].get("serviceAccountName")
            assert account in accounts, f"{name}: a {node_type} pod runs as {account!r}, no ServiceAccount here"
            role = (accounts[account]["metadata"].get("annotations") or {}).get(IRSA, "")
            assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@/-]+", role), f"{account}: no IRSA role"
            # Ray pods never call the Kubernetes API: no API token in a pod that runs job code.
            assert accounts[account].get("automountServiceAccountToken") is False


def test_every_head_admits_its_ports_only_from_its_cluster_its_submitter_and_the_operator() -> None:
    policies = [doc for _, doc in config_documents() if doc.get("kind") == "NetworkPolicy"]
    clusters = ray_clusters()
    all_pods = [pod_labels(kind, template) for _, spec in clusters for kind, template in ray_pod_templates(spec)]
    for name, spec in clusters:
        pods = ray_pod_templates(spec)
        head = pod_labels(*pods[0])
        mine = [pod_labels(kind, template) for kind, template in pods]
        others = [
            labels
            for labels in all_pods
            if labels.get("app.kubernetes.io/instance") != head.get("app.kubernetes.io/instance")
        ]
        chosen = [policy for policy in policies if selects(policy["spec"]["podSelector"], head)]
        assert len(chosen) == 1, f"{name}: {len(chosen)} NetworkPolicies select its head"
        # The submitter (K8sJobMode) carries labels of its own, so the policy can name it.
        assert spec["submissionMode"] == "K8sJobMode" and "submitterPodTemplate" in spec, name
        submitter = spec["submitterPodTemplate"]["metadata"]["labels"]
        policy = chosen[0]["spec"]
        assert policy["podSelector"]["matchLabels"] and "Ingress" in policy["policyTypes"]
        assert not any(selects(policy["podSelector"], labels) for labels in others), f"{name}: selects other heads"
        open_ports: dict[int | None, list[str]] = {}
        for rule in policy["ingress"]:
            peers = rule.get("from")
            assert peers, f"{name}: an ingress rule without `from` admits every pod and address"
            for peer in peers:
                assert "ipBlock" not in peer, f"{name}: an ipBlock admits addresses, not pods"
                assert peer.get("podSelector", {}).get("matchLabels"), f"{name}: {peer} admits every pod"
                if "namespaceSelector" in peer:
                    assert peer["namespaceSelector"].get("matchLabels"), f"{name}: {peer} admits every namespace"
                    who = "operator"
                    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}
                elif all(selects(peer["podSelector"], labels) for labels in mine):
                    who = "cluster"
                    assert not any(selects(peer["podSelector"], labels) for labels in others), f"{name}: {peer}"
                    assert not selects(peer["podSelector"], submitter)
                else:
                    assert selects(peer["podSelector"], submitter), f"{name}: {peer} is not its cluster or submitter"
                    who = "submitter"
                ports = [port["port"] for port in rule.get("ports", [])] or [None]  # None: every port
                for port in ports:
                    open_ports.setdefault(port, []).append(who)
        # Ray's own traffic (GCS 6379, 8265, client 10001, metrics 8080, and the ports Ray picks) from the
        # cluster's pods; from the submitter and the operator only the Jobs API; from nothing else anything.
        assert open_ports.pop(None, []) == ["cluster"], f"{name}: every port open to {open_ports.get(None)}"
        assert sorted(open_ports.pop(8265, [])) == ["operator", "submitter"], f"{name}: 8265 not as it should be"
        assert not open_ports, f"{name}: {open_ports}"
