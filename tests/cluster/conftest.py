"""One real multi-node Ray for the tests of this folder (see ``support.LocalCluster``): a head and two workers
started with `ray start` on this machine, token authentication on, the dashboard on 127.0.0.1 only."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import LocalCluster, stop_processes_under


@pytest.fixture(scope="package")
def cluster() -> Iterator[LocalCluster]:
    temp = Path(tempfile.mkdtemp(prefix="sfc", dir="/tmp"))  # short: Ray's socket paths have a length limit
    nodes = LocalCluster(temp)
    try:
        for number in range(len(nodes.nodes)):
            nodes.start(number)
        yield nodes
    finally:
        stop_processes_under(temp)
        shutil.rmtree(temp, ignore_errors=True)
