"""The partitioned shuffle every global dedup pass uses, and the cut that feeds the exchanges between tasks.

``by_partition``: rows are hash-partitioned by a key with Ray Data (``groupby`` on a partition number,
``map_groups``), and the function sees a whole partition at once, so it can be vectorised (sort, then find
runs) instead of being called once per key as ``groupby(key).map_groups`` is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import ray
from ray.data.context import ShuffleStrategy

from shardflow.codepoints import mix

__all__ = ["by_partition", "split"]

PART = "_part"
GROUPS_PER_PARTITION = 4  # map_groups calls per shuffle partition: small enough to keep tasks short


def _partition_numbers(keys: np.ndarray, groups: int) -> np.ndarray:
    """A group number per row from an integer key, mixed first so that runs of ids spread evenly."""
    return (mix(keys.astype(np.uint64)) % np.uint64(groups)).astype(np.int32)


def by_partition(
    dataset: ray.data.Dataset,
    key: str,
    fn: Callable[..., pa.Table],
    partitions: int,
    **fn_kwargs: Any,
) -> ray.data.Dataset:
    """``fn(table, **fn_kwargs)`` on groups of rows such that all rows with the same ``key`` meet in one call."""
    groups = partitions * GROUPS_PER_PARTITION

    def tag(batch: pa.Table) -> pa.Table:
        numbers = _partition_numbers(batch[key].to_numpy(), groups)
        return batch.append_column(PART, pa.array(numbers, pa.int32()))

    def apply(group: pa.Table) -> pa.Table:
        return fn(group.drop_columns([PART]), **fn_kwargs)

    tagged = dataset.map_batches(tag, batch_format="pyarrow")
    # Ray's sort-based shuffle runs as plain tasks; the hash shuffle starts aggregator actors first, which
    # costs seconds per shuffle (measured 4.0 s vs 0.3 s for 300k rows) and the dedup steps shuffle often.
    tagged.context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    return tagged.groupby(PART, num_partitions=partitions).map_groups(apply, batch_format="pyarrow")


def split(table: pa.Table, key: str, partitions: int) -> list[pa.Table]:
    """``table``'s rows in ``partitions`` pieces by the hash of ``key`` (for shuffles between Ray tasks)."""
    numbers = _partition_numbers(table[key].to_numpy(), partitions)
    order = np.argsort(numbers, kind="stable")
    bounds = np.searchsorted(numbers[order], np.arange(partitions + 1))
    ordered = table.take(pa.array(order))
    return [ordered.slice(bounds[i], bounds[i + 1] - bounds[i]) for i in range(partitions)]
