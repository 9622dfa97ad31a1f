"""Resumable steps: work that writes its result under a folder of its own and then a marker.

A step (a dedup stage's duplicate table, fuzzy dedup's signatures and edges, the dense index, a rerank job's
pairs) writes its result as parquet under its folder and then ``_DONE.json`` naming the inputs it was
computed from. A rerun skips every step whose marker names the same inputs, so a failed run restarts from
the last finished step; a marker for other inputs means the folder belongs to a different run.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pyarrow as pa
import ray

from shardflow.errors import OutputStateError
from shardflow.storage import Location

__all__ = [
    "DONE",
    "finished",
    "mark_finished",
    "read_step",
    "shard_partition",
    "step_facts",
    "step_files",
    "write_step",
]

DONE = "_DONE.json"


def finished(step: Location, inputs: Any) -> bool:
    """Whether the step at ``step`` already ran on ``inputs``; a half-written step is cleared."""
    done = step.join(DONE).read_json()
    if done is not None:
        if done["inputs"] == inputs:
            return True
        raise OutputStateError(
            "the inputs changed since this interrupted run computed its steps; "
            "rerun with --set output.if_exists=overwrite"
        )
    step.remove()
    return False


def mark_finished(step: Location, inputs: Any, **facts: Any) -> None:
    step.join(DONE).put_bytes(orjson.dumps({"inputs": inputs, **facts}))


def step_facts(step: Location) -> dict[str, Any]:
    """What a finished step recorded beside its inputs (counts)."""
    return orjson.loads(step.join(DONE).read_bytes())


def write_step(dataset: ray.data.Dataset, step: Location, **options: Any) -> None:
    filesystem, path = step.arrow_filesystem()
    dataset.write_parquet(path, filesystem=filesystem, **options)


def read_step(steps: Location | list[Location], schema: pa.Schema) -> ray.data.Dataset:
    """A finished step's parquet (or several folders' together) as a dataset of ``schema`` (empty when there
    are no rows). Groups of files are read by at most four tasks per CPU, file by file: an index grown over
    many runs is many small files, which Ray Data's parquet reader lists and opens one task and one
    Python-wrapped file system call at a time (measured: 448 files of 394k rows, 15.8 s; this way under 1 s)."""
    files = step_files(steps)
    if not files:
        return ray.data.from_arrow(schema.empty_table())
    tasks = min(len(files), 4 * int(ray.cluster_resources().get("CPU", 1)))
    groups = [{"files": [file.uri for file in files[i::tasks]]} for i in range(tasks)]
    return ray.data.from_items(groups, override_num_blocks=tasks).map_batches(
        _read_files, batch_size=1, batch_format="pyarrow", fn_kwargs={"home": files[0], "schema": schema}
    )


def _read_files(group: pa.Table, home: Location, schema: pa.Schema) -> Iterator[pa.Table]:
    for uri in group["files"][0].as_py():
        yield home.at(uri).read_table(schema.names).cast(schema)


def step_files(steps: Location | list[Location]) -> list[Location]:
    """The parquet files of a finished step (or of several folders), none when it wrote no rows (an object
    store has no empty folders)."""
    return [file for step in ([steps] if isinstance(steps, Location) else steps) for file in step.files(".parquet")]


def shard_partition(table: Location, shard: str, columns: list[str]) -> pa.Table:
    """The rows of ``table`` (parquet partitioned by ``shard=``) for one shard; empty when it has none."""
    parts = [file.read_table(columns) for file in table.join(f"shard={shard}").files(".parquet")]
    return pa.concat_tables(parts) if parts else pa.table({c: pa.array([], pa.string()) for c in columns})
