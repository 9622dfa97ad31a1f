"""Where a command's own output goes, and what of the rest reaches the user.

Ray's C++ core worker writes some warnings straight to the process's stderr (file descriptor 2), beyond the
reach of Python's logging: one about actor constructor arguments in the object store comes with every actor
pool Ray Data starts, on every run. Unless a command is verbose, its stderr descriptor is a pipe whose lines
are passed on except those in ``HARMLESS_NATIVE``; shardflow's own console writes to the real stderr
beside it, so a live display reaches the terminal unbuffered and unfiltered.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console

__all__ = ["terminal"]

HARMLESS_NATIVE = (
    # Ray Data puts each pool's worker code in the object store and restarts actors: ray-project/ray#53727
    b"has constructor arguments in the object store and max_restarts > 0",
)
LOG_WIDTH = 140  # a log has no width; its readers' windows are wider than 80 columns
DRAIN_S = 2.0  # how long the filter waits for the pipe's last lines when the command ends


@contextmanager
def terminal(verbose: bool) -> Iterator[Console]:
    """The console a command prints to (stderr); while the body runs, other writers' known-harmless native
    lines are dropped from stderr unless ``verbose``."""
    sys.stderr.flush()
    real = os.dup(2)
    width = None if os.isatty(real) else int(os.environ.get("COLUMNS", LOG_WIDTH))
    console = Console(file=os.fdopen(os.dup(real), "w", buffering=1, encoding="utf-8"), soft_wrap=True, width=width)
    if verbose:
        try:
            yield console
        finally:
            console.file.close()
            os.close(real)
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    relay = threading.Thread(target=_relay, args=(read_end, real), daemon=True)
    relay.start()
    try:
        yield console
    finally:
        sys.stderr.flush()
        os.dup2(real, 2)  # the pipe's last writer here is gone: the relay sees its end once children let go
        relay.join(DRAIN_S)
        console.file.close()
        if not relay.is_alive():
            os.close(real)


def _relay(read_end: int, real: int) -> None:
    """Copy lines from the pipe to the real stderr, leaving out the harmless ones."""
    pending = b""
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while chunk := pipe.read(1 << 16):
            *lines, pending = (pending + chunk).split(b"\n")
            kept = b"".join(line + b"\n" for line in lines if not any(text in line for text in HARMLESS_NATIVE))
            _write_all(real, kept)
    _write_all(real, pending)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]
