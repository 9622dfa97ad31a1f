"""The lease that keeps two refreshes of one output apart (a second one refused; a dead holder's taken over)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shardflow import lease as lease_module
from shardflow.errors import OutputStateError
from shardflow.lease import lease
from shardflow.storage import Location


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lease_module, "SETTLE_SECONDS", 0.01)


def held_by(path: Path, host: str, pid: int, expires_in: float) -> None:
    holder = {"id": "other", "host": host, "pid": pid, "since": "then", "expires": time.time() + expires_in}
    path.write_text(json.dumps(holder))


def test_a_live_lease_refuses_a_second_writer_and_the_holder_renews_it(tmp_path: Path) -> None:
    uri = Location(str(tmp_path / "_refresh.lease"))
    held_by(tmp_path / "_refresh.lease", "another-host", 1, expires_in=600)
    with pytest.raises(OutputStateError, match="a refresh of X is already running .*host another-host"):
        with lease(uri, "a refresh of X"):
            pass
    (tmp_path / "_refresh.lease").unlink()
    with lease(uri, "a refresh of X", seconds=0.4) as mine:
        first = uri.read_json()["expires"]
        with pytest.raises(OutputStateError, match="already running"):
            with lease(uri, "a refresh of X"):
                pass
        time.sleep(0.35)
        assert uri.read_json()["expires"] > first  # renewed by the holder's thread
        assert uri.read_json()["id"] == mine.holder["id"]
        mine.check()
    assert not (tmp_path / "_refresh.lease").exists()


def test_an_expired_lease_or_one_of_an_ended_process_on_this_host_is_taken_over(tmp_path: Path) -> None:
    uri = Location(str(tmp_path / "_refresh.lease"))
    held_by(tmp_path / "_refresh.lease", "another-host", 1, expires_in=-1)
    with lease(uri, "a refresh"):
        assert uri.read_json()["pid"] == os.getpid()
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    held_by(tmp_path / "_refresh.lease", socket.gethostname(), int(ended.stdout), expires_in=600)
    with lease(uri, "a refresh"):
        assert uri.read_json()["pid"] == os.getpid()


def test_a_failed_renewal_is_retried_and_a_lease_taken_by_another_writer_stops_the_holder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = Location(str(tmp_path / "_refresh.lease"))
    real, writes = Location.put_bytes, []

    def flaky(where: Location, data: bytes) -> None:
        writes.append(where)
        if len(writes) == 2:  # the first renewal (the first write takes the lease)
            raise OSError("503 Slow Down")
        real(where, data)

    monkeypatch.setattr(Location, "put_bytes", flaky)
    with lease(uri, "a refresh", seconds=0.4) as mine:
        time.sleep(0.35)
        assert len(writes) >= 3
        mine.check()  # renewed after the failure
        held_by(tmp_path / "_refresh.lease", "another-host", 1, expires_in=600)  # taken over meanwhile
        time.sleep(0.25)
        with pytest.raises(OutputStateError, match="the lease .* was lost \\(taken by host another-host"):
            mine.check()
    assert json.loads((tmp_path / "_refresh.lease").read_text())["host"] == "another-host"  # not removed
