"""The rerank job: TREC runs + queries + a corpus -> reranked runs (and metrics, given qrels).

Steps, each restartable:
1. **pairs**: the runs are read and parsed by Ray Data (never on the driver), cut to each query's ``top_k``
   by rank, joined with the corpus on the document id (a Ray Data hash join: no dict of the corpus
   anywhere), tagged with a chunk number from the hash of the query id and written as parquet partitioned
   by chunk. A docid the corpus lacks keeps a null text and is counted, never dropped. The queries are
   staged beside them, one small file per chunk, so that a scorer reads only its chunk's queries.
2. **prepared** (scorers that work per distinct text: the embedding scorer's vectors, BM25's statistics):
   the job's distinct candidate documents (a map-reduce of plain tasks over the chunks' pairs) and queries
   go once through the scorer's ``prepare``, whose result is kept under a folder named like the scores'.
3. **scores**: a fixed pool of scorer actors (one per GPU, ``num_gpus: 1``; a scorer that prepared scores
   from that and loads no model) takes the chunks that have no result yet;
   each chunk's result is written whole (atomically), so a job killed midway, run again, scores only the
   chunks still missing, with the same batches, hence the same scores. Results live in a folder named by the
   fingerprint of everything they depend on (pairs inputs, scorer, queries), so results of two
   configurations never meet in one run file; staged work of other settings is refused (``restart``
   discards it).
4. **runs**: per input run, the chunks are read in order and written as ``<run>.run``: per query, scored
   pairs by score (fused with the run's own where ``fusion`` says so), then any unscorable ones (docid not
   in the corpus, query without text) in their input order. With qrels, ``<run>.metrics.json`` holds
   nDCG@10, RR@10 and R@100 before and after.

The job holds the output's lease (``OUTPUT/_rerank.lease``) throughout: a second job into the same output
refuses, and a scorer publishes a chunk only while the lease names its job's attempt, which fences out the
workers of a killed job that outlive it.
"""

from __future__ import annotations

import json
import logging
import posixpath
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import xxhash
from pydantic import Field, field_validator
from rich.console import Console
from rich.progress import Progress

from shardflow.arrays import run_starts
from shardflow.cluster.pools import BLOCKS_PER_ACTOR, actors_that_fit, on_cluster
from shardflow.cluster.runtime import RayConfig, job_retries, ray_session
from shardflow.config import Resources, StrictModel
from shardflow.errors import ConfigError, InputError, OutputStateError
from shardflow.fusion import FusionConfig, fuse
from shardflow.lease import Lease, lease
from shardflow.operators.rerank import ACTOR_RESTARTS, JobTexts, Pairs, actor_placement
from shardflow.operators.scorers import (
    EmbeddingScorerConfig,
    ScorerConfig,
    load_scorer,
    prepare,
    prepares,
)
from shardflow.steps import DONE, finished, mark_finished, step_facts
from shardflow.storage import Location, StorageConfig
from shardflow.trec import read_queries, run_lines

__all__ = ["CorpusSource", "RerankConfig", "rerank", "run_name"]

log = logging.getLogger(__name__)

MEASURES = ("nDCG@10", "RR@10", "R@100")
RUN_SUFFIXES = (".gz", ".run", ".txt", ".trec", ".tsv")
LEASE_FILE = "_rerank.lease"
SCORED_WITH = "_SCORED_WITH.json"  # in a scores folder: the inputs its results were computed from
PAIRS_INPUTS = ("runs", "corpus", "top_k", "chunks")


class CorpusSource(StrictModel):
    """Where document texts come from."""

    path: str = Field(description="A shardflow output folder, or JSONL / TSV (id<TAB>text) / parquet files.")
    format: Literal["auto", "shardflow", "jsonl", "tsv", "parquet"] = "auto"
    id_field: str = Field("doc_id", description="The id column of JSONL or parquet input.")
    text_field: str = Field("text", description="The text column of JSONL or parquet input.")


class RerankOutput(StrictModel):
    path: str = Field(description="Folder for <run>.run, <run>.metrics.json and the job's staging.")


class RerankConfig(StrictModel):
    runs: list[str] = Field(min_length=1, description="TREC run files, local or s3://.")
    queries: str = Field(description="qid<TAB>text lines or JSON lines.")
    corpus: CorpusSource
    qrels: str | None = Field(None, description="TREC qrels (qid 0 docid relevance): metrics before and after.")
    top_k: int = Field(100, ge=1, description="Candidates per query to rerank (by the run's rank column).")
    scorer: ScorerConfig = Field(default_factory=EmbeddingScorerConfig)
    fusion: FusionConfig | None = Field(
        None, description="Combine the reranker's scores with the run's own, per query (docs/rerank.md); off: null."
    )
    chunks: int = Field(64, ge=1, description="Units of work and of resumption (by the hash of the query id).")
    resources: Resources = Field(default_factory=lambda: Resources(num_gpus=1))
    output: RerankOutput
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()

    def at(self, uri: str) -> Location:
        """``uri`` reached with this job's storage settings."""
        return Location(uri, self.storage)

    @field_validator("runs")
    @classmethod
    def _distinct_names(cls, runs: list[str]) -> list[str]:
        names = [run_name(uri) for uri in runs]
        if len(set(names)) != len(names):
            raise ValueError(f"two runs would be written to the same file name: {names}")
        return runs


def run_name(uri: str) -> str:
    """``runs/bm25.run.gz`` -> ``bm25``."""
    name = posixpath.basename(uri.rstrip("/"))
    while name.endswith(RUN_SUFFIXES):
        name = name.rsplit(".", 1)[0]
    return name


def rerank(
    config: RerankConfig, progress: bool = True, restart: bool = False, console: Console | None = None
) -> dict[str, Any]:
    """Run (or resume) the job; returns the summary also written to ``OUTPUT/summary.json``. ``restart``
    discards the job's staged work first: the way on after a change of the pairs' inputs, scorer or queries.
    The scoring's progress bar goes to ``console`` (default: stderr)."""
    started = time.monotonic()
    for uri in [*config.runs, config.queries, *([config.qrels] if config.qrels else [])]:
        if not config.at(uri).exists():
            raise InputError(f"input path does not exist: {uri}")
    output = config.at(config.output.path)
    with lease(output.join(LEASE_FILE), f"a rerank into {config.output.path}") as held:
        if restart:
            output.join("_staging").remove()
        summary = _attempt(config, output, held, Progress(console=console, disable=not progress, transient=True))
        summary["seconds"] = round(time.monotonic() - started, 3)
        summary["driver_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10  # KiB on Linux
        output.join("summary.json").put_bytes(json.dumps(summary, indent=2).encode())
    return summary


def _attempt(config: RerankConfig, output: Location, held: Lease, progress: Progress) -> dict[str, Any]:
    """The job's steps under its lease: staged work of other inputs refused, then pairs, scores and runs."""
    queries = dict(read_queries(config.at(config.queries)))
    staging = output.join("_staging")
    inputs = _job_inputs(config, queries)
    _refuse_other_inputs(staging, inputs)
    fingerprint = xxhash.xxh64_hexdigest(json.dumps(inputs, sort_keys=True).encode())
    scores = staging.join("scores", fingerprint)
    scores.join(SCORED_WITH).put_bytes(json.dumps(inputs, indent=2).encode())
    with ray_session(config.ray.address, config.ray.num_cpus, config.ray.verbose):
        before = job_retries()
        pairs = _ensure_pairs(config, staging.join("pairs"))
        staged_queries = _stage_queries(queries, config.chunks, staging.join("queries", inputs["queries_xxh64"]))
        todo = _unscored(staging.join("pairs"), staged_queries, scores)
        prepared, prepared_facts = None, {}
        if todo and prepares(config.scorer):
            prepared = staging.join("prepared", fingerprint)
            prepared_facts = _ensure_prepared(config, staging, staged_queries, prepared)
        attempt = Attempt(held.where, held.holder["id"])  # what the scorers check before they publish
        scored = _score_chunks(config, todo, prepared, attempt, progress)
        retries = job_retries().since(before).as_dict()
    held.check()
    runs = {run_name(uri): _write_run(config, uri, scores) for uri in config.runs}
    summary = {"pairs": pairs, "prepared_this_attempt": prepared_facts, "scored_this_attempt": scored}
    return {**summary, "retries": retries, "runs": runs}


def _job_inputs(config: RerankConfig, queries: dict[str, str]) -> dict[str, Any]:
    """Everything a chunk's scores depend on: the pairs step's inputs, the scorer and the queries' texts (by
    content, not path)."""
    inputs = config.model_dump(mode="json", include={*PAIRS_INPUTS, "scorer"})
    inputs["queries_xxh64"] = xxhash.xxh64_hexdigest(json.dumps(sorted(queries.items())).encode())
    return inputs


def _refuse_other_inputs(staging: Location, inputs: dict[str, Any]) -> None:
    """Refuse to resume staged work (pairs, scores) computed from other inputs: resuming would mix two models,
    or two sets of queries, in one run file. The message names what changed."""
    recorded = [marker.read_json() for marker in staging.join("scores").files(SCORED_WITH)]
    pairs = staging.join("pairs", DONE).read_json()
    for old in [*recorded, *([pairs["inputs"]] if pairs else [])]:
        changes = _changes(old, {key: inputs.get(key) for key in old})
        if changes:
            raise ConfigError(
                f"config error: {staging} holds work of other settings ({'; '.join(changes)}); rerun with "
                "--restart to discard it and start over, or restore the settings to resume it"
            )


def _changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: old -> new`` for each setting that differs, nested keys dotted (``scorer.max_length: 64 -> 8``)."""
    found = []
    for key in sorted(old.keys() | new.keys()):
        before, after = old.get(key), new.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            found += _changes(before, after, f"{prefix}{key}.")
        elif before != after:
            found.append(f"{prefix}{key}: {json.dumps(before)} -> {json.dumps(after)}")
    return found


# ---------------------------------------------------------------- step 1: pairs


def _ensure_pairs(config: RerankConfig, folder: Location) -> dict[str, Any]:
    inputs = config.model_dump(mode="json", include=set(PAIRS_INPUTS))
    if not finished(folder, inputs):
        filesystem, local = folder.arrow_filesystem()
        pairs = _read_runs(config).join(
            _read_corpus(config.corpus, config.at(config.corpus.path)),
            join_type="left_outer",
            num_partitions=max(1, config.chunks // 4),
            on=("docid",),
            right_on=("corpus_id",),
        )
        pairs = pairs.map_batches(_tag_chunks, fn_kwargs={"chunks": config.chunks}, batch_format="pyarrow")
        pairs.write_parquet(local, filesystem=filesystem, partition_cols=["chunk"])
        mark_finished(folder, inputs, **_pair_counts(folder))
    return {k: v for k, v in step_facts(folder).items() if k != "inputs"}


def _read_runs(config: RerankConfig) -> ray.data.Dataset:
    filesystem, _ = config.at(config.runs[0]).arrow_filesystem()
    paths = [config.at(uri).filesystem()[1] for uri in config.runs]
    lines = ray.data.read_text(paths, filesystem=filesystem, include_paths=True)
    names = {path: run_name(path) for path in paths}
    return lines.map_batches(
        _parse_run_lines, fn_kwargs={"names": names, "top_k": config.top_k}, batch_format="pyarrow"
    )


def _parse_run_lines(batch: pa.Table, names: dict[str, str], top_k: int) -> pa.Table:
    """``qid Q0 docid rank score tag`` lines -> rows with rank <= top_k; a malformed line is an error naming it."""
    runs, qids, docids, ranks, scores = [], [], [], [], []
    for line, path in zip(batch["text"].to_pylist(), batch["path"].to_pylist(), strict=True):
        fields = line.split()
        if not fields:
            continue
        try:
            qid, _, docid, rank, score, _ = fields
            rank_value, score_value = int(rank), float(score)
        except ValueError:
            raise InputError(f"{path}: not a TREC run line (qid Q0 docid rank score tag): {line[:120]!r}") from None
        if rank_value <= top_k:
            runs.append(names[path])
            qids.append(qid)
            docids.append(docid)
            ranks.append(rank_value)
            scores.append(score_value)
    return pa.table(
        {
            "run": pa.array(runs, pa.string()),
            "qid": pa.array(qids, pa.string()),
            "docid": pa.array(docids, pa.string()),
            "rank": pa.array(ranks, pa.int32()),
            "score": pa.array(scores, pa.float64()),
        }
    )


def _read_corpus(source: CorpusSource, where: Location) -> ray.data.Dataset:
    """``corpus_id, text`` rows from a shardflow output, JSONL, TSV or parquet at ``where``."""
    kind = source.format
    if kind == "auto":
        if where.join("manifest.json").exists():
            kind = "shardflow"
        elif source.path.endswith((".tsv", ".tsv.gz")):
            kind = "tsv"
        elif source.path.endswith(".parquet"):
            kind = "parquet"
        else:
            kind = "jsonl"
    arrow_fs, local = where.arrow_filesystem()
    if kind == "shardflow" and _written_as_hplt(where):
        data = ray.data.read_json(where.join("corpus").arrow_filesystem()[1], filesystem=arrow_fs)
        id_field, text_field = "id", "text"
    elif kind == "shardflow":
        data = ray.data.read_parquet(
            where.join("corpus").arrow_filesystem()[1],
            filesystem=arrow_fs,
            columns=["doc_id", "text"],
            partitioning=None,
        )
        id_field, text_field = "doc_id", "text"
    elif kind == "parquet":
        data = ray.data.read_parquet(local, filesystem=arrow_fs, columns=[source.id_field, source.text_field])
        id_field, text_field = source.id_field, source.text_field
    elif kind == "tsv":
        import pyarrow.csv as csv

        data = ray.data.read_csv(
            local,
            filesystem=arrow_fs,
            read_options=csv.ReadOptions(column_names=["id", "text"]),
            parse_options=csv.ParseOptions(delimiter="\t", quote_char=False),
            convert_options=csv.ConvertOptions(column_types={"id": pa.string(), "text": pa.string()}),
        )
        id_field, text_field = "id", "text"
    else:
        data = ray.data.read_json(local, filesystem=arrow_fs)
        id_field, text_field = source.id_field, source.text_field
    return data.map_batches(
        _corpus_columns, fn_kwargs={"id_field": id_field, "text_field": text_field}, batch_format="pyarrow"
    )


def _written_as_hplt(output: Location) -> bool:
    """Whether a shardflow output's corpus is HPLT's JSON lines (``output.format: hplt``), not parquet."""
    manifest = output.join("manifest.json").read_json() or {}
    return manifest.get("config", {}).get("output", {}).get("format") == "hplt"


def _corpus_columns(batch: pa.Table, id_field: str, text_field: str) -> pa.Table:
    for name in (id_field, text_field):
        if name not in batch.column_names:
            raise InputError(
                f"corpus: no {name!r} field (columns: {batch.column_names}); set corpus.id_field/text_field"
            )
    return pa.table(
        {"corpus_id": pc.cast(batch[id_field], pa.string()), "text": pc.cast(batch[text_field], pa.string())}
    )


def _chunk_of(qid: str, chunks: int) -> int:
    """The chunk of a query: stable across processes and runs (not Python's salted ``hash``)."""
    return xxhash.xxh64_intdigest(qid.encode()) % chunks


def _tag_chunks(batch: pa.Table, chunks: int) -> pa.Table:
    numbers = [_chunk_of(qid, chunks) for qid in batch["qid"].to_pylist()]
    table = batch.select([name for name in batch.column_names if name != "corpus_id"])
    return table.append_column("chunk", pa.array(numbers, pa.int32()))


def _pair_counts(folder: Location) -> dict[str, int]:
    """Pairs, and those whose docid the corpus lacks, from the written files' parquet footers (row counts and
    the text column's null counts): the driver reads no text."""
    counts: dict[str, int] = {"pairs": 0, "missing_docids": 0}
    for file in folder.files(".parquet"):
        fs, path = file.filesystem()
        with fs.open(path, "rb") as handle:
            metadata = pq.ParquetFile(handle).metadata
        text = metadata.schema.names.index("text")
        for number in range(metadata.num_row_groups):
            group = metadata.row_group(number)
            counts["pairs"] += group.num_rows
            counts["missing_docids"] += group.column(text).statistics.null_count
    return counts


# ---------------------------------------------------------------- step 2: prepared


def _stage_queries(queries: dict[str, str], chunks: int, folder: Location) -> Location:
    """The queries as one parquet file per chunk (``qid, text``), so that a scorer reads its chunk's queries
    only; written once per content of the queries file (``folder`` is named by it)."""
    inputs = {"chunks": chunks}
    if not finished(folder, inputs):
        by_chunk: dict[int, list[tuple[str, str]]] = {chunk: [] for chunk in range(chunks)}
        for qid, text in queries.items():
            by_chunk[_chunk_of(qid, chunks)].append((qid, text))
        for chunk, rows in by_chunk.items():
            ids, texts = zip(*rows, strict=True) if rows else ((), ())
            table = pa.table({"qid": pa.array(ids, pa.string()), "text": pa.array(texts, pa.string())})
            _chunk_queries(folder, chunk).write_table(table)
        mark_finished(folder, inputs)
    return folder


def _chunk_queries(folder: Location, chunk: int) -> Location:
    return folder.join(f"chunk-{chunk:05d}.parquet")


def _ensure_prepared(config: RerankConfig, staging: Location, queries: Location, folder: Location) -> dict[str, Any]:
    """The scorer's pass over the job's distinct texts, once per fingerprint of the scores (``folder``); what it
    reported, or nothing when an earlier attempt finished it."""
    if finished(folder, {"scores": folder.name}):
        return {}
    pool = _model_pool(config)
    buckets = max(config.chunks // 4, 4 * (pool.concurrency or 1))
    documents, job_queries = _distinct_texts(staging.join("pairs"), queries, buckets)
    facts = prepare(config.scorer, JobTexts(documents, job_queries, pool), folder)
    mark_finished(folder, {"scores": folder.name})
    return facts


def _distinct_texts(pairs: Location, queries: Location, buckets: int) -> tuple[list[Any], list[Any]]:
    """``id, text`` of every candidate document with a text, once, and of every query the runs name and the
    queries file holds, once: a map-reduce of plain tasks over the chunks (a task per chunk deduplicates its
    documents and hashes them into ``buckets``, a task per bucket deduplicates again), which costs seconds
    where a Ray Data group-by costs ~30 s of shuffle set-up on 2 CPUs. The driver holds references only.

    Each block is a fixed set of texts, sorted by id: a bucket of documents, a chunk's queries. A model that
    encodes block by block therefore batches the same texts together in every run of the job, and computes the
    same floats. A docid the corpus holds twice gets the smallest of its texts. The blocks are computed before
    this returns: a pool of model actors that takes every CPU next would leave these tasks none."""
    mapped = [
        _chunk_texts.options(num_returns=buckets + 1).remote(folder, _chunk_queries(queries, chunk), buckets)
        for chunk, folder in sorted(_chunk_folders(pairs).items())
    ]
    per_bucket = (
        [_distinct.remote(*[pieces[bucket] for pieces in mapped]) for bucket in range(buckets)] if mapped else []
    )
    per_chunk = [pieces[buckets] for pieces in mapped]
    if mapped:
        ray.wait([*per_bucket, *per_chunk], num_returns=len(per_bucket) + len(per_chunk), fetch_local=False)
    return per_bucket, per_chunk


@ray.remote
def _chunk_texts(folder: Location, queries: Location, buckets: int) -> tuple[pa.Table, ...]:
    """A chunk's distinct documents (``id, text``) split into ``buckets`` by the hash of the id, and the
    chunk's queries that have a text."""
    parts = [file.read_table(["qid", "docid", "text"]) for file in folder.files(".parquet")]
    table = pa.concat_tables(parts, promote_options="permissive")
    with_text = table.filter(pc.is_valid(table["text"]))
    documents = _smallest_text(with_text.select(["docid", "text"]).rename_columns(["id", "text"]))
    number = np.array([xxhash.xxh64_intdigest(docid.encode()) % buckets for docid in documents["id"].to_pylist()])
    pieces = [documents.filter(pa.array(number == bucket)) for bucket in range(buckets)]
    texts = queries.read_table().rename_columns(["id", "text"])
    return (*pieces, texts.filter(pc.is_in(texts["id"], value_set=pc.unique(table["qid"]))).sort_by("id"))


@ray.remote
def _distinct(*pieces: pa.Table) -> pa.Table:
    return _smallest_text(pa.concat_tables(pieces, promote_options="permissive"))


def _smallest_text(table: pa.Table) -> pa.Table:
    """One row per ``id``, with the smallest of its texts, sorted by id."""
    return table.group_by("id").aggregate([("text", "min")]).rename_columns(["id", "text"]).sort_by("id")


def _model_pool(config: RerankConfig) -> Resources:
    """The scorer's resources on this cluster with ``concurrency`` set: one actor per GPU, or CPU actors (as
    many as the CPUs allow) where there is none, never more than the nodes can hold; a ``ConfigError`` where
    no node can hold one."""
    resources = on_cluster("resources", config.resources, ray.cluster_resources().get("GPU", 0.0))
    cpus = ray.cluster_resources().get("CPU", 1.0)
    size = resources.concurrency or max(1, int(cpus // max(resources.num_cpus, 1e-9)))
    fit = actors_that_fit(resources, ray.nodes())
    if fit == 0:
        raise ConfigError(
            f"config error: resources: no node of the cluster can hold a scorer actor (num_cpus "
            f"{resources.num_cpus:g}, num_gpus {resources.num_gpus:g}); lower them"
        )
    return resources.model_copy(update={"concurrency": min(size, fit)})


# ---------------------------------------------------------------- step 3: scores


def _chunk_folders(pairs: Location) -> dict[int, Location]:
    return {int(entry.name.split("=", 1)[1]): entry for entry in pairs.children() if entry.name.startswith("chunk=")}


def _result_file(scores: Location, chunk: int) -> Location:
    return scores.join(f"chunk-{chunk:05d}.parquet")


@dataclass(frozen=True)
class Attempt:
    """One run of the job: the output's lease file and the holder id this run took it with."""

    lease: Location
    id: str

    def current(self) -> bool:
        """Whether this run still holds the output: not killed and replaced, not finished."""
        return (self.lease.read_json() or {}).get("id") == self.id


def _publish(result: pa.Table, out: Location, attempt: Attempt) -> bool:
    """Write a chunk's result beside ``out`` and rename it into place only if ``attempt`` still holds the
    output's lease, else discard it: a worker that outlives its killed job must not write into the job that
    replaced it. (Check and rename are two steps: a worker that checked just before the new job took the lease
    can still publish, into the same fingerprint's folder, hence the scores the new job would write.)"""
    staged = out.at(f"{out.uri}.{attempt.id}.tmp")
    staged.write_table(result)
    if not attempt.current():
        staged.remove()
        return False
    staged.move_to(out)
    return True


@ray.remote
class ChunkScorer:
    """One scorer per actor (its model, or what it prepared); scores whole chunks and publishes each chunk's
    result at once, while its job's attempt holds the output."""

    def __init__(self, scorer: ScorerConfig, prepared: Location | None) -> None:
        self.scorer = load_scorer(scorer, prepared)

    def placement(self) -> dict[str, Any]:
        return actor_placement()

    def score(self, folder: Location, queries: Location, out: Location, attempt: Attempt) -> bool:
        """Score the chunk in ``folder`` (its queries in ``queries``) and publish it at ``out`` if ``attempt`` is
        still current; whether it was published."""
        table = _first_of_each_pair(pa.concat_tables([file.read_table() for file in folder.files(".parquet")]))
        texts = table["text"].to_pylist()
        known = queries.read_table()
        by_qid = dict(zip(known["qid"].to_pylist(), known["text"].to_pylist(), strict=True))
        query_texts = [by_qid.get(qid) for qid in table["qid"].to_pylist()]
        scorable = np.array([t is not None and q is not None for t, q in zip(texts, query_texts, strict=True)])
        scores = np.full(table.num_rows, np.nan, dtype=np.float64)
        if scorable.any():
            rows = np.flatnonzero(scorable)
            keys = zip(table["run"].to_pylist(), table["qid"].to_pylist(), strict=True)  # a list: contiguous rows
            lists = np.array([f"{run}\t{qid}" for run, qid in keys], dtype=object)[rows]
            qids, docids = (table[name].to_numpy(zero_copy_only=False)[rows] for name in ("qid", "docid"))
            pairs = Pairs([query_texts[i] for i in rows], [texts[i] for i in rows], lists, qids, docids)
            scores[rows] = self.scorer.score(pairs)
        result = table.select(["run", "qid", "docid", "rank", "score"]).append_column("rerank_score", pa.array(scores))
        return _publish(result, out, attempt)


def _first_of_each_pair(table: pa.Table) -> pa.Table:
    """Rows sorted by run, query and rank, one per (run, qid, docid): a docid a run lists twice for a query, or
    one the corpus holds twice, is scored once, at its best rank (and with the smaller of its texts, the one
    the prepared scorers' pass over distinct texts keeps too)."""
    order = [("run", "ascending"), ("qid", "ascending"), ("docid", "ascending"), ("rank", "ascending")]
    table = table.sort_by([*order, ("text", "ascending")])
    keys = [table[name].to_numpy(zero_copy_only=False) for name in ("run", "qid", "docid")]
    first = np.ones(table.num_rows, dtype=bool)
    if table.num_rows:
        first[1:] = np.any([key[1:] != key[:-1] for key in keys], axis=0)
    table = table.filter(pa.array(first))
    return table.sort_by([("run", "ascending"), ("qid", "ascending"), ("rank", "ascending"), ("docid", "ascending")])


def _unscored(pairs: Location, queries: Location, scores: Location) -> list[tuple[Location, Location, Location]]:
    """``(pairs folder, queries file, result file)`` of every chunk without a result yet."""
    todo = [
        (folder, _chunk_queries(queries, chunk), _result_file(scores, chunk))
        for chunk, folder in sorted(_chunk_folders(pairs).items())
    ]
    return [job for job in todo if not job[2].exists()]


def _score_chunks(
    config: RerankConfig,
    todo: list[tuple[Location, Location, Location]],
    prepared: Location | None,
    attempt: Attempt,
    progress: Progress,
) -> dict[str, Any]:
    """Score the chunks of ``todo`` on a fixed pool of scorer actors; returns how many it scored and where the
    actors ran. Stops when a result could not be published: another job took the output."""
    if not todo:
        return {"chunks": 0, "actors": []}
    pool = _model_pool(config)
    size = min(pool.concurrency or 1, len(todo))
    # A scorer that dies (a lost node, a killed process) is restarted and its chunk scored again: a chunk's
    # result is written whole, and only by its one call, so a retried call writes the same file.
    actor = ChunkScorer.options(
        num_cpus=pool.num_cpus,
        num_gpus=pool.num_gpus or None,
        max_restarts=ACTOR_RESTARTS,
        max_task_retries=-1,  # bounded by the restarts: a call is lost only with an actor that stays dead
    )
    actors = [actor.remote(config.scorer, prepared) for _ in range(size)]
    placements = ray.get([a.placement.remote() for a in actors])
    actor_pool = ray.util.ActorPool(actors)
    if config.chunks < BLOCKS_PER_ACTOR * (pool.concurrency or 1):  # a chunk is one actor's work
        log.warning(
            "chunks: %d for %d scorer actors leaves some idle at times; %d or more keeps every one busy",
            config.chunks,
            pool.concurrency,
            BLOCKS_PER_ACTOR * (pool.concurrency or 1),
        )
    with progress as bar:
        task = bar.add_task(f"scoring {len(todo)} chunks on {size} actor(s)", total=len(todo))
        for published in actor_pool.map_unordered(lambda a, job: a.score.remote(*job, attempt), todo):
            if not published:
                raise OutputStateError(
                    f"a rerank into {config.output.path}: stopped, another job took the lease {attempt.lease}"
                )
            bar.advance(task)
    return {"chunks": len(todo), "actors": placements}


# ---------------------------------------------------------------- step 3: runs and metrics


def _reranked_rows(
    name: str, scores: Location, fusion: FusionConfig | None = None
) -> Iterator[tuple[str, list[str], list[float]]]:
    """Per query of run ``name``, chunk by chunk: docids and scores (fused with the run's own where ``fusion``
    says so), best first, unscorable pairs last."""
    for file in scores.files(".parquet"):
        table = file.read_table()
        table = table.filter(pc.equal(table["run"], name))
        if not table.num_rows:
            continue
        if fusion is not None and "score" not in table.column_names:
            raise OutputStateError(f"{file.uri}: scored before fusion existed; rerun with --restart to fuse")
        table = table.sort_by([("qid", "ascending"), ("rank", "ascending")])
        qids = table["qid"].to_numpy(zero_copy_only=False)
        starts = np.flatnonzero(run_starts(qids))
        docids = np.array(table["docid"].to_pylist(), dtype=object)
        ranks = table["rank"].to_numpy().astype(np.float64)
        first = table["score"].to_numpy() if fusion is not None else None
        values = np.nan_to_num(table["rerank_score"].to_numpy(zero_copy_only=False), nan=-np.inf)
        for begin, end in zip(starts, [*starts[1:], len(qids)], strict=True):
            mine = values[begin:end].copy()
            scorable = np.isfinite(mine)
            if fusion is not None and scorable.any():
                mine[scorable] = fuse(mine[scorable], ranks[begin:end][scorable], first[begin:end][scorable], fusion)
            order = np.lexsort((ranks[begin:end], -mine))  # best first, ties and unscorable in the run's order
            yield str(qids[begin]), docids[begin:end][order].tolist(), _finite_scores(mine[order])


def _finite_scores(values: np.ndarray) -> list[float]:
    """Unscorable pairs (score -inf) get scores below the query's lowest real one, in their input order."""
    finite = values[np.isfinite(values)]
    floor = (finite.min() if len(finite) else 0.0) - 1.0
    out = values.astype(np.float64).copy()
    missing = ~np.isfinite(out)
    out[missing] = floor - np.arange(int(missing.sum()))
    return out.tolist()


def _write_run(config: RerankConfig, uri: str, scores: Location) -> dict[str, Any]:
    name = run_name(uri)
    out = config.at(config.output.path).join(f"{name}.run")
    lines = 0

    def write(handle: Any) -> None:
        nonlocal lines
        tag = f"shardflow-{config.scorer.kind}" + (f"+{config.fusion.method}" if config.fusion else "")
        for qid, docids, values in _reranked_rows(name, scores, config.fusion):
            chunk = run_lines(qid, docids, values, tag)
            handle.write("".join(chunk).encode())
            lines += len(chunk)

    out.write_atomic(write)
    facts: dict[str, Any] = {"path": out.uri, "lines": lines}
    if config.qrels:
        facts["metrics"] = metrics(config, config.at(uri), out)
        config.at(config.output.path).join(f"{name}.metrics.json").put_bytes(
            json.dumps(facts["metrics"], indent=2).encode()
        )
    return facts


def metrics(config: RerankConfig, before: Location, after: Location) -> dict[str, dict[str, float]]:
    """nDCG@10, RR@10, R@100 (ir-measures) of the input run's top_k and of the reranked run."""
    import ir_measures

    measures = [ir_measures.parse_measure(name) for name in MEASURES]
    qrels = list(_read_qrels(config.at(config.qrels)))
    found = {}
    for label, run, top_k in (("before", before, config.top_k), ("after", after, None)):
        values = ir_measures.calc_aggregate(measures, qrels, _read_scored(run, top_k))
        found[label] = {str(measure): round(float(values[measure]), 6) for measure in measures}
    return found


def _read_scored(run: Location, top_k: int | None) -> Iterator[Any]:
    from ir_measures import ScoredDoc

    fs, path = run.filesystem()
    with fs.open(path, "rt", compression="infer") as handle:
        for line in handle:
            fields = line.split()
            if len(fields) == 6 and (top_k is None or int(fields[3]) <= top_k):
                yield ScoredDoc(fields[0], fields[2], float(fields[4]))


def _read_qrels(qrels: Location) -> Iterator[Any]:
    from ir_measures import Qrel

    uri = qrels.uri
    fs, path = qrels.filesystem()
    with fs.open(path, "rt", compression="infer") as handle:
        for number, line in enumerate(handle, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 4:
                raise InputError(f"{uri}:{number}: not a qrels line (qid 0 docid relevance): {line[:120]!r}")
            yield Qrel(fields[0], fields[2], int(fields[3]))
