"""The BM25 scorer: Okapi BM25 over statistics of the job's own candidate documents; no model.

Useful alone, as the lexical half of a hybrid (a dense first stage reranked by BM25, or fused with it), and,
because it costs next to nothing, to measure the rerank job's plumbing at scale.

Statistics (``prepare``), over every distinct candidate document of the job once: their number N, their mean
length in tokens, and, for each term of the job's queries, how many documents hold it (df). Only the queries'
terms are counted, so the statistics are as small as the queries, whatever the corpus.

Score, Okapi BM25 with Lucene's idf and Anserini's defaults (``k1`` 0.9, ``b`` 0.4): the sum over the query's
terms t (each as often as the query has it) of ``idf(t) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))``,
``idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5))``. Lucene 8+ leaves out the constant ``(k1 + 1)`` and rounds
document lengths: other numbers, the same order up to those roundings.

Tokens: case-folded runs of letters and digits, each CJK ideograph or kana on its own. Scripts written
without spaces (Thai, Khmer, Burmese) come out as whole runs: a segmenter would do better there.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import ray
from pydantic import Field

from shardflow.config import StrictModel
from shardflow.operators.rerank import JobTexts, Pairs
from shardflow.storage import Location

__all__ = ["Bm25Config", "Bm25Scorer", "tokens"]

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
TOKEN = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")
STATISTICS = "statistics.json"


class Bm25Config(StrictModel):
    """Okapi BM25 over the job's candidate documents."""

    kind: Literal["bm25"] = "bm25"
    k1: float = Field(0.9, ge=0, description="Term-frequency saturation (Anserini's default).")
    b: float = Field(0.4, ge=0, le=1, description="Length normalisation (Anserini's default).")


def tokens(text: str) -> list[str]:
    """The terms of ``text``: case-folded runs of letters and digits, CJK characters one by one."""
    return TOKEN.findall(text.casefold())


def prepare_statistics(config: Bm25Config, texts: JobTexts, folder: Location) -> dict[str, Any]:
    """N, the mean document length and the df of every query term, over the job's distinct candidate
    documents, as ``statistics.json`` under ``folder``: a task per block; the driver holds the queries'
    vocabulary and one count per block."""
    vocabulary = sorted(set().union(*ray.get([_terms.remote(block) for block in texts.queries])))
    vocabulary_ref = ray.put(vocabulary)
    documents, length, df = 0, 0, np.zeros(len(vocabulary), dtype=np.int64)
    for rows, tokens_held, counts in ray.get([_count.remote(block, vocabulary_ref) for block in texts.documents]):
        documents, length, df = documents + rows, length + tokens_held, df + counts
    statistics = {
        "documents": documents,
        "average_length": length / documents if documents else 0.0,
        "terms": vocabulary,
        "df": df.tolist(),
    }
    folder.join(STATISTICS).put_bytes(json.dumps(statistics).encode())
    return {"documents": documents, "terms": len(vocabulary)}


@ray.remote
def _terms(block: pa.Table) -> set[str]:
    return {term for text in block["text"].to_pylist() for term in tokens(text)}


@ray.remote
def _count(block: pa.Table, vocabulary: list[str]) -> tuple[int, int, np.ndarray]:
    """A block's documents, their tokens, and how many of them hold each vocabulary term."""
    index = {term: number for number, term in enumerate(vocabulary)}
    df = np.zeros(len(vocabulary), dtype=np.int64)
    total = 0
    for text in block["text"].to_pylist():
        terms = tokens(text)
        total += len(terms)
        df[[index[term] for term in set(terms) if term in index]] += 1
    return block.num_rows, total, df


class Bm25Scorer:
    """BM25 of each pair from the job's statistics; each distinct text of a call is tokenized once."""

    prepare = staticmethod(prepare_statistics)

    def __init__(self, config: Bm25Config, prepared: Location) -> None:
        statistics = prepared.join(STATISTICS).read_json()
        count = statistics["documents"]
        self.k1, self.b = config.k1, config.b
        self.average_length = max(statistics["average_length"], 1e-9)
        self.idf = {
            term: math.log(1 + (count - df + 0.5) / (df + 0.5))
            for term, df in zip(statistics["terms"], statistics["df"], strict=True)
        }

    def score(self, pairs: Pairs) -> np.ndarray:
        counted: dict[str, Counter[str]] = {}
        scores = np.zeros(len(pairs.documents), dtype=np.float64)
        for row, (query, document) in enumerate(zip(pairs.queries, pairs.documents, strict=True)):
            scores[row] = self.bm25(_counts(counted, query), _counts(counted, document))
        return scores

    def bm25(self, query: Counter[str], document: Counter[str]) -> float:
        norm = self.k1 * (1 - self.b + self.b * document.total() / self.average_length)
        total = 0.0
        for term, times in query.items():
            tf = document.get(term, 0)
            if tf:
                total += times * self.idf[term] * tf * (self.k1 + 1) / (tf + norm)
        return total


def _counts(counted: dict[str, Counter[str]], text: str) -> Counter[str]:
    """The term counts of ``text``, computed once per distinct text of a call."""
    found = counted.get(text)
    if found is None:
        found = counted[text] = Counter(tokens(text))
    return found
