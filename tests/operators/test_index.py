"""Dense index: auto picks by size and budget; an IVF-PQ build keeps recall@10 >= 0.9 against exact search;
a build merged from parallel parts answers exactly as a single-part build; the index round-trips through S3."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardflow.operators.embed import EMBEDDING
from shardflow.operators.index import DenseIndex, IndexConfig, build_index, choose_factory
from shardflow.schema import DOC_ID
from shardflow.storage import Location

pytestmark = pytest.mark.usefixtures("ray_local")
DIM = 32


def vectors(count: int, seed: int = 0) -> np.ndarray:
    """Unit vectors in one 8-dimensional subspace (sentence embeddings concentrate too); ``seed`` picks
    the points, not the subspace."""
    subspace = np.random.default_rng(0).standard_normal((8, DIM))
    found = np.random.default_rng(seed).standard_normal((count, 8)) @ subspace
    return (found / np.linalg.norm(found, axis=1, keepdims=True)).astype(np.float16)


def write_corpus(folder: Path, data: np.ndarray, files: int) -> list[str]:
    folder.mkdir(parents=True)
    paths = []
    for number, rows in enumerate(np.array_split(np.arange(len(data)), files)):
        flat = pa.array(data[rows].ravel(), pa.float16())
        table = pa.table({DOC_ID: [f"doc-{i}" for i in rows], EMBEDDING: pa.FixedSizeListArray.from_arrays(flat, DIM)})
        path = folder / f"part-{number}.parquet"
        pq.write_table(table, path)
        paths.append(str(path))
    return paths


def test_auto_picks_exact_search_then_ivf_then_pq_as_the_budget_demands() -> None:
    assert choose_factory(5_000, 384, 1 << 30) == "Flat"
    assert choose_factory(1_000_000, 384, 4 << 30) == "IVF4096,Flat"
    assert choose_factory(100_000_000, 384, 8 << 30) == "IVF32768,PQ64"
    assert choose_factory(100_000_000, 384, 2 << 30) == "IVF32768,PQ12"


def test_ivf_pq_recall_at_10_against_exact_search(tmp_path: Path) -> None:
    data = vectors(12_000)
    files = write_corpus(tmp_path / "corpus", data, files=6)
    # PQ32 over 32 dimensions (8x smaller than float32); training PQ is slow with this faiss build (~0.7 s
    # per sub-quantizer here), so the test keeps to one small setting
    config = IndexConfig(factory="IVF64,PQ32", nprobe=32, train_vectors=4_000, partitions=3)
    built = build_index([Location(f) for f in files], Location(str(tmp_path / "index")), config)
    assert built == {"factory": "IVF64,PQ32", "vectors": 12_000, "dim": DIM, "metric": "inner_product"}
    queries = vectors(200, seed=1).astype(np.float32)
    exact = np.argsort(-(queries @ data.astype(np.float32).T), axis=1)[:, :10]
    _, found = DenseIndex(Location(str(tmp_path / "index")), nprobe=32).search(queries, 10)
    recall = np.mean([len({f"doc-{i}" for i in want} & set(got)) / 10 for want, got in zip(exact, found, strict=True)])
    assert recall >= 0.9, recall


def test_merged_parts_answer_exactly_as_one_part(tmp_path: Path) -> None:
    files = write_corpus(tmp_path / "corpus", vectors(25_000), files=5)
    answers = []
    for parts in (1, 4):
        config = IndexConfig(factory="IVF64,Flat", partitions=parts, train_vectors=10_000)
        index = Location(str(tmp_path / f"index{parts}"))
        build_index([Location(f) for f in files], index, config)
        answers.append(DenseIndex(index).search(vectors(50, 2), 10))
    np.testing.assert_allclose(answers[0][0], answers[1][0], rtol=1e-6)
    assert answers[0][1] == answers[1][1]


def test_the_index_round_trips_through_s3(s3_storage, tmp_path: Path) -> None:
    storage, bucket = s3_storage
    data = vectors(3_000)
    files = write_corpus(tmp_path / "corpus", data, files=2)
    bucket_root = Location(f"s3://{bucket}", storage)
    for path in files:
        bucket_root.join("corpus", Path(path).name).put_bytes(Path(path).read_bytes())
    uploaded = [bucket_root.join("corpus", Path(p).name) for p in files]
    built = build_index(uploaded, bucket_root.join("index"), IndexConfig())
    assert built["factory"] == "Flat" and built["vectors"] == 3_000
    scores, found = DenseIndex(bucket_root.join("index")).search(data[:5].astype(np.float32), 1)
    assert [row[0] for row in found] == [f"doc-{i}" for i in range(5)]
    assert np.allclose(scores[:, 0], 1.0, atol=1e-2)
