"""Benchmark: the dense index build vs raw FAISS with the same factory string; recall@10 vs memory.

    python bench/index.py [--vectors 200000] [--dim 384] [--files 16] [--train 50000]
        [--factories "IVF1024,Flat;IVF1024,PQ48;OPQ32,IVF1024,PQ32"]

Vectors: synthetic, shaped like sentence embeddings (a mixture of 2,000 clusters in a space whose variance
decays over the dimensions, L2-normalised), written as a corpus would hold them: float16 ``embedding``
columns in ``--files`` parquet files. Queries: 1,000 more from the same mixture. For each factory string:
- shardflow: ``build_index`` (row counts on the driver; sample + train in one Ray task; adds in parallel Ray
  tasks; merge; write index + id map), Ray started before the clock;
- raw FAISS, one process: read the same files, train on the same number of vectors, ``add``, write the index;
- recall@10 of each index (nprobe 32) against exact search over the same float16 vectors, and its size.
Goal (issue 5): shardflow's build time <= 1.2x raw FAISS's.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from shardflow.operators.index import DenseIndex, IndexConfig, build_index, empty_index, vectors_of
from shardflow.storage import Location

NPROBE = 32


def embeddings_like(count: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(1.0 + np.arange(dim) / 8.0)  # variance decays over the dimensions
    centers = np.random.default_rng(0).standard_normal((2000, dim)).astype(np.float32) * scale
    vectors = (
        centers[rng.integers(0, len(centers), count)]
        + 0.6 * rng.standard_normal((count, dim)).astype(np.float32) * scale
    )
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float16)


def write_corpus(folder: Path, vectors: np.ndarray, files: int) -> list[str]:
    paths = []
    for number, part in enumerate(np.array_split(vectors, files)):
        flat = pa.array(part.ravel(), pa.float16())
        table = pa.table(
            {
                "doc_id": [f"doc{number}-{i}" for i in range(len(part))],
                "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]),
            }
        )
        paths.append(str(folder / f"part-{number:03d}.parquet"))
        Location(paths[-1]).write_table(table)  # as the corpus writer writes embeddings
    return paths


def raw_faiss(paths: list[str], factory: str, train: int, out: Path) -> float:
    """What a user would write with FAISS alone, from the same files, in one process."""
    started = time.perf_counter()
    vectors = np.concatenate([vectors_of(pq.read_table(path, columns=["embedding"])) for path in paths])
    sample = vectors[np.linspace(0, len(vectors) - 1, min(train, len(vectors))).astype(np.int64)]
    index = empty_index(factory, vectors.shape[1], "inner_product", sample)
    index.add_with_ids(vectors, np.arange(len(vectors), dtype=np.int64))
    faiss.write_index(index, str(out))
    return time.perf_counter() - started


def recall_at_10(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--factories", default="IVF1024,Flat;IVF1024,PQ48;OPQ32,IVF1024,PQ32")
    args = parser.parse_args()

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    work = Path(tempfile.mkdtemp(prefix="shardflow-index-bench-"))
    vectors = embeddings_like(args.vectors, args.dim, seed=1)
    paths = write_corpus(work, vectors, args.files)
    queries = embeddings_like(1000, args.dim, seed=2).astype(np.float32)
    exact = np.argsort(-(queries @ vectors.astype(np.float32).T), axis=1)[:, :10]
    print(f"{args.vectors:,} vectors x {args.dim} in {args.files} files; train {args.train:,}; {os.cpu_count()} CPUs")
    print("| factory | shardflow s | raw FAISS s | ratio | recall@10 (nprobe 32) | bytes/vector | index MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for factory in args.factories.split(";"):
        raw_seconds = raw_faiss(paths, factory, args.train, work / "raw.faiss")
        out = work / factory.replace(",", "_")
        config = IndexConfig(factory=factory, train_vectors=args.train, nprobe=NPROBE)
        started = time.perf_counter()
        build_index([Location(path) for path in paths], Location(str(out)), config)
        seconds = time.perf_counter() - started
        index = DenseIndex(Location(str(out)), NPROBE)
        _, found = index.search(queries, 10)
        positions = {doc_id: i for i, doc_id in enumerate(index.doc_ids)}
        recall = recall_at_10(np.array([[positions[d] for d in row] for row in found]), exact)
        size = (out / "index.faiss").stat().st_size
        print(
            f"| {factory} | {seconds:.1f} | {raw_seconds:.1f} | {seconds / raw_seconds:.2f}x | {recall:.3f} | "
            f"{size / args.vectors:.0f} | {size / 2**20:.0f} |"
        )


if __name__ == "__main__":
    main()
