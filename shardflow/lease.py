"""A lease on an output: one writer at a time, even when a scheduler starts a second one too early.

The lease is a small JSON object beside the output (local or S3) naming its holder (host, pid, a random
id) and when it expires; the holder renews it from a background thread while it works. Another writer
refuses to start while a live lease exists, and takes over one that expired (the holder was killed or lost
its node) or whose holder is a process on this host that no longer runs (the usual rerun after a crash).
Object stores offer no portable create-if-absent here, so taking a lease writes it and reads it back after
a pause: two writers that start within that pause are not excluded; a schedule's overlap (hours) is.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson

from shardflow.errors import OutputStateError
from shardflow.storage import StorageConfig, filesystem, put_bytes

LEASE_SECONDS = 600.0  # a holder that stops renewing is presumed dead after this
RENEW_SECONDS = 60.0
SETTLE_SECONDS = 1.0  # between writing the lease and reading it back


@contextmanager
def lease(uri: str, storage: StorageConfig, what: str, seconds: float = LEASE_SECONDS) -> Iterator[dict[str, Any]]:
    """Hold the lease at ``uri`` for the body; ``what`` names the work in the refusal message."""
    mine = {"id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(), "what": what}
    held = read_lease(uri, storage)
    if held is not None and alive(held):
        raise OutputStateError(
            f"{what} is already running (host {held['host']}, pid {held['pid']}, since {held['since']}; "
            f"lease {uri} expires {time.strftime('%H:%M:%S UTC', time.gmtime(held['expires']))}); "
            "one at a time per output"
        )
    mine["since"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    renew(uri, storage, mine, seconds)
    time.sleep(SETTLE_SECONDS)
    if (read_lease(uri, storage) or {}).get("id") != mine["id"]:
        raise OutputStateError(f"{what}: another writer took the lease {uri} at the same moment; try again")
    stop = threading.Event()
    renewer = threading.Thread(target=_keep_renewing, args=(uri, storage, mine, seconds, stop), daemon=True)
    renewer.start()
    try:
        yield mine
    finally:
        stop.set()
        renewer.join()
        fs, path = filesystem(uri, storage)
        if (read_lease(uri, storage) or {}).get("id") == mine["id"]:
            fs.rm(path)


def renew(uri: str, storage: StorageConfig, holder: dict[str, Any], seconds: float) -> None:
    put_bytes(uri, orjson.dumps(holder | {"expires": time.time() + seconds}), storage)


def _keep_renewing(
    uri: str, storage: StorageConfig, holder: dict[str, Any], seconds: float, stop: threading.Event
) -> None:
    while not stop.wait(min(RENEW_SECONDS, seconds / 4)):
        renew(uri, storage, holder, seconds)


def read_lease(uri: str, storage: StorageConfig) -> dict[str, Any] | None:
    fs, path = filesystem(uri, storage)
    try:
        return orjson.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None


def alive(held: dict[str, Any]) -> bool:
    """Whether a lease still binds: not expired, and not held by a process of this host that has ended."""
    if held["expires"] < time.time():
        return False
    if held["host"] == socket.gethostname():
        try:
            os.kill(held["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    return True
