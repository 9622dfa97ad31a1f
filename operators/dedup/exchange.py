"""Shuffles between Ray tasks through the object store, for the latency-bound steps of fuzzy dedup.

A table that is ``scatter``\\ ed is cut into ``partitions`` pieces by the hash of one integer column; task
``j`` of the next step receives piece ``j`` of every source (``pieces``), so rows with equal keys meet in
one task and no task holds more than its share. Ray Data's shuffles do the same for the big step (LSH);
these exchanges carry the small ones (component rounds, resolving kept ids) where a Ray Data job's start
and parquet round trip would cost more than the work.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import ray

from shardflow.operators.dedup.shuffle import split
from shardflow.storage import Location

Pieces = list[list[ray.ObjectRef]]  # [source][partition]


@ray.remote
def _scatter_files(
    files: list[Location],
    columns: list[str],
    key: str,
    partitions: int,
    transform: Callable[[pa.Table], pa.Table] | None,
) -> tuple[pa.Table, ...]:
    tables = [file.read_table(columns) for file in files]
    table = pa.concat_tables(tables) if tables else None
    if table is not None and transform is not None:
        table = transform(table)
    if table is None:
        return tuple(pa.table({key: pa.array([], pa.int64())}) for _ in range(partitions))
    return tuple(split(table, key, partitions))


def scatter(
    files: list[Location],
    columns: list[str],
    key: str,
    partitions: int,
    transform: Callable[[pa.Table], pa.Table] | None = None,
) -> Pieces:
    """Read ``files`` (parquet) in ``partitions`` tasks and cut each task's rows by ``key``."""
    chunks = [files[i::partitions] for i in range(partitions)]
    return [
        _scatter_files.options(num_returns=partitions).remote(chunk, columns, key, partitions, transform)
        for chunk in chunks
    ]


def piece(outputs: Pieces, j: int) -> list[ray.ObjectRef]:
    """Piece ``j`` of every source: the input of task ``j``."""
    return [out[j] for out in outputs]


def concat(tables: tuple[pa.Table, ...], schema: pa.Schema) -> pa.Table:
    """The non-empty pieces a task received, as one table of ``schema``."""
    present = [t.select(schema.names).cast(schema) for t in tables if t.num_rows]
    return pa.concat_tables(present) if present else schema.empty_table()


def lookup(keys: np.ndarray, table: pa.Table, key: str) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``keys``, the row of ``table`` whose ``key`` equals it: (row indices, found mask)."""
    column = table[key].to_numpy()
    order = np.argsort(column, kind="stable")
    position = np.searchsorted(column[order], keys)
    position = np.minimum(position, max(len(column) - 1, 0))
    found = column[order][position] == keys if len(column) else np.zeros(len(keys), dtype=bool)
    return order[position] if len(column) else np.zeros(len(keys), dtype=np.int64), found
