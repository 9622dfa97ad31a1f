"""Progress a person can read: rows (and, for model stages, tokens) per stage as the stream does them.

Ray Data's own counters count blocks per physical operator (``MapBatches(Embedder): 0/1`` for minutes when
the rows travel in one block). Here every operator, the reader and the writer report the rows of each batch
they finish (``report``) to one small actor, the board; the driver polls it (``watching``) and shows, per
stage, rows done of the rows expected (the run's estimate until a pass over every shard has counted them),
the rate, tokens per second and an ETA: a live table where stderr is a terminal, and where it is not (a
job's log, CI) one line for the busy stages every ``interval`` seconds. A report is fire and forget, a few
bytes per batch, and nothing where no board is watched (tests and benchmarks that call operators directly).

The board and the current pass's token travel to the workers in Ray Data's context, set before the pass's
datasets are built (Ray Data hands every task and actor the context of its dataset): no worker looks the
board up, and none reports to a board of another run. Reports from many workers reach the board in no set
order, so a pass's last ones may come after the next pass began: the token says where they count.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import ray
import ray.data
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

__all__ = ["Snapshot", "StageProgress", "begin", "report", "watching"]

BOARD = "shardflow-progress"  # one per Ray job (reset by each run): actor names are scoped to the job
PASS = "shardflow.progress"  # the key of (board, the current pass's token) in Ray Data's context
REFRESH_S = 0.5  # the live display's polling period
READ = "read"  # the stages that are no operator: the reader and the writer
WRITE = "write"


@dataclass
class StageProgress:
    """One stage in the current phase: rows and tokens done, and when its latest batch ended."""

    rows: int = 0
    tokens: int = 0
    last: float = 0.0


@dataclass
class Snapshot:
    """The board at one moment: the phase (a pass of a global stage, or the corpus), when it began, the rows it
    is expected to see, and its stages in the order they first reported."""

    phase: str = ""
    began: float = 0.0
    expected: int | None = None
    exact: bool = False  # ``expected`` was counted by an earlier pass over every shard, not estimated
    whole: bool = False  # this phase reads every shard
    stages: dict[str, StageProgress] = field(default_factory=dict)

    def rates(self, stage: str) -> tuple[float, float]:
        """Rows and tokens per second of ``stage`` from the phase's start to its latest batch: a stage that
        waits for the ones before it shows a lower rate, as it is, while the pipeline fills."""
        progress = self.stages[stage]
        span = progress.last - self.began
        return (progress.rows / span, progress.tokens / span) if span > 1e-3 else (0.0, 0.0)


@ray.remote(num_cpus=0)
class _Board:
    """The board: rows per stage of every phase of the run, as the workers report them; the last phase is the
    one shown. A phase over every shard shows as its expected rows what the latest such phase before it read,
    exactly (its last reports may arrive after this phase began: they count where they belong)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """A new run: nothing done, nothing counted."""
        self.phases: dict[str, Snapshot] = {}  # by token, in the order they began

    def begin(self, token: str, phase: str, expected: int | None, whole: bool) -> None:
        self.phases[token] = Snapshot(phase, time.time(), expected, whole=whole)

    def add(self, token: str | None, stage: str, rows: int, tokens: int) -> None:
        phase = self.phases.get(token)
        if phase is None:  # a report of no pass of this run
            return
        progress = phase.stages.setdefault(stage, StageProgress())
        progress.rows += rows
        progress.tokens += tokens
        progress.last = time.time()
        if stage == READ and phase.expected is not None:  # the estimate was low: what was read is known
            phase.expected = max(phase.expected, progress.rows)

    def snapshot(self) -> Snapshot:
        if not self.phases:
            return Snapshot()
        *before, current = self.phases.values()
        counted = next((p.stages[READ].rows for p in reversed(before) if p.whole and READ in p.stages), None)
        if current.whole and counted is not None:
            return replace(current, expected=counted, exact=True)
        return current


_watched: Any = None  # the board of the ``watching`` this driver is in, if any


def report(stage: str, rows: int, tokens: int = 0) -> None:
    """Tell the run's board (if any) that ``stage`` finished a batch of ``rows`` rows (``tokens`` tokens)."""
    found = ray.data.DataContext.get_current().get_config(PASS)
    if found is not None:
        board, token = found
        board.add.remote(token, stage, rows, tokens)


def begin(phase: str, expected: int | None = None, whole: bool = False) -> None:
    """Start a phase (a pass over the documents; ``whole``: over every shard, ``expected`` rows about) on the
    watched board, if any: its counts start at zero. After a whole pass, the rows it read are the next whole
    pass's exact count. Call it before the pass's datasets are built: they take the pass's token with them."""
    token = uuid.uuid4().hex
    ray.data.DataContext.get_current().set_config(PASS, (_watched, token) if _watched is not None else None)
    if _watched is not None:
        _watched.begin.remote(token, phase, expected, whole)


@contextmanager
def watching(console: Console | None, interval: float = 30.0) -> Iterator[None]:
    """Show a board while the body runs: live on a terminal, a line for the busy stages every ``interval``
    seconds otherwise. ``console=None`` shows nothing and keeps the board of an enclosing ``watching`` (a
    refresh's, around the run of its version), if any."""
    global _watched
    if console is None:
        yield
        return
    board = _Board.options(name=BOARD, get_if_exists=True).remote()
    board.reset.remote()
    outer, _watched = _watched, board
    stop = threading.Event()
    show = _live if console.is_terminal else _lines
    thread = threading.Thread(target=show, args=(board, console, stop, interval), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)
        _watched = outer
        ray.data.DataContext.get_current().set_config(PASS, None)  # no later dataset reports to this board


def _live(board: Any, console: Console, stop: threading.Event, interval: float) -> None:
    with Live(console=console, transient=True, refresh_per_second=4) as live:
        while not stop.wait(REFRESH_S):
            snapshot = _ask(board)
            if snapshot is None:
                return
            live.update(progress_table(snapshot, time.time()))


def _lines(board: Any, console: Console, stop: threading.Event, interval: float) -> None:
    shown: dict[tuple[str, str], int] = {}
    while not stop.wait(interval):
        snapshot, now = _ask(board), time.time()
        if snapshot is None:
            return
        moved = [stage for stage, done in snapshot.stages.items() if shown.get((snapshot.phase, stage)) != done.rows]
        shown.update({(snapshot.phase, stage): snapshot.stages[stage].rows for stage in moved})
        if moved:
            console.print(escape(progress_line(snapshot, moved, now)), highlight=False)


def _ask(board: Any) -> Snapshot | None:
    """The board's snapshot; None once Ray is going away (the display ends, the run does not)."""
    try:
        return ray.get(board.snapshot.remote(), timeout=30)
    except Exception:  # noqa: BLE001 - a display never fails a run
        return None


def progress_line(snapshot: Snapshot, stages: list[str], now: float) -> str:
    """One line for a log: ``1:05 corpus | quality 1,747/1,747 | embed 1,200/1,747 (40 rows/s, 9,100
    tokens/s, ETA 0:14)``."""
    parts = []
    for stage in stages:
        cells = _cells(snapshot, stage)
        done = f"{cells['rows']}/{cells['of']}" if cells["of"] else cells["rows"]
        extra = ", ".join(cells[name] for name in ("rate", "tokens", "eta") if cells[name])
        parts.append(f"{stage} {done}" + (f" ({extra})" if extra else ""))
    return f"{_clock(now - snapshot.began)} {snapshot.phase} | " + " | ".join(parts)


def progress_table(snapshot: Snapshot, now: float) -> Table:
    """The live display: one row per stage of the current phase."""
    table = Table(title=f"{escape(snapshot.phase)}  {_clock(now - snapshot.began)}", title_justify="left")
    for column in ("stage", "rows", "of", "rate", "tokens", "eta"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for stage in snapshot.stages:
        cells = _cells(snapshot, stage)
        table.add_row(escape(stage), *(cells[name] for name in ("rows", "of", "rate", "tokens", "eta")))
    return table


def _cells(snapshot: Snapshot, stage: str) -> dict[str, str]:
    progress, known = snapshot.stages[stage], snapshot.expected
    rate, token_rate = snapshot.rates(stage)
    left = (known - progress.rows) if known is not None else None
    return {
        "rows": f"{progress.rows:,}",
        "of": "" if known is None else f"{'' if snapshot.exact else '~'}{known:,}",
        "rate": f"{rate:,.0f} rows/s" if rate else "",
        "tokens": f"{token_rate:,.0f} tokens/s" if token_rate else "",
        "eta": f"ETA {_clock(left / rate)}" if rate and left and left > 0 else "",
    }


def _clock(seconds: float) -> str:
    minutes, second = divmod(int(seconds), 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours}:{minute:02d}:{second:02d}" if hours else f"{minute}:{second:02d}"
