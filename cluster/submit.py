"""Submitting shardflow jobs to a Ray cluster through Ray's Jobs API, with its token authentication.

A submission carries the code and the inputs the config names by relative path: the config and every
existing path it names relative to the working directory (``--working-dir``, default the current one) are
uploaded in their places (never the whole folder, a home folder, or files like ``.aws/`` or SSH keys), and
this shardflow package goes along as a ``py_modules`` entry: the installed package
folder as it is, or, from a source checkout (an editable install, whose subpackages are the repository's
top-level folders), a copy assembled by the checkout's own package-dir mapping. The cluster's nodes need
shardflow's dependencies installed (the cluster configs in ``cluster/`` do that); the job's driver runs
``python -m shardflow.cli COMMAND CONFIG --set ...`` on the head and joins the cluster (``ray.address=auto``).

The token (``RAY_AUTH_MODE=token`` clusters) is read the way Ray reads it: ``RAY_AUTH_TOKEN``, else the file
``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``. It travels only in the request's ``Authorization`` header:
never on the command line, in the job's entrypoint or environment, or in a log. Credentials anywhere in the
submitted config, file or ``--set``, are refused for the same reason (the entrypoint and the uploaded files
are visible to everyone who can list jobs); the cluster's nodes get them from their own environment. A token
sent over plain ``http://`` to another machine is warned about.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import shardflow
from shardflow.config import credentials_in, read_config, read_overrides, validate
from shardflow.errors import ConfigError, ShardflowError
from shardflow.pipelines.jobs import config_model

__all__ = ["ClusterError", "job_logs", "job_status", "list_jobs", "stop_job", "submit"]

# Names that never travel with a job: they hold credentials (cloud, Ray, SSH, environment files).
SENSITIVE = {".aws", ".ray", ".ssh", ".env", ".netrc", ".git-credentials", ".pgpass", "id_rsa", "id_ed25519"}
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
log = logging.getLogger(__name__)


class ClusterError(ShardflowError):
    """The cluster cannot be reached, refuses the request, or the job failed."""


def auth_token() -> str | None:
    """The cluster token, looked up as Ray does; None when there is none."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    return path.read_text().strip() if path.is_file() else None


def _connect(address: str) -> Any:
    """A ``JobSubmissionClient`` for the dashboard at ``address``, with the token header when there is one."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    token = auth_token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    if token and _in_clear(address):
        log.warning("sending the cluster token to %s over plain http: anyone on the way can read it", address)
    try:
        return JobSubmissionClient(address, headers=headers)
    except AuthenticationError as err:
        reason = str(err).split("\n", 1)[0]
        raise ClusterError(
            f"{address} refused the request ({reason}); set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH to the "
            "cluster's token, or put it in ~/.ray/auth_token"
        ) from None
    except ConnectionError as err:
        raise ClusterError(f"cannot reach the Ray dashboard at {address}: {err}") from None


def _in_clear(address: str) -> bool:
    """Whether ``address`` is plain http to another machine (a token sent there can be read on the way)."""
    parsed = urlparse(address if "://" in address else f"http://{address}")
    return parsed.scheme == "http" and parsed.hostname not in ("127.0.0.1", "localhost", "::1")


def _source_mapping() -> dict[str, Path]:
    """For a source checkout: its ``[tool.setuptools.package-dir]`` (package -> folder), the packages that live
    outside the ``shardflow`` folder; empty for an installed package, whose folder holds them all."""
    checkout = Path(shardflow.__file__).resolve().parents[1]
    pyproject = checkout / "pyproject.toml"
    if not pyproject.is_file():
        return {}
    mapping = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-dir"]
    return {package: checkout / folder for package, folder in mapping.items()}


def package_folder(scratch: Path) -> Path:
    """The shardflow package as Ray should upload it: the installed folder itself, or for a source checkout a
    copy under ``scratch`` with each mapped folder in its package's place."""
    mapping = _source_mapping()
    if not mapping:
        return Path(shardflow.__file__).parent
    target = scratch / "shardflow"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package, folder in sorted(mapping.items()):  # parents before their subpackages
        shutil.copytree(folder, target.joinpath(*package.split(".")[1:]), ignore=ignore, dirs_exist_ok=True)
    return target


def entrypoint(command: str, config: Path, working_dir: Path, overrides: list[str]) -> str:
    """The job's command line: relative to the uploaded working directory, no secrets."""
    for override in overrides:
        refuse_credentials(read_overrides([override]), f"--set {override.split('=', 1)[0]}")
    try:
        relative = config.resolve().relative_to(working_dir.resolve())
    except ValueError:
        raise ConfigError(f"{config} is outside the working directory {working_dir}; pass --working-dir") from None
    sets = " ".join(f"--set {shlex.quote(override)}" for override in [*overrides, "ray.address=auto"])
    return f"python -m shardflow.cli {command} {shlex.quote(str(relative))} {sets}"


def refuse_credentials(raw: dict[str, Any], where: str) -> None:
    """A job's config travels in its entrypoint and its files: both are readable by everyone who can list jobs."""
    found = credentials_in(raw)
    if found:
        raise ConfigError(
            f"{where}: {found[0]} holds a credential, and credentials are not sent with a job (anyone who lists "
            "jobs could read them); give the cluster's nodes AWS_* environment variables or an instance role"
        )


def job_files(config: Path, raw: dict[str, Any], working_dir: Path) -> list[Path]:
    """What the job needs of the working directory: the config and every existing relative path it names (a
    glob by its folder), never the folder itself, a home folder, or anything that holds credentials."""
    root = working_dir.resolve()
    if root == Path.home().resolve():
        raise ConfigError(f"--working-dir {working_dir} is a home folder; run from (or name) the project's folder")
    named = {config.resolve()}
    for text in _strings({key: value for key, value in raw.items() if key != "output"}):  # outputs are not sent
        if "://" in text or Path(text).is_absolute():
            continue  # the cluster reaches it itself
        head = re.split(r"[*?\[]", text, maxsplit=1)[0]
        candidate = (root / head) if head == text else (root / head).parent
        if candidate.exists() and candidate.resolve() != root and candidate.resolve().is_relative_to(root):
            named.add(candidate.resolve())
    for path in named:
        inside = [path, *(path.rglob("*") if path.is_dir() else [])]
        sensitive = next((found for found in inside if found.name in SENSITIVE), None)
        if sensitive is not None:
            raise ConfigError(f"{sensitive} would be uploaded with the job and may hold credentials; move it out")
    return sorted(path.relative_to(root) for path in named)


def _strings(raw: Any) -> list[str]:
    if isinstance(raw, dict):
        return [text for value in raw.values() for text in _strings(value)]
    if isinstance(raw, list):
        return [text for value in raw for text in _strings(value)]
    return [raw] if isinstance(raw, str) and raw else []


def submit(
    address: str, command: str, config: Path, overrides: list[str], working_dir: Path, follow: bool
) -> tuple[str, str]:
    """Submit; returns the job id and, with ``follow``, its final status (else ``PENDING``). Only the config and
    the files it names by relative path are uploaded, copied under a scratch folder in their places."""
    raw = read_config(config, overrides)
    validate(raw, config_model(command))  # a bad config fails here, not on the cluster
    refuse_credentials(raw, str(config))
    line = entrypoint(command, config, working_dir, overrides)
    files = job_files(config, raw, working_dir)
    client = _connect(address)
    job_id = f"shardflow-{command}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory(prefix="shardflow-submit-") as scratch:
        upload = Path(scratch) / "job"
        for relative in files:
            source, target = working_dir.resolve() / relative, upload / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(source, target)
        runtime_env = {"working_dir": str(upload), "py_modules": [str(package_folder(Path(scratch)))]}
        client.submit_job(entrypoint=line, submission_id=job_id, runtime_env=runtime_env)
    return job_id, _follow_job(client, job_id) if follow else "PENDING"


def _follow_job(client: Any, job_id: str, poll_seconds: float = 1.0) -> str:
    """Print the job's log as it grows, until it ends; returns its final status."""
    shown = 0
    while True:
        status = str(client.get_job_status(job_id).value)
        logs = client.get_job_logs(job_id)
        sys.stdout.write(logs[shown:])
        sys.stdout.flush()
        shown = len(logs)
        if status in TERMINAL:
            return status
        time.sleep(poll_seconds)


def list_jobs(address: str) -> list[dict[str, Any]]:
    return [
        {
            "id": job.submission_id,
            "status": str(job.status.value),
            "entrypoint": job.entrypoint,
            "start_time": job.start_time,
            "message": job.message,
        }
        for job in _connect(address).list_jobs()
        if job.submission_id
    ]


def job_status(address: str, job_id: str) -> dict[str, Any]:
    info = _connect(address).get_job_info(job_id)
    return {"id": job_id, "status": str(info.status.value), "message": info.message, "entrypoint": info.entrypoint}


def job_logs(address: str, job_id: str) -> str:
    return _connect(address).get_job_logs(job_id)


def stop_job(address: str, job_id: str) -> bool:
    return bool(_connect(address).stop_job(job_id))
