"""The embedding scorer: cosine of query and document vectors, each distinct text of a job encoded once.

Before any pair is scored, ``prepare`` encodes every candidate document and every query of the job once, on
an actor pool with the scorer's resources (one actor per GPU), and stores the vectors by id as parquet under
the job's staging. Scoring a chunk is then a lookup by id and a dot product: no model and no GPU, and no
dependence on which chunks an actor saw before (a vector is computed once per job), so a resumed job writes
the identical run. Encoding a document once per chunk it appears in, as before, cost one forward pass per
(document, chunk): ~30 per passage on a QA-style run set with 64 chunks.

Pseudo-relevance feedback (``prf``, Rocchio's formula): each query's vector moves toward the mean of its
``docs`` best-scored candidates' vectors, ``q' = q + weight * mean(d_1..d_m)``, normalised, and its list is
scored again with ``q'``. It assumes the top of the list is mostly relevant; docs/rerank.md has measurements.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from pydantic import Field

from shardflow.config import StrictModel
from shardflow.errors import OutputStateError
from shardflow.operators.embed import EmbedConfig, TextEncoder
from shardflow.operators.rerank import ACTOR_RESTARTS, JobTexts, Pairs, actor_placement, list_bounds
from shardflow.storage import Location

__all__ = ["EmbeddingScorer", "EmbeddingScorerConfig", "PrfConfig", "TextBlockEncoder", "VectorTable", "rocchio"]

ENCODE_ROWS = 256  # texts per block and per call of an encoder actor: enough to sort by length, small enough
# that every actor of the pool has blocks (a group-by hands over few, large blocks)


class PrfConfig(StrictModel):
    """Rocchio pseudo-relevance feedback on the embedding scorer's first scores."""

    docs: int = Field(3, ge=1, description="How many of a query's best-scored candidates move its vector.")
    weight: float = Field(0.5, gt=0, description="Their mean's weight against the query's own vector (1).")


class EmbeddingScorerConfig(StrictModel):
    """Cosine between query and document embeddings, with the embed stage's encoder and prompts."""

    kind: Literal["embedding"] = "embedding"
    encoder: EmbedConfig = Field(default_factory=EmbedConfig)
    prf: PrfConfig | None = Field(None, description="Pseudo-relevance feedback (Rocchio); off: null.")


@ray.remote
class TextBlockEncoder:
    """One encoder per actor: encodes whole blocks of texts and writes each block's vectors as one file."""

    def __init__(self, config: EmbedConfig) -> None:
        self.encoder = TextEncoder(config)

    def placement(self) -> dict[str, Any]:
        return actor_placement()

    def encode(self, block: pa.Table, role: str, out: Location) -> int:
        """``id, vector`` of the block's texts (one call: sorted by length, token-budget batches) at ``out``."""
        if block.num_rows:
            vectors = self.encoder.encode(block["text"].to_pylist(), role)
            flat = pa.array(vectors.ravel(), pa.float32())
            ids = pc.cast(block["id"], pa.string())
            vector = pa.FixedSizeListArray.from_arrays(flat, self.encoder.dimensions)
            out.write_table(pa.table({"id": ids, "vector": vector}))
        return block.num_rows


def prepare_vectors(config: EmbeddingScorerConfig, texts: JobTexts, folder: Location) -> dict[str, Any]:
    """Every distinct document and query text of the job encoded once on a fixed pool of encoder actors (the
    scorer pool's resources: one per GPU), written by role (``role=passage/``, ``role=query/``) under
    ``folder``, one file per block. A block is encoded by one call, sorted by length inside: the job hands
    over blocks of fixed content, so a rerun of the pass batches the same texts together and computes the
    same vectors. An actor that dies is restarted and its block encoded again. Returns where the actors ran."""
    pool = texts.pool
    actor = TextBlockEncoder.options(
        num_cpus=pool.num_cpus, num_gpus=pool.num_gpus or None, max_restarts=ACTOR_RESTARTS, max_task_retries=-1
    )
    actors = [actor.remote(config.encoder) for _ in range(pool.concurrency or 1)]
    placements = ray.get([a.placement.remote() for a in actors])
    work = [
        (block, "passage", folder.join("role=passage", f"part-{n:05d}.parquet"))
        for n, block in enumerate(texts.documents)
    ]
    work += [
        (block, "query", folder.join("role=query", f"part-{n:05d}.parquet")) for n, block in enumerate(texts.queries)
    ]
    encoded = ray.util.ActorPool(actors).map_unordered(lambda a, job: a.encode.remote(*job), work)
    return {"texts": sum(encoded), "actors": placements}


@dataclass(frozen=True)
class VectorTable:
    """Vectors by id, as written by ``prepare_vectors`` for one role."""

    ids: pa.Array
    matrix: np.ndarray

    @classmethod
    def read(cls, folder: Location) -> VectorTable:
        files = folder.files(".parquet")
        if not files:
            return cls(pa.array([], pa.string()), np.zeros((0, 0), dtype=np.float32))
        table = pa.concat_tables([file.read_table(["id", "vector"]) for file in files])
        column = table["vector"].combine_chunks()
        matrix = column.flatten().to_numpy().reshape(table.num_rows, column.type.list_size)
        return cls(table["id"].combine_chunks(), matrix)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """The vectors of ``ids``, in their order (float64: every dot product sums the same way)."""
        index = pc.index_in(pa.array(ids, pa.string()), value_set=self.ids)
        if index.null_count:
            missing = pc.filter(pa.array(ids, pa.string()), pc.is_null(index))[0]
            raise OutputStateError(f"no vector was prepared for {missing!r}; rerun the job with --restart")
        return self.matrix[index.to_numpy()].astype(np.float64)


class EmbeddingScorer:
    """Cosine of the prepared query and document vectors (both L2-normalised), with Rocchio feedback if asked."""

    prepare = staticmethod(prepare_vectors)

    def __init__(self, config: EmbeddingScorerConfig, prepared: Location) -> None:
        self.prf = config.prf
        self.docs = VectorTable.read(prepared.join("role=passage"))
        self.queries = VectorTable.read(prepared.join("role=query"))

    def score(self, pairs: Pairs) -> np.ndarray:
        queries, documents = self.queries.rows(pairs.query_ids), self.docs.rows(pairs.doc_ids)
        scores = np.sum(queries * documents, axis=1)
        if self.prf is None:
            return scores
        return rocchio(queries, documents, scores, pairs.lists, self.prf)


def rocchio(
    queries: np.ndarray, documents: np.ndarray, scores: np.ndarray, lists: np.ndarray, prf: PrfConfig
) -> np.ndarray:
    """Each list scored again with its query's vector moved toward its ``prf.docs`` best documents' mean (ties
    broken by input order), normalised."""
    moved_scores = scores.copy()
    for start, end in list_bounds(lists):
        best = start + np.argsort(-scores[start:end], kind="stable")[: prf.docs]
        moved = queries[start] + prf.weight * documents[best].mean(axis=0)
        moved /= max(float(np.linalg.norm(moved)), 1e-12)
        moved_scores[start:end] = np.sum(documents[start:end] * moved, axis=1)
    return moved_scores
