"""The lease that keeps two refreshes of one output apart (a second one refused; a dead holder's taken over)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from shardflow import lease as lease_module
from shardflow.errors import OutputStateError
from shardflow.lease import lease
from shardflow.storage import Location, StorageConfig


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
    real, renewals = Location.replace_json, []

    def flaky(where: Location, value: Any, version: str) -> str | None:
        renewals.append(where)
        if len(renewals) == 1:
            raise OSError("503 Slow Down")
        return real(where, value, version)

    monkeypatch.setattr(Location, "replace_json", flaky)
    with lease(uri, "a refresh", seconds=0.4) as mine:
        time.sleep(0.35)
        assert len(renewals) >= 2
        mine.check()  # renewed after the failure
        held_by(tmp_path / "_refresh.lease", "another-host", 1, expires_in=600)  # taken over meanwhile
        with pytest.raises(OutputStateError, match="the lease .* was lost \\(taken by host another-host"):
            mine.check()
    assert json.loads((tmp_path / "_refresh.lease").read_text())["host"] == "another-host"  # not removed


def race(where: Location, writers: int) -> list[str]:
    """``writers`` threads take the lease at once; the winners hold it until every writer has tried."""
    start, tried, outcomes = threading.Barrier(writers), threading.Event(), []

    def writer() -> None:
        start.wait()
        try:
            with lease(where, "a run of X"):
                outcomes.append("won")
                tried.wait(60)
        except OutputStateError as err:
            outcomes.append(str(err))

    threads = [threading.Thread(target=writer) for _ in range(writers)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(outcomes) < writers and time.monotonic() < deadline:
        time.sleep(0.01)
    tried.set()
    for thread in threads:
        thread.join()
    return outcomes


@pytest.mark.parametrize("store", ["local", "s3"])
def test_of_writers_racing_for_a_lease_exactly_one_wins(
    store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if store == "s3":
        storage, bucket = request.getfixturevalue("s3_storage")
        where = Location(f"s3://{bucket}/out/_run.lease", storage)
    else:
        where = Location(str(tmp_path / "_run.lease"))
    for _ in range(3):  # a fresh lease, then one whose holder has gone, then again
        outcomes = race(where, writers=6)
        assert outcomes.count("won") == 1, outcomes
        assert all("already running" in o or "at the same moment" in o for o in outcomes if o != "won")
        assert where.read_json() is None  # released by the winner
        where.put_bytes(json.dumps({"id": "gone", "host": "h", "pid": 1, "since": "then", "expires": 0}).encode())


def test_a_holder_learns_at_its_next_check_that_the_lease_was_taken(tmp_path: Path) -> None:
    where = Location(str(tmp_path / "_run.lease"))
    with lease(where, "a run") as mine:
        mine.check()
        held_by(tmp_path / "_run.lease", "another-host", 1, expires_in=600)
        with pytest.raises(OutputStateError, match="was lost \\(taken by host another-host"):
            mine.check()  # at once, not at the next renewal


def test_a_store_without_conditional_writes_falls_back_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    where = Location("memory://leases/_run.lease", StorageConfig())
    with lease(where, "a run") as mine:
        mine.check()
        assert where.read_json()["id"] == mine.holder["id"]
    assert "has no conditional writes" in caplog.text and where.read_json() is None
