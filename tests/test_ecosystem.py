"""The corpus read by the ecosystem's tools as they are used: duckdb's SQL over the parquet files, and Hugging
Face datasets' parquet loader, offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from shardflow.config import validate
from shardflow.pipelines.corpus import CorpusConfig, run_corpus
from support import sample_records, write_shard, write_tiny_encoder

LANGUAGES = ("fin_Latn", "eng_Latn", "jpn_Jpan")


@pytest.fixture(scope="module")
def output(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """36 UDHR articles in three languages, and six of them again under new ids: exact dedup removes those;
    the kept ones embedded by a tiny encoder (the float16 ``embedding`` column is read too)."""
    folder = tmp_path_factory.mktemp("ecosystem")
    records = sample_records()
    articles = [r for lang in LANGUAGES for r in [r for r in records if r["lang"][0] == lang][:12]]
    copies = [{**r, "id": f"copy-{r['id']}"} for r in articles[::6]]
    write_shard(folder / "in" / "articles.jsonl.zst", articles + copies)
    encoder = write_tiny_encoder(folder / "model", "bert", [r["text"] for r in articles])
    config = validate(
        {
            "input": {"paths": [str(folder / "in")]},
            "output": {"path": str(folder / "out")},
            "stages": [{"op": "langid"}, {"op": "exact_dedup"}, {"op": "embed", "model": str(encoder)}],
            "ray": {"progress": False},
        },
        CorpusConfig,
    )
    run_corpus(config)
    return folder / "out"


def manifest_of(output: Path) -> dict[str, Any]:
    return json.loads((output / "manifest.json").read_text())


def kept_ids(output: Path) -> list[str]:
    """The ids in the corpus files the manifest lists."""
    files = [output / entry["path"] for entry in manifest_of(output)["files"] if entry["kind"] == "corpus"]
    return sorted(doc_id for path in files for doc_id in pq.read_table(path, columns=["doc_id"])["doc_id"].to_pylist())


def test_duckdb_counts_languages_as_the_manifest_does(output: Path) -> None:
    rows = duckdb.sql(
        f"SELECT lang, count(*) FROM read_parquet('{output}/corpus/**/*.parquet', hive_partitioning=true) GROUP BY lang"
    ).fetchall()
    manifest = manifest_of(output)
    assert dict(rows) == {lang: n["kept"] for lang, n in manifest["languages"].items() if n["kept"]}
    assert sum(count for _, count in rows) == manifest["counts"]["kept"] == 36
    # every column reads, nested ones (lists, structs, the float16 embedding) included
    everything = duckdb.sql(f"SELECT * FROM read_parquet('{output}/corpus/**/*.parquet', hive_partitioning=true)")
    rows = everything.fetchall()
    assert len(rows) == 36
    columns = everything.columns
    assert {"doc_id", "text", "lang", "seg_langs", "lang_topk", "dup_cluster", "meta", "embedding"} <= set(columns)
    vectors = np.array([row[columns.index("embedding")] for row in rows], dtype=np.float32)
    assert vectors.shape == (36, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=5e-3)


def test_datasets_loads_the_kept_documents_offline(output: Path, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    corpus = datasets.load_dataset(
        "parquet", data_files=str(output / "corpus" / "**" / "*.parquet"), split="train", cache_dir=str(tmp_path)
    )
    manifest = manifest_of(output)
    assert corpus.num_rows == manifest["counts"]["kept"]
    assert sorted(corpus["doc_id"]) == kept_ids(output)
    assert not any(doc_id.startswith("copy-") for doc_id in corpus["doc_id"])
    assert sorted(set(corpus["lang"])) == sorted(lang for lang, n in manifest["languages"].items() if n["kept"])
    assert np.array(corpus[0]["embedding"]).shape == (32,)
