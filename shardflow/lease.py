"""A lease on an output: one writer at a time, even when a scheduler starts a second one too early.

The lease is a small JSON object beside the output (local or S3) naming its holder (host, pid, a random
id) and when it expires; the holder renews it from a background thread while it works, and checks that it
still holds it (``Lease.check``) before each step that publishes. Another writer refuses to start while a
live lease exists, and takes over one that expired (its holder was killed, lost its node, or could not
renew) or whose holder is a process on this host that no longer runs (the usual rerun after a crash).
Object stores offer no portable create-if-absent here, so taking a lease writes it and reads it back after
a pause: two writers that start within that pause are not excluded; a schedule's overlap (hours) is.
"""

from __future__ import annotations

import logging
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
from shardflow.storage import Location

LEASE_SECONDS = 600.0  # a holder that stops renewing is presumed dead after this
RENEW_SECONDS = 60.0
SETTLE_SECONDS = 1.0  # between writing the lease and reading it back
log = logging.getLogger(__name__)


class Lease:
    """A held lease; ``check()`` before publishing anything."""

    def __init__(self, where: Location, what: str, seconds: float) -> None:
        self.where, self.what, self.seconds = where, what, seconds
        self.holder = {"id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(), "what": what}
        self.expires = 0.0
        self.lost: str | None = None

    def check(self) -> None:
        """Raise if the lease lapsed or another writer holds it: publishing now could interleave with it."""
        if self.lost is None and self.expires < time.time():
            self.lost = "it expired before it could be renewed"
        if self.lost is not None:
            raise OutputStateError(f"{self.what}: stopped, the lease {self.where} was lost ({self.lost}); run it again")

    def renew(self) -> None:
        """Extend the lease, unless another writer has taken it meanwhile."""
        held = self.where.read_json()
        if held is not None and held.get("id") != self.holder["id"] and self.expires:
            self.lost = f"taken by host {held.get('host')}, pid {held.get('pid')}"
            return
        expires = time.time() + self.seconds
        self.where.put_bytes(orjson.dumps(self.holder | {"expires": expires}))
        self.expires = expires

    def keep_renewing(self, stop: threading.Event) -> None:
        """Renew every ``RENEW_SECONDS`` (a quarter of the lease at most); a failed renewal is retried at the
        next tick, and the lease lapses (``check`` says so) only if renewals fail for its whole length."""
        while not stop.wait(min(RENEW_SECONDS, self.seconds / 4)) and self.lost is None:
            try:
                self.renew()
            except Exception as err:  # a storage hiccup must not end the renewals
                log.warning("could not renew the lease %s (%s); retrying", self.where, err)


@contextmanager
def lease(where: Location, what: str, seconds: float = LEASE_SECONDS) -> Iterator[Lease]:
    """Hold the lease at ``where`` for the body; ``what`` names the work in messages."""
    held = where.read_json()
    if held is not None and _alive(held):
        raise OutputStateError(
            f"{what} is already running (host {held['host']}, pid {held['pid']}, since {held['since']}; "
            f"lease {where} expires {time.strftime('%H:%M:%S UTC', time.gmtime(held['expires']))}); "
            "one at a time per output"
        )
    mine = Lease(where, what, seconds)
    mine.holder["since"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    mine.renew()
    time.sleep(SETTLE_SECONDS)
    if (where.read_json() or {}).get("id") != mine.holder["id"]:
        raise OutputStateError(f"{what}: another writer took the lease {where} at the same moment; try again")
    stop = threading.Event()
    renewer = threading.Thread(target=mine.keep_renewing, args=(stop,), daemon=True)
    renewer.start()
    try:
        yield mine
    finally:
        stop.set()
        renewer.join()
        if (where.read_json() or {}).get("id") == mine.holder["id"]:
            where.remove()


def _alive(held: dict[str, Any]) -> bool:
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
