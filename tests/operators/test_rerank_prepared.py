"""Scorers that prepare once per job (the embedding scorer's vectors, BM25's statistics) against plain
reference computations: text by text through transformers, and BM25 by its formula over every document."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import ray

from shardflow.config import Resources
from shardflow.operators.embed import EmbedConfig, TextEncoder
from shardflow.operators.rerank import JobTexts, Pairs
from shardflow.operators.rerank_dense import EmbeddingScorer, EmbeddingScorerConfig, PrfConfig
from shardflow.operators.rerank_lexical import Bm25Config, Bm25Scorer, tokens
from shardflow.operators.scorers import prepare
from shardflow.storage import Location
from support import sample_records, write_tiny_encoder

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.filterwarnings("ignore::UserWarning")]


def job() -> tuple[dict[str, str], dict[str, str], Pairs]:
    """Queries and documents of the sample (some documents shared by several lists, one list longer than the
    others), and the pairs of three lists over them."""
    texts = [r["text"] for r in sample_records()[:30]]
    queries = {f"q{n}": " ".join(texts[n].split()[:5]) for n in range(3)}
    documents = {f"d{n}": texts[n][: 60 + 23 * n] for n in range(30)}
    lists = {"q0": [f"d{n}" for n in range(0, 12)], "q1": [f"d{n}" for n in range(6, 20)], "q2": ["d2", "d29", "d1"]}
    rows = [(qid, docid) for qid, docids in lists.items() for docid in docids]
    numbers = {qid: n for n, qid in enumerate(lists)}
    pairs = Pairs(
        [queries[q] for q, _ in rows],
        [documents[d] for _, d in rows],
        np.array([numbers[q] for q, _ in rows]),
        np.array([q for q, _ in rows], dtype=object),
        np.array([d for _, d in rows], dtype=object),
    )
    return queries, documents, pairs


def job_texts(queries: dict[str, str], documents: dict[str, str]) -> JobTexts:
    """The texts in blocks as the job hands them over (documents in three blocks)."""

    def block(texts: dict[str, str]) -> ray.ObjectRef:
        return ray.put(pa.table({"id": list(texts), "text": list(texts.values())}))

    ids = sorted(documents)
    thirds = [{key: documents[key] for key in ids[start::3]} for start in range(3)]
    return JobTexts([block(part) for part in thirds], [block(queries)], Resources(num_cpus=1, concurrency=1))


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> EmbedConfig:
    queries, documents, _ = job()
    model = write_tiny_encoder(tmp_path_factory.mktemp("encoder"), "bert", [*queries.values(), *documents.values()])
    return EmbedConfig(model=str(model), preset="e5", max_length=48)


@pytest.mark.parametrize("prf", [None, PrfConfig(docs=2, weight=0.7)])
def test_the_embedding_scorer_scores_with_each_text_encoded_once(
    encoder: EmbedConfig, tmp_path: Path, prf: PrfConfig | None
) -> None:
    queries, documents, pairs = job()
    config = EmbeddingScorerConfig(encoder=encoder, prf=prf)
    prepare(config, job_texts(queries, documents), Location(str(tmp_path / "prepared")))
    found = EmbeddingScorer(config, Location(str(tmp_path / "prepared"))).score(pairs)

    plain = TextEncoder(encoder)  # the reference: every text alone, the cosine per pair, Rocchio by its formula
    vector = {("query", q): plain.encode([text], "query")[0] for q, text in queries.items()}
    vector |= {("passage", d): plain.encode([text], "passage")[0] for d, text in documents.items()}
    expected = []
    for number in np.unique(pairs.lists):
        rows = np.flatnonzero(pairs.lists == number)
        query = vector[("query", pairs.query_ids[rows[0]])].astype(np.float64)
        docs = np.array([vector[("passage", pairs.doc_ids[row])] for row in rows], dtype=np.float64)
        cosines = [float(np.dot(query, doc)) for doc in docs]
        if prf is not None:
            best = sorted(range(len(rows)), key=lambda i: (-cosines[i], i))[: prf.docs]
            moved = query + prf.weight * sum(docs[i] for i in best) / len(best)
            moved /= np.linalg.norm(moved)
            cosines = [float(np.dot(moved, doc)) for doc in docs]
        expected += cosines
    np.testing.assert_allclose(found, expected, atol=2e-6)
    assert len(np.unique(np.round(found, 4))) > len(found) // 2  # the scores differ between pairs
    if prf is not None:  # feedback moved the scores: this test could tell it off from on
        assert (
            np.abs(
                found
                - EmbeddingScorer(config.model_copy(update={"prf": None}), Location(str(tmp_path / "prepared"))).score(
                    pairs
                )
            ).max()
            > 1e-3
        )


def test_bm25_equals_its_formula_over_the_job_s_documents(tmp_path: Path) -> None:
    queries, documents, pairs = job()
    config = Bm25Config(k1=1.2, b=0.75)
    prepare(config, job_texts(queries, documents), Location(str(tmp_path / "prepared")))
    found = Bm25Scorer(config, Location(str(tmp_path / "prepared"))).score(pairs)

    bags = {docid: Counter(tokens(text)) for docid, text in documents.items()}
    count, average = len(bags), sum(sum(bag.values()) for bag in bags.values()) / len(bags)
    expected = []
    for query, docid in zip(pairs.queries, pairs.doc_ids, strict=True):
        bag, total = bags[docid], 0.0
        for term in tokens(query):  # a term the query has twice counts twice
            df = sum(1 for other in bags.values() if term in other)
            idf = math.log(1 + (count - df + 0.5) / (df + 0.5))
            tf = bag[term]
            total += (
                idf * tf * (config.k1 + 1) / (tf + config.k1 * (1 - config.b + config.b * sum(bag.values()) / average))
            )
        expected.append(total)
    np.testing.assert_allclose(found, expected, rtol=1e-12)
    assert (found > 0).sum() > len(found) // 3 and (found == 0).any()


def test_bm25_tokens_fold_case_split_cjk_and_drop_punctuation() -> None:
    assert tokens("Ärger, über_all! 2024 年の東京 Straße") == [
        "ärger",
        "über",
        "all",
        "2024",
        "年",
        "の",
        "東",
        "京",
        "strasse",
    ]
