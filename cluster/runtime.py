"""Connect to Ray: an embedded local instance by default, a running cluster when an address is given."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import ray


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Run the body with Ray initialised; shut down afterwards only what this call started.

    With no address, Ray starts a private local instance (``num_cpus`` caps it; no dashboard). An
    address (``ray://...``, ``auto``, ``HOST:PORT``) joins an existing cluster. A session that is already
    initialised (tests, notebooks) is used as it is.
    """
    if ray.is_initialized():
        yield
        return
    options: dict = {"address": address, "logging_level": logging.WARNING, "log_to_driver": True}
    if address is None:
        options.update(num_cpus=num_cpus, include_dashboard=False)
    ray.init(**options)
    try:
        yield
    finally:
        ray.shutdown()
