"""Benchmark: exact dedup on the HPLT v2 excerpts (and copies of them, so there is something to find).

    python bench/exact_dedup.py [--data ../shared/data/hplt-v2-excerpts] [--copies 2]

Times step one (keys, the Ray Data shuffle by key, the duplicate table) and the whole job with the stage,
and reports the driver's peak RSS: the shuffle must not pass through the driver.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import ray
from common import arguments, start_ray

from shardflow.config import validate
from shardflow.operators.base import RunContext
from shardflow.operators.dedup.exact import ExactDedup, ExactDedupConfig
from shardflow.operators.readers import ReaderConfig, read_documents
from shardflow.output.corpus import OutputLayout
from shardflow.pipelines.corpus import CorpusConfig, run_corpus
from shardflow.shards import list_shards
from shardflow.storage import Location


def main() -> None:
    args = arguments(__doc__, copies=(int, 2, "the excerpts are read this many times over"))
    work = Path(tempfile.mkdtemp(prefix="shardflow-bench-"))
    for copy in range(args.copies):
        shutil.copytree(args.data, work / "in" / f"copy{copy}")
    reader = ReaderConfig(paths=[str(work / "in")])
    shards = list_shards([Location(str(work / "in"))])
    start_ray()

    started = time.perf_counter()
    run = RunContext(shards, OutputLayout(Location(str(work / "step")), "bench"), "bench")
    ExactDedup(ExactDedupConfig(partitions=8), run, "stages.0").prepare(read_documents(shards, reader))
    step_one = time.perf_counter() - started
    config = validate(
        {
            "input": {"paths": [str(work / "in")]},
            "output": {"path": str(work / "out")},
            "stages": [{"op": "exact_dedup"}],
            "ray": {"progress": False},
        },
        CorpusConfig,
    )
    result = run_corpus(config)
    read, dropped = result.manifest["counts"]["read"], result.manifest["counts"]["dropped"]
    print(f"{read:,} documents ({args.copies} copies of {args.data.name}), {os.cpu_count()} CPUs")
    print(f"step one (keys + shuffle + table): {read / step_one:8,.0f} docs/s  ({step_one:.2f} s)")
    print(
        f"whole job with exact_dedup        : {read / result.seconds:8,.0f} docs/s  ({result.seconds:.2f} s), "
        f"{dropped:,} duplicates dropped"
    )
    print(f"driver peak RSS                   : {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")
    ray.shutdown()
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
