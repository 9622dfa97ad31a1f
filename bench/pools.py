"""Work for every actor: a one-file corpus through a model pool of 4 (logical) GPUs, with and without the
blocks cut ahead of the pool (issue 21).

The model is simulated: each actor sleeps ``--ms-per-row`` per row it is handed, as a device would spend its
time, so the numbers show how the rows are spread over the pool and what that does to the wall time, not
how 4 actors share this machine's CPUs. "before" runs the same code with no estimate of the run's records,
which is how the pool was fed before: one block per read task.

    python bench/pools.py --data ../shared/data/hplt-v2-excerpts --docs 2640
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import orjson
import pyarrow as pa
import ray
import zstandard
from common import arguments

from shardflow.operators.base import Annotations, Operator
from shardflow.operators.registry import STAGES
from shardflow.pipelines import corpus


class SimulatedDevice(Operator):
    """An ``embed`` stage whose model is a sleep per row; each call's rows are logged under the actor's pid."""

    name = "embed"
    encodes = True
    seconds_per_row = 0.002
    log = ""  # class attributes travel with the class into the actors

    def __init__(self, config: object, storage: object) -> None:
        self.added_fields = [pa.field("embedding", pa.list_(pa.float16(), 8))]

    def annotate(self, docs: pa.Table) -> Annotations:
        time.sleep(docs.num_rows * self.seconds_per_row)
        with open(self.log, "a") as out:
            out.write(json.dumps([os.getpid(), docs.num_rows]) + "\n")
        zeros = pa.array([0.0] * (8 * docs.num_rows), pa.float16())
        return Annotations({"embedding": pa.FixedSizeListArray.from_arrays(zeros, 8)})


def one_file(data: Path, docs: int, where: Path) -> Path:
    """The first ``docs`` documents under ``data`` (HPLT .jsonl.zst, folders included) as one JSONL file."""
    written, path = 0, where / "corpus.jsonl"
    with open(path, "wb") as out:
        for shard in sorted(data.rglob("*.jsonl.zst")):
            with zstandard.open(shard, "rt", encoding="utf-8") as lines:
                for line in lines:
                    record = orjson.loads(line)
                    out.write(orjson.dumps({"id": f"d{written}", "text": record["text"]}) + b"\n")
                    written += 1
                    if written == docs:
                        return path
    return path


def run(path: Path, out: Path, log: Path, split: bool) -> dict[str, object]:
    SimulatedDevice.log = str(log)
    if not split:  # no estimate: no cut ahead of the pool, as before issue 21
        corpus.estimate_records = lambda shards: 0
    config = corpus.CorpusConfig.model_validate(
        {
            "input": {"paths": [str(path)], "duplicate_ids": "allow"},
            "output": {"path": str(out)},
            "stages": [{"op": "embed", "resources": {"num_gpus": 1}}],
            "ray": {"progress": False},
        }
    )
    started = time.perf_counter()
    manifest = corpus.run_corpus(config).manifest
    seconds = time.perf_counter() - started
    rows: dict[int, int] = {}
    calls = 0
    for pid, n in map(json.loads, log.read_text().splitlines()):
        rows[pid] = rows.get(pid, 0) + n
        calls += 1
    return {"seconds": round(seconds, 1), "docs": manifest["counts"]["read"], "calls": calls, "rows": rows}


def main() -> None:
    args = arguments(
        __doc__,
        docs=(int, 2640, "documents in the one file"),
        ms_per_row=(float, 2.0, "simulated device time per row"),
        split=(str, "both", "before, after or both"),
    )
    SimulatedDevice.seconds_per_row = args.ms_per_row / 1000
    STAGES.implementations["embed"] = SimulatedDevice
    ray.init(num_cpus=8, num_gpus=4, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().wait_for_min_actors_s = 300  # every actor up before the first block
    with tempfile.TemporaryDirectory() as folder:
        where = Path(folder)
        path = one_file(args.data, args.docs, where)
        for name in ("after", "before") if args.split == "both" else (args.split,):
            result = run(path, where / name, where / f"{name}.log", split=name == "after")
            shares = sorted(result["rows"].values(), reverse=True)
            print(f"{name}: {result['docs']:,} docs in {result['seconds']} s; {result['calls']} calls; ", end="")
            print(f"rows per actor {shares}")


if __name__ == "__main__":
    main()
