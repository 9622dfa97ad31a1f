"""Distributed connected components: the same components as a union-find over all edges, at any partitioning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from shardflow.operators.dedup.components import EDGES_SCHEMA, connected_components, scatter_edges
from shardflow.storage import Location

pytestmark = pytest.mark.usefixtures("ray_local")


def union_find_roots(node: np.ndarray, root: np.ndarray) -> dict[int, int]:
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in zip(node.tolist(), root.tolist(), strict=True):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {x: find(x) for x in list(parent) if find(x) != x}


def components_of(edge_files: list[str], partitions: int) -> dict[int, int]:
    stars = connected_components(scatter_edges([Location(f) for f in edge_files], partitions), partitions)
    found: dict[int, int] = {}
    for piece in range(partitions):
        for out in stars:
            table = ray.get(out[piece])
            u, v = table["u"].to_numpy(), table["v"].to_numpy()
            for a, b in zip(u[u > v].tolist(), v[u > v].tolist(), strict=True):
                assert found.setdefault(a, b) == b, "a node with two roots"
    return found


def write_edges(folder: Path, node: np.ndarray, root: np.ndarray, files: int) -> list[str]:
    folder.mkdir()
    paths = []
    for i, part in enumerate(np.array_split(np.arange(len(node)), files)):
        path = folder / f"part-{i}.parquet"
        pq.write_table(pa.table({"node": node[part], "root": root[part]}, schema=EDGES_SCHEMA), path)
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("partitions", [2, 5])
def test_random_graph_with_long_chains_matches_union_find(tmp_path: Path, partitions: int) -> None:
    rng = np.random.default_rng(partitions)
    a, b = rng.integers(0, 20_000, 15_000), rng.integers(0, 20_000, 15_000)
    chain = rng.permutation(np.arange(30_000, 30_400))  # a path of 400 nodes in random id order
    a, b = np.concatenate((a, chain[1:])), np.concatenate((b, chain[:-1]))
    a, b = a[a != b], b[a != b]
    node, root = np.maximum(a, b), np.minimum(a, b)
    files = write_edges(tmp_path / "edges", node, root, files=3)
    found = components_of(files, partitions)
    assert found == union_find_roots(node, root)
    assert {found.get(int(x), int(x)) for x in chain} == {int(chain.min())}


def test_no_edges_no_components(tmp_path: Path) -> None:
    files = write_edges(tmp_path / "edges", np.zeros(0, np.int64), np.zeros(0, np.int64), files=1)
    assert components_of(files, 2) == {}
