"""A lease on an output: one writer at a time, even when a scheduler starts a second one too early.

The lease is a small JSON object beside the output (local or S3) naming its holder (host, pid, a random
id) and when it expires; the holder renews it from a background thread while it works, and checks that it
still holds it (``Lease.check``) before each step that publishes. Another writer refuses to start while a
live lease exists, and takes over one that expired (its holder was killed, lost its node, or could not
renew) or whose holder is a process on this host that no longer runs (the usual rerun after a crash).
Taking, renewing and flipping are conditional writes where the store has them (S3 ``If-None-Match: *`` /
``If-Match: <etag>``; a local disk: a hard link / a compare-and-rename under ``flock``), so of two writers
racing exactly one wins; a store without them falls back to write, pause and read back, with a warning.
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
from shardflow.storage import ConditionalWritesUnsupported, Location

LEASE_SECONDS = 600.0  # a holder that stops renewing is presumed dead after this
RENEW_SECONDS = 60.0
SETTLE_SECONDS = 1.0  # without conditional writes: between writing the lease and reading it back
log = logging.getLogger(__name__)


class Lease:
    """A held lease; ``check()`` before publishing anything."""

    def __init__(self, where: Location, what: str, seconds: float) -> None:
        self.where, self.what, self.seconds = where, what, seconds
        self.holder = {"id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(), "what": what}
        self.holder["since"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.expires = 0.0
        self.version: str | None = None  # of the lease as this holder last wrote it; None: no conditional writes
        self.lost: str | None = None

    def record(self) -> dict[str, Any]:
        """The lease as written: the holder and a new expiry."""
        return self.holder | {"expires": time.time() + self.seconds}

    def check(self) -> None:
        """Raise if the lease lapsed or another writer holds it now (read from the store, so that a holder
        that lost it learns before its next write, not at its next renewal)."""
        if self.lost is None and self.expires < time.time():
            self.lost = "it expired before it could be renewed"
        if self.lost is None:
            held = self.where.read_json()
            if (held or {}).get("id") != self.holder["id"]:
                self.lost = _taken_by(held)
        if self.lost is not None:
            raise OutputStateError(f"{self.what}: stopped, the lease {self.where} was lost ({self.lost}); run it again")

    def renew(self) -> None:
        """Extend the lease, unless another writer has taken it meanwhile (where the store has conditional
        writes, the renewal is one write that only succeeds on the lease as this holder left it)."""
        record = self.record()
        if self.version is not None:
            version = self.where.replace_json(record, self.version)
            if version is None:
                self.lost = _taken_by(self.where.read_json())
                return
            self.version = version
        else:
            held = self.where.read_json()
            if held is not None and held.get("id") != self.holder["id"] and self.expires:
                self.lost = _taken_by(held)
                return
            self.where.put_bytes(orjson.dumps(record))
        self.expires = record["expires"]

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
    mine = _take(where, what, seconds)
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


def _take(where: Location, what: str, seconds: float) -> Lease:
    """Take the lease in one conditional write: create it if there is none, or replace the lease of a holder
    that is gone only if it is still that lease. Of two writers racing, exactly one wins."""
    held, version = where.read_versioned()
    if held is not None and _alive(held):
        raise _already_running(what, where, held)
    mine = Lease(where, what, seconds)
    record = mine.record()
    try:
        taken = where.create_json(record) if version is None else where.replace_json(record, version)
    except ConditionalWritesUnsupported:
        log.warning("%s has no conditional writes: the lease is taken by write, pause and read back", where)
        return _take_by_reading_back(mine)
    if taken is None:
        raise OutputStateError(
            f"{what}: another writer took the lease {where} at the same moment ({_taken_by(where.read_json())})"
        )
    mine.version, mine.expires = taken, record["expires"]
    return mine


def _take_by_reading_back(mine: Lease) -> Lease:
    """For stores without conditional writes: write, pause, read back. Two writers that start within the
    pause are not excluded; a schedule's overlap (hours) is."""
    mine.renew()
    time.sleep(SETTLE_SECONDS)
    if (mine.where.read_json() or {}).get("id") != mine.holder["id"]:
        raise OutputStateError(f"{mine.what}: another writer took the lease {mine.where} at the same moment; try again")
    return mine


def _already_running(what: str, where: Location, held: dict[str, Any]) -> OutputStateError:
    expires = time.strftime("%H:%M:%S UTC", time.gmtime(held["expires"]))
    return OutputStateError(
        f"{what} is already running (host {held['host']}, pid {held['pid']}, since {held['since']}; "
        f"lease {where} expires {expires}); one at a time per output"
    )


def _taken_by(held: dict[str, Any] | None) -> str:
    if held is None:
        return "its file was removed"
    return f"taken by host {held.get('host')}, pid {held.get('pid')} ({held.get('what')})"


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
