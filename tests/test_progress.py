"""Progress a person can read: the board counts what the reader, each operator and the writer finished, per
pass; a pass over every shard makes the next one's count exact; a log gets one short line per tick."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
import ray
from rich.console import Console

from shardflow import progress
from shardflow.config import validate
from shardflow.pipelines.corpus import CorpusConfig, run_corpus
from shardflow.progress import Snapshot, StageProgress, progress_line, progress_table
from support import sample_records, write_shard


def _wait_for(board: object, done: callable, timeout: float = 60) -> Snapshot:
    """The board's snapshot once ``done(snapshot)``: reports are fire and forget, so the last ones may still
    be on their way when a run returns."""
    deadline = time.monotonic() + timeout
    while True:
        snapshot = ray.get(board.snapshot.remote())
        if done(snapshot) or time.monotonic() > deadline:
            return snapshot
        time.sleep(0.05)


@pytest.mark.usefixtures("ray_local")
def test_a_pass_over_every_shard_makes_the_next_ones_count_exact_and_late_reports_are_left_out() -> None:
    board = progress._Board.remote()
    board.begin.remote("t1", "exact_dedup pass", 90, True)  # the estimate before anything was read
    board.add.remote("t1", progress.READ, 60, 0)
    board.add.remote("t1", "langid", 100, 0)
    board.add.remote("t1", progress.READ, 40, 0)
    first = ray.get(board.snapshot.remote())
    assert first.expected == 100 and not first.exact  # the estimate was low: what was read is the floor
    board.begin.remote("t2", "corpus", 90, True)
    board.add.remote("t1", progress.READ, 20, 0)  # late: the pass before's, counted there
    board.add.remote("t2", "embed", 30, 4_000)
    board.add.remote("t0", "embed", 30, 4_000)  # of no pass of this run
    corpus = ray.get(board.snapshot.remote())
    assert (corpus.phase, corpus.expected, corpus.exact) == ("corpus", 120, True)
    assert list(corpus.stages) == ["embed"] and (corpus.stages["embed"].rows, corpus.stages["embed"].tokens) == (
        30,
        4_000,
    )
    board.begin.remote("t3", "corpus", 90, False)  # a resumed run reads only some shards: back to the estimate
    assert ray.get(board.snapshot.remote()).expected == 90
    board.reset.remote()
    board.begin.remote("t4", "corpus", 90, True)
    assert not ray.get(board.snapshot.remote()).exact  # a new run counts again


def test_a_log_line_names_each_busy_stage_with_its_rate_tokens_and_eta() -> None:
    snapshot = Snapshot("corpus", began=1000.0, expected=1_000, exact=True)
    snapshot.stages["quality"] = StageProgress(rows=1_000, last=1010.0)
    snapshot.stages["embed"] = StageProgress(rows=200, tokens=50_000, last=1020.0)
    line = progress_line(snapshot, ["quality", "embed"], now=1025.0)
    assert line == (
        "0:25 corpus | quality 1,000/1,000 (100 rows/s) | embed 200/1,000 (10 rows/s, 2,500 tokens/s, ETA 1:20)"
    )
    estimated = Snapshot("exact_dedup pass", began=0.0, expected=5_000)
    estimated.stages[progress.READ] = StageProgress(rows=10, last=0.0)
    assert progress_line(estimated, [progress.READ], now=65.0) == "1:05 exact_dedup pass | read 10/~5,000"
    table = Console(file=io.StringIO(), width=120)
    table.print(progress_table(snapshot, now=1025.0))
    assert "2,500 tokens/s" in table.file.getvalue() and "ETA 1:20" in table.file.getvalue()


@pytest.mark.usefixtures("ray_local")
def test_a_run_reports_every_row_of_every_stage_to_the_board(tmp_path: Path) -> None:
    records = [{"id": f"d{i}", "text": r["text"]} for i, r in enumerate(sample_records()[:40])]
    write_shard(tmp_path / "in" / "a.jsonl.zst", records[:25])
    write_shard(tmp_path / "in" / "b.jsonl.zst", records[25:] + records[:3])  # 3 exact duplicates
    config = validate(
        {
            "input": {"paths": [str(tmp_path / "in")], "duplicate_ids": "allow"},
            "output": {"path": str(tmp_path / "out")},
            "stages": [{"op": "langid"}, {"op": "exact_dedup"}],
            "ray": {"progress_interval": 3600},  # no line while it runs: the board is what is checked
        },
        CorpusConfig,
    )
    log = Console(file=io.StringIO(), width=200)
    # the run's board, held here: the run takes it by name, and it outlives the run while a handle does
    board = progress._Board.options(name=progress.BOARD, get_if_exists=True).remote()
    manifest = run_corpus(config, log).manifest
    assert manifest["counts"]["read"] == 43 and manifest["counts"]["kept"] == 40
    stages = ("read", "langid", "exact_dedup", "write")
    snapshot = _wait_for(board, lambda s: all(s.stages.get(name, StageProgress()).rows == 43 for name in stages))
    assert snapshot.phase == "corpus" and snapshot.expected == 43
    assert {name: snapshot.stages[name].rows for name in stages} == dict.fromkeys(stages, 43)
    assert log.file.getvalue() == ""  # the summary is the caller's to print
