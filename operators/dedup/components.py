"""Connected components of the duplicate graph, distributed: no task ever holds all edges.

The alternating large-star / small-star algorithm (Kiveris et al., "Connected Components in MapReduce and
Beyond", SoCC 2014). The edges live in ``partitions`` pieces, each holding the edges of the nodes that
hash to it (both directions of every edge), in Ray's object store. A round is one task per piece, which
runs a vectorised star operation and sends its output edges straight to the pieces of the next round:

- large-star: every node ``u`` links its larger neighbours to ``m``, the smallest of ``u`` and its
  neighbours;
- small-star: every node ``u`` links itself and its smaller neighbours to the smallest of them.

Both keep each component connected and only ever lower labels; a (large, small) pair that leaves the edge
set unchanged has reached the fixed point, a star per component whose centre is its smallest node. The
result is ``(node, root)`` for every node that has a smaller node in its component.

Rounds are latency-bound (few edges, several rounds), so they are Ray tasks exchanging object refs rather
than Ray Data shuffles, which cost ~1.5 s each in job start and parquet round trips (measured). The rounds'
input (the LSH edges) is parquet; a run interrupted inside them redoes them (seconds).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import ray

from shardflow.arrays import run_starts
from shardflow.codepoints import mix
from shardflow.errors import ShardflowError
from shardflow.operators.dedup.exchange import Pieces, concat, piece, scatter
from shardflow.operators.dedup.shuffle import split
from shardflow.storage import Location

EDGES_SCHEMA = pa.schema([("node", pa.int64()), ("root", pa.int64())])  # node > root
DIRECTED_SCHEMA = pa.schema([("u", pa.int64()), ("v", pa.int64())])
MAX_ROUNDS = 64


def _unique_pairs(left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct ``(left, right)`` pairs, sorted."""
    if not len(left):
        return left, right
    order = np.lexsort((right, left))
    left, right = left[order], right[order]
    keep = np.ones(len(left), dtype=bool)
    keep[1:] = (left[1:] != left[:-1]) | (right[1:] != right[:-1])
    return left[keep], right[keep]


def edge_table(node: np.ndarray, root: np.ndarray) -> pa.Table:
    node, root = _unique_pairs(node, root)
    return pa.table({"node": pa.array(node, pa.int64()), "root": pa.array(root, pa.int64())}, schema=EDGES_SCHEMA)


def _both_directions(edges: pa.Table) -> pa.Table:
    """Undirected ``(node, root)`` edges as directed ``(u, v)`` rows, one each way."""
    edges = edges.cast(EDGES_SCHEMA)
    node, root = edges["node"].to_numpy(), edges["root"].to_numpy()
    return pa.table({"u": np.concatenate((node, root)), "v": np.concatenate((root, node))}, schema=DIRECTED_SCHEMA)


def _neighbourhoods(directed: pa.Table, smaller_only: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows sorted by ``u``, and each row's ``m``: the smallest of ``u`` and its (smaller) neighbours."""
    u, v = directed["u"].to_numpy(), directed["v"].to_numpy()
    if smaller_only:
        u, v = u[v < u], v[v < u]
    order = np.argsort(u, kind="stable")
    u, v = u[order], v[order]
    if not len(u):
        return u, v, u
    starts = np.flatnonzero(run_starts(u))
    smallest = np.minimum.reduceat(v, starts)
    m = np.minimum(u, np.repeat(smallest, np.diff(np.append(starts, len(u)))))
    return u, v, m


def _large_star(directed: pa.Table) -> pa.Table:
    u, v, m = _neighbourhoods(directed, smaller_only=False)
    larger = v > u
    return edge_table(v[larger], m[larger])


def _small_star(directed: pa.Table) -> pa.Table:
    u, v, m = _neighbourhoods(directed, smaller_only=True)
    nodes, roots = np.concatenate((v, u)), np.concatenate((m, m))
    linked = nodes != roots
    return edge_table(nodes[linked], roots[linked])


def _checksum(edges: pa.Table) -> int:
    """An order-independent digest of an edge list: equal sets give equal sums."""
    node, root = edges["node"].to_numpy().astype(np.uint64), edges["root"].to_numpy().astype(np.uint64)
    return int(mix(node * np.uint64(0x9E3779B97F4A7C15) ^ root).sum(dtype=np.uint64))


@ray.remote
def _star(large: bool, partitions: int, *pieces: pa.Table) -> tuple[pa.Table | int, ...]:
    directed = concat(pieces, DIRECTED_SCHEMA)
    edges = _large_star(directed) if large else _small_star(directed)
    return (*split(_both_directions(edges), "u", partitions), (edges.num_rows << 64) | _checksum(edges))


def _round(outputs: Pieces, large: bool, partitions: int) -> Pieces:
    """One star operation: task ``j`` gets piece ``j`` of every output of the previous round."""
    return [
        _star.options(num_returns=partitions + 1).remote(large, partitions, *piece(outputs, j))
        for j in range(partitions)
    ]


def scatter_edges(edge_files: list[Location], partitions: int) -> Pieces:
    """The ``(node, root)`` parquet files as directed edges, in pieces by ``u``."""
    return scatter(edge_files, ["node", "root"], "u", partitions, transform=_both_directions)


def connected_components(edges: Pieces, partitions: int) -> Pieces:
    """Rounds to the fixed point. Returns the star edges in pieces by ``u``, both directions: in piece ``j``,
    rows with ``u > v`` say node ``u`` (hashing to ``j``) has root ``v``; rows with ``u < v`` list the members
    ``v`` of the component whose root ``u`` hashes to ``j``."""
    previous = None
    for _ in range(MAX_ROUNDS):
        edges = _round(_round(edges, True, partitions), False, partitions)
        digest = sum(ray.get([out[partitions] for out in edges]))
        if digest == previous:
            return edges
        previous = digest
    raise ShardflowError(f"connected components did not converge in {MAX_ROUNDS} rounds")
