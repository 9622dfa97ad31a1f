"""The index stage of the corpus job and ``shardflow search`` over it (tiny encoder, real Ray and FAISS)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from shardflow.cli import main
from shardflow.config import validate
from shardflow.errors import ConfigError, InputError
from shardflow.pipelines.corpus import CorpusConfig, run_corpus
from shardflow.pipelines.search import SearchRequest, search
from shardflow.storage import Location, StorageConfig
from shardflow.trec import read_queries
from support import sample_records, write_shard, write_tiny_encoder


def indexed_corpus(tmp_path: Path, factory: str) -> tuple[Path, list[dict]]:
    texts = list(dict.fromkeys(r["text"] for r in sample_records()[:150]))
    write_shard(tmp_path / "in" / "a.jsonl.zst", [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)])
    model = write_tiny_encoder(tmp_path / "model", "bert", texts)
    config = validate(
        {
            "input": {"paths": [str(tmp_path / "in")], "batch_rows": 40},
            "output": {"path": str(tmp_path / "out")},
            "stages": [{"op": "embed", "model": str(model), "preset": "plain", "token_budget": 512}],
            "index": {"factory": factory, "train_vectors": 150, "nprobe": 4},
            "ray": {"progress": False},
        },
        CorpusConfig,
    )
    manifest = run_corpus(config).manifest
    assert manifest["counts"]["kept"] == len(texts)
    return tmp_path / "out", pq.read_table(tmp_path / "out" / "corpus", partitioning=None).to_pylist()


@pytest.mark.usefixtures("ray_local")
def test_the_run_indexes_every_kept_document_and_search_returns_its_exact_neighbours(tmp_path: Path) -> None:
    output, rows = indexed_corpus(tmp_path, "Flat")
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["index"] | {"files": None} == {
        "path": "index",
        "factory": "Flat",
        "vectors": len(rows),
        "dim": 32,
        "metric": "inner_product",
        "files": None,
    }
    assert sorted(manifest["index"]["files"]) == ["index/ids.parquet", "index/index.faiss", "index/index.json"]
    assert sorted(pq.read_table(output / "index" / "ids.parquet")["doc_id"].to_pylist()) == sorted(
        row["doc_id"] for row in rows
    )
    assert not (output / "_staging").exists()

    picked = rows[::15]
    queries = tmp_path / "queries.jsonl"
    queries.write_text(
        "".join(json.dumps({"qid": f"q{i}", "text": row["text"]}) + "\n" for i, row in enumerate(picked))
    )
    assert main(["search", str(output), "--queries", str(queries), "--out", str(tmp_path / "run.txt"), "--k", "7"]) == 0

    vectors = np.array([row["embedding"] for row in rows], dtype=np.float32)
    run = [line.split() for line in (tmp_path / "run.txt").read_text().splitlines()]
    assert len(run) == 7 * len(picked)
    for number, row in enumerate(picked):
        lines = [line for line in run if line[0] == f"q{number}"]
        assert [line[3] for line in lines] == [str(rank) for rank in range(1, 8)]
        assert lines[0][2] == row["doc_id"]  # no prompts (preset plain): the query is the passage itself
        exact = vectors @ vectors[rows.index(row)]  # the stored float16 passage stands in for the query
        expected = {rows[i]["doc_id"] for i in np.argsort(-exact)[:7]}
        assert len(expected & {line[2] for line in lines}) >= 6  # float16 storage may swap a near tie
        scores = [float(line[4]) for line in lines]
        assert scores == sorted(scores, reverse=True) and all(line[5] == "shardflow" for line in lines)


@pytest.mark.usefixtures("ray_local")
def test_an_ivf_index_through_the_run_and_search_options(tmp_path: Path) -> None:
    output, rows = indexed_corpus(tmp_path, "IVF4,Flat")
    card = json.loads((output / "index" / "index.json").read_text())
    assert card["factory"] == "IVF4,Flat" and card["nprobe"] == 4 and card["encoder"]["preset"] == "plain"
    queries = tmp_path / "queries.tsv"
    first_line = rows[0]["text"].splitlines()[0]
    queries.write_text(f"first\t{first_line}\n")
    request = SearchRequest(str(output / "index"), str(queries), str(tmp_path / "run"), k=3, nprobe=4, tag="ivf")
    done = search(request, StorageConfig(), progress=False)
    assert done["factory"] == "IVF4,Flat" and done["lines"] == 3
    assert [line.split()[5] for line in (tmp_path / "run").read_text().splitlines()] == ["ivf"] * 3


@pytest.mark.usefixtures("ray_local")
def test_a_factory_faiss_cannot_build_for_this_corpus_is_a_config_error_not_a_traceback(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=r"index.factory: FAISS cannot build 'IVF4096,Flat' for 150 training .*"
        r"Number of training points \(150\) should be at least as large as number of clusters",
    ):
        indexed_corpus(tmp_path, "IVF4096,Flat")


def test_an_index_needs_an_embed_stage_and_a_factory_faiss_can_parse() -> None:
    with pytest.raises(ConfigError, match="index: needs an embed stage"):
        validate({"input": {"paths": ["x"]}, "output": {"path": "y"}, "index": {}}, CorpusConfig)
    with pytest.raises(ConfigError, match="index.factory: Value error, FAISS cannot parse the factory string 'IVF'"):
        validate({"input": {"paths": ["x"]}, "output": {"path": "y"}, "index": {"factory": "IVF"}}, CorpusConfig)


def test_queries_files_are_read_strictly(tmp_path: Path) -> None:
    good = tmp_path / "q.tsv"
    good.write_text("1\tfirst query\n\n2\tsecond\n")
    assert read_queries(Location(str(good))) == [("1", "first query"), ("2", "second")]
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text('{"query_id": 7, "query": "seven"}\n{"_id": "x", "text": "ex"}\n')
    assert read_queries(Location(str(jsonl))) == [("7", "seven"), ("x", "ex")]
    for name, content, message in [
        ("no_tab.tsv", "1 first\n", r"no_tab.tsv:1: expected `qid<TAB>text`"),
        ("twice.tsv", "1\ta\n1\tb\n", r"twice.tsv:2: query id '1' appears twice"),
        ("bad.jsonl", '{"qid": 1, "text": "a"}\n{"qid": 2\n', r"bad.jsonl:2: invalid JSON"),
        ("empty.jsonl", '{"qid": 1, "text": " "}\n', r"empty.jsonl:1: expected an object"),
        ("none.tsv", "\n", r"none.tsv: no queries"),
        ("spaced.tsv", "1\tok\nq 2\tspaced id\n", r"spaced.tsv:2: the query id 'q 2' holds white space"),
        ("spaced.jsonl", '{"qid": "a\\tb", "text": "x"}\n', r"spaced.jsonl:1: the query id 'a\\tb' holds white"),
    ]:
        (tmp_path / name).write_text(content)
        with pytest.raises(InputError, match=message):
            read_queries(Location(str(tmp_path / name)))
    with pytest.raises(InputError, match="not a shardflow index"):
        search(SearchRequest(str(tmp_path), str(good), str(tmp_path / "run")), StorageConfig(), progress=False)
