"""How the dedup passes name texts and documents: 128-bit keys as two shuffle columns, and node ids that
order documents by input (shards by URI, then lines), which is how every dedup stage picks the copy it keeps."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from shardflow.schema import split_source

__all__ = ["LINE_BITS", "key_columns", "node_ids"]

LINE_BITS = 32  # a node id is ``shard ordinal << LINE_BITS | line``


def key_columns(keys: list[int]) -> dict[str, pa.Array]:
    """128-bit keys as the ``key`` (high) and ``key_low`` columns that the shuffles sort and group by."""
    return {
        "key": pa.array([key >> 64 for key in keys], pa.uint64()),
        "key_low": pa.array([key & ((1 << 64) - 1) for key in keys], pa.uint64()),
    }


def node_ids(sources: pa.ChunkedArray, ordinals: dict[str, int]) -> np.ndarray:
    """``ordinal << 32 | line`` for each ``source`` (``URI:line``), ordinals by shard URI."""
    uris, lines = split_source(sources)
    shard = np.fromiter((ordinals[uri] for uri in uris), dtype=np.int64, count=len(uris))
    return (shard << LINE_BITS) | np.asarray(lines, dtype=np.int64)
