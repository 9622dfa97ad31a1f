"""Submitting shardflow jobs to a Ray cluster through Ray's Jobs API, with its token authentication.

A submission carries the code and the inputs the config names by relative path: the working directory
(``--working-dir``, default the current one; Ray honours its ``.gitignore`` and skips ``.venv``, ``.git`` and
``out``) is uploaded, and this shardflow package goes along as a ``py_modules`` entry: the installed package
folder as it is, or, from a source checkout (an editable install, whose subpackages are the repository's
top-level folders), a copy assembled by the checkout's own package-dir mapping. The cluster's nodes need
shardflow's dependencies installed (the cluster configs in ``cluster/`` do that); the job's driver runs
``python -m shardflow.cli COMMAND CONFIG --set ...`` on the head and joins the cluster (``ray.address=auto``).

The token (``RAY_AUTH_MODE=token`` clusters) is read the way Ray reads it: ``RAY_AUTH_TOKEN``, else the file
``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``. It travels only in the request's ``Authorization`` header:
never on the command line, in the job's entrypoint or environment, or in a log. Credentials for storage are
refused in ``--set`` for the same reason (the entrypoint is visible to everyone who can list jobs); the
cluster's nodes get them from their own environment.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any

import shardflow
from shardflow.config import load_config
from shardflow.errors import ConfigError, ShardflowError
from shardflow.pipelines.jobs import config_model

__all__ = ["ClusterError", "job_logs", "job_status", "list_jobs", "stop_job", "submit"]

SECRET_KEYS = ("storage.key", "storage.secret", "storage.token")
EXCLUDES = [".venv", ".git", "out", "__pycache__", "*.egg-info", ".pytest_cache", "build", "dist"]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


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


def _source_mapping() -> dict[str, Path]:
    """For a source checkout: its ``[tool.setuptools.package-dir]`` (package -> folder), the packages that live
    outside the ``shardflow`` folder; empty for an installed package, whose folder holds them all."""
    checkout = Path(shardflow.__file__).resolve().parents[1]
    pyproject = checkout / "pyproject.toml"
    if not pyproject.is_file():
        return {}
    mapping = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-dir"]
    return {package: checkout / folder for package, folder in mapping.items()}


def source_excludes(working_dir: Path) -> list[str]:
    """The package's own folders inside the working directory (a checkout of shardflow): they travel as
    ``py_modules`` and must not be uploaded a second time, where ``python -m`` would find them first."""
    root = working_dir.resolve()
    inside = [folder.resolve() for folder in _source_mapping().values() if folder.resolve().is_relative_to(root)]
    return [f"/{folder.relative_to(root).as_posix()}" for folder in inside]


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
        if override.split("=", 1)[0].strip() in SECRET_KEYS:
            raise ConfigError(
                f"--set {override.split('=', 1)[0]}: credentials are not sent with a job (anyone who lists jobs "
                "would see them); give the cluster's nodes AWS_* environment variables or an instance role"
            )
    try:
        relative = config.resolve().relative_to(working_dir.resolve())
    except ValueError:
        raise ConfigError(f"{config} is outside the working directory {working_dir}; pass --working-dir") from None
    sets = " ".join(f"--set {shlex.quote(override)}" for override in [*overrides, "ray.address=auto"])
    return f"python -m shardflow.cli {command} {shlex.quote(str(relative))} {sets}"


def submit(
    address: str, command: str, config: Path, overrides: list[str], working_dir: Path, follow: bool
) -> tuple[str, str]:
    """Submit; returns the job id and, with ``follow``, its final status (else ``PENDING``)."""
    load_config(config, config_model(command), overrides)  # a bad config fails here, not on the cluster
    line = entrypoint(command, config, working_dir, overrides)
    client = _connect(address)
    job_id = f"shardflow-{command}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory(prefix="shardflow-submit-") as scratch:
        runtime_env = {
            "working_dir": str(working_dir),
            "excludes": EXCLUDES + source_excludes(working_dir),
            "py_modules": [str(package_folder(Path(scratch)))],
        }
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
