"""Connect to Ray: an embedded local instance by default, a running cluster when an address is given; and
ask Ray afterwards what it had to retry."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import ray
from pydantic import Field

from shardflow.config import StrictModel

__all__ = ["RayConfig", "Retries", "job_retries", "quiet_ray", "ray_session"]

STATE_LIMIT = 10_000  # rows per state-API query: the most the API server answers (RAY_MAX_LIMIT_FROM_API_SERVER)
NOT_RETRIES = {"TASK_CANCELLED"}  # Ray Data cancels work it no longer needs at the end of a run


class RayConfig(StrictModel):
    """Where a job runs (the ``ray`` section). Not part of a run's fingerprint: a run may move between machines."""

    address: str | None = Field(None, description="Ray cluster address; None starts an embedded local Ray.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the embedded local Ray (default: all).")
    progress: bool = Field(True, description="Show rows per stage as the run goes (shardflow.progress).")
    progress_interval: float = Field(
        30.0, gt=0, description="Seconds between progress lines where stderr is no terminal (a job's log, CI)."
    )
    verbose: bool = Field(False, description="Show Ray's own INFO logs and Ray Data's block counters as well.")


HARMLESS = (  # warnings that say nothing a shardflow user can act on, every run
    "Token authentication is enabled for this Ray cluster",  # what shardflow's cluster configs ask for
    "does not have any available CPUs",  # the pools hold them by design; plan_pools leaves one to the tasks
    "Progress bars disabled",  # shardflow shows its own
    # Ray Data's memory advice, every 30 s: a model actor's memory is the model's, known before the run
    "of memory per worker on",
    "To disable issue detection",
)


class _Harmless(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in HARMLESS)


def quiet_ray(verbose: bool) -> None:
    """Keep Ray's chatter off the console unless ``verbose``: Ray Data's INFO lines (execution plans, block
    counters twice a second where there is no terminal) go to its log file only, and the ``HARMLESS``
    warnings nowhere. Warnings and errors that are not known to be harmless stay."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = verbose
    for handler in _console_handlers("ray.data"):  # Ray Data's file handler keeps everything
        handler.setLevel(logging.INFO if verbose else logging.WARNING)  # INFO: Ray Data's own default
    for handler in _console_handlers("ray") + _console_handlers("ray.data"):
        for known in [f for f in handler.filters if isinstance(f, _Harmless)]:
            handler.removeFilter(known)
        if not verbose:
            handler.addFilter(_Harmless())


def _console_handlers(logger: str) -> list[logging.Handler]:
    return [handler for handler in logging.getLogger(logger).handlers if isinstance(handler, logging.StreamHandler)]


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, verbose: bool = False) -> Iterator[None]:
    """Run the body with Ray initialised; shut down afterwards only what this call started.

    With no address, Ray starts a private local instance (``num_cpus`` caps it; its dashboard listens on
    127.0.0.1 only: it serves the state API that ``job_retries`` asks). An address (``ray://...``,
    ``auto``, ``HOST:PORT``) joins an existing cluster. A session that is already initialised (tests,
    notebooks) is used as it is. Ray's logs are quieted unless ``verbose`` (``quiet_ray``).
    """
    quiet_ray(verbose)
    if ray.is_initialized():
        yield
        return
    options: dict = {"address": address, "logging_level": logging.WARNING, "log_to_driver": True}
    if address is None:
        options.update(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1")
    ray.init(**options)
    try:
        yield
    finally:
        ray.shutdown()


@dataclass
class Retries:
    """What Ray redid for this driver's job: failed task attempts by (task, error type) - in a run that went
    on to finish, each one was retried - task attempts after the first by task (retries, and reruns that
    rebuild objects a lost node held), and restarts by actor class; ``unavailable`` says why Ray could not
    be asked. ``job_retries()`` counts from the job's start; ``later.since(earlier)`` is what happened in
    between (a notebook or test session runs many pipelines in one job)."""

    failed: Counter[tuple[str, str]] = field(default_factory=Counter)
    reruns: Counter[str] = field(default_factory=Counter)
    restarts: Counter[str] = field(default_factory=Counter)
    unavailable: str | None = None

    def since(self, earlier: Retries) -> Retries:
        return Retries(
            self.failed - earlier.failed,
            self.reruns - earlier.reruns,
            self.restarts - earlier.restarts,
            self.unavailable,
        )

    def as_dict(self) -> dict[str, Any]:
        """For a manifest: a worker killed in a read task shows as ``{"failed_attempts": {"ReadShards":
        {"WORKER_DIED": 1}}, "reruns": {"ReadShards": 1}}``; an actor that died and came back as
        ``{"actor_restarts": {"MapWorker(MapBatches(Embedder))": 1}}``."""
        if self.unavailable:
            return {"unavailable": self.unavailable}
        failed: dict[str, dict[str, int]] = {}
        for (name, error), count in sorted(self.failed.items()):
            failed.setdefault(name, {})[error] = count
        return {
            "failed_attempts": failed,
            "reruns": dict(sorted(self.reruns.items())),
            "actor_restarts": dict(sorted(self.restarts.items())),
        }


def job_retries() -> Retries:
    """Ask Ray's state API (served by the dashboard: every ``ray start`` head and the embedded Ray have one)
    what it redid for this job. Without an answer the result says so: the question is a diagnostic, never
    a reason to fail a run."""
    from ray.util.state import list_actors, list_tasks

    context = ray.get_runtime_context()
    job = [("job_id", "=", context.get_job_id())]
    query = {"address": context.gcs_address, "detail": True, "limit": STATE_LIMIT, "raise_on_missing_output": False}
    try:
        failed = list_tasks(filters=[*job, ("state", "=", "FAILED")], **query)
        again = list_tasks(filters=[*job, ("attempt_number", "!=", 0)], **query)
        actors = list_actors(filters=job, **query)
    except Exception as err:  # noqa: BLE001 - a diagnostic that cannot be asked is reported, not raised
        return Retries(unavailable=f"Ray's state API did not answer: {type(err).__name__}: {str(err)[:300]}")
    return Retries(
        Counter((task.name, task.error_type or "UNKNOWN") for task in failed if task.error_type not in NOT_RETRIES),
        Counter(task.name for task in again),
        Counter({actor.class_name: actor.num_restarts for actor in actors if actor.num_restarts}),
    )
