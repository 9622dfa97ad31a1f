"""Shared fixtures: one real local Ray per test session, and a real S3 endpoint (moto server on loopback)."""

from __future__ import annotations

import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest
import ray

from shardflow.storage import StorageConfig
from support import SHARED_DATA, write_rerank_task


def pytest_configure(config: pytest.Config) -> None:
    """One cache of spaCy's answers for the session's processes (the fast quality engine's), not the home's."""
    os.environ.setdefault("SHARDFLOW_CACHE", tempfile.mkdtemp(prefix="shardflow-cache-"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if SHARED_DATA.is_dir():
        return
    skip = pytest.mark.skip(reason=f"needs the shared test data at {SHARED_DATA}")
    for item in items:
        if "shared_data" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A real local Ray, started once for the session (2 CPUs, as on CI), with the dashboard on loopback as
    ``shardflow run`` starts it: its state API tells a run what Ray retried."""
    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class S3Server:
    """moto's S3 server on loopback, as s3fs's own tests run it: a real HTTP endpoint for every process. Its
    objects live in this process, so the server can go away for a while (``outage``) and come back on the
    same port with everything it held."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self.port = _free_port()
        self.make = lambda: ThreadedMotoServer(ip_address="127.0.0.1", port=self.port)
        self.server = self.make()
        self.server.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def outage(self, seconds: float) -> None:
        """Refuse every connection for ``seconds``, then serve again."""
        self.server.stop()
        time.sleep(seconds)
        self.server = self.make()
        self.server.start()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    server = S3Server()
    yield server
    server.server.stop()


@pytest.fixture(scope="session")
def s3_endpoint(s3_server: S3Server) -> str:
    return s3_server.endpoint


@pytest.fixture
def s3_storage(s3_endpoint: str, request: pytest.FixtureRequest) -> Iterator[tuple[StorageConfig, str]]:
    """Storage settings for the endpoint and a fresh bucket for this test."""
    import boto3

    bucket = "test-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-")
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=bucket)
    yield StorageConfig(endpoint_url=s3_endpoint, key="testing", secret="testing", region="us-east-1"), bucket


@pytest.fixture(scope="session")
def rerank_reference(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The rerank task of 12 UDHR articles (``support.write_rerank_task``) reranked by the default scorer in 8
    chunks, undisturbed: what every disturbed rerank of it must equal byte for byte."""
    from shardflow.config import validate
    from shardflow.pipelines.rerank import RerankConfig, rerank

    folder = tmp_path_factory.mktemp("rerank-reference")
    settings = {**write_rerank_task(folder / "in", articles=12), "chunks": 8, "top_k": 20, "ray": {"progress": False}}
    summary = rerank(validate({**settings, "output": {"path": str(folder / "out")}}, RerankConfig), False)
    return {"settings": settings, "summary": summary, "run": (folder / "out" / "shuffled.run").read_bytes()}
