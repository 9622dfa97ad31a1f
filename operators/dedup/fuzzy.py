"""Fuzzy dedup: one document per group of near-duplicates, across all shards, restartable and incremental.

A global stage: a plan of steps runs before the streaming DAG, each writing parquet and a finished marker
under ``OUTPUT/_staging/<fingerprint>/fuzzy_dedup/`` (a failed run restarts from the last finished step):

1. ``signatures``: every document as the stages before this one leave it (``sees = "upstream"``: documents
   that language ID or exact dedup drop take no part) gets its MinHash band keys (``minhash.py``) and a node
   id: ``shard ordinal << 32 | line``, which orders documents by input.
2. ``edges``: LSH. Band keys are shuffled by key with Ray Data; inside a bucket every member is linked to
   the bucket's smallest node (star edges, not all pairs).
3. ``verified`` (only with ``verify_threshold``): each candidate pair's true Jaccard similarity, from the
   shingle sets that step 1 kept, removes LSH's false positives.
4. ``resolved``: distributed connected components (``components.py``); each component keeps its smallest
   node, the earliest document in input order. Duplicates are written as ``(shard, line, dup_cluster)``
   for the ``fuzzy_dedup`` lookup operator, and the run's band index (below) beside them.

Incremental runs. The output keeps ``dedup_index/``: ``bands/band=NNN/`` (``key, root`` for every bucket of
every document, ``root`` being its component's kept node), ``nodes/`` (``node, doc_id`` of kept documents)
and ``index.json`` (MinHash parameters, the shards indexed and their ordinals). With ``index_from`` a later
run numbers its shards after the indexed ones and adds the index's buckets to its own LSH step, so a new
document that matches an old bucket joins that bucket's component, whose kept document is old: new
documents are deduplicated against the old corpus and among themselves, and no old document is touched.
The run's output index holds this run's buckets and lists the old index's folders as its earlier ``parts``
(nothing is copied, so a corpus grown over many nights costs no more per night to index).
"""

from __future__ import annotations

import time
from functools import cached_property, partial
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from pydantic import Field

from shardflow.arrays import first_of_run, run_starts
from shardflow.config import Resources
from shardflow.errors import ConfigError
from shardflow.operators.base import GlobalStage, OperatorSpec, RunContext, in_play
from shardflow.operators.dedup.components import (
    DIRECTED_SCHEMA,
    EDGES_SCHEMA,
    connected_components,
    edge_table,
    scatter_edges,
)
from shardflow.operators.dedup.exchange import Pieces, concat, lookup, piece, scatter
from shardflow.operators.dedup.index import checked_index, index_parts, read_index_manifest, write_index_manifest
from shardflow.operators.dedup.keys import LINE_BITS, node_ids
from shardflow.operators.dedup.lookup import DUPLICATES_SCHEMA, DuplicateLookup
from shardflow.operators.dedup.minhash import MinHasher, MinHashParams, shingle, unspaced
from shardflow.operators.dedup.shuffle import by_partition, split
from shardflow.schema import DOC_ID, LANG, SOURCE, TEXT
from shardflow.shards import shard_key
from shardflow.steps import DONE, finished, mark_finished, read_step, step_facts, step_files, write_step
from shardflow.storage import Location

__all__ = ["FuzzyDedup", "FuzzyDedupConfig"]

INDEX_FORMAT = "shardflow-dedup-index/1"
SIGN_BATCH_ROWS = 4096  # documents hashed at once: numpy's fixed costs are small, its arrays stay in cache
KEY_ROWS_SCHEMA = pa.schema([("key", pa.uint64()), ("node", pa.int64())])
INDEX_BANDS_SCHEMA = pa.schema([("key", pa.uint64()), ("root", pa.int64())])
NODES_SCHEMA = pa.schema([("node", pa.int64()), (DOC_ID, pa.string())])
SHINGLES_SCHEMA = pa.schema([("node", pa.int64()), ("shingles", pa.large_list(pa.uint64()))])
ATTACHED_SCHEMA = pa.schema([*EDGES_SCHEMA, ("node_shingles", pa.large_list(pa.uint64()))])
DUPLICATES = "duplicates"  # the plan's result, the folder the lookup operator reads


def _signature_schema(bands: int, shingles: bool = False) -> pa.Schema:
    """What the signature step writes: node, doc id, one key per band (and the shingle set, to verify)."""
    fields = [("node", pa.int64()), (DOC_ID, pa.string()), ("keys", pa.list_(pa.uint64(), bands))]
    return pa.schema(fields + [("shingles", pa.large_list(pa.uint64()))] if shingles else fields)


class FuzzyDedupConfig(MinHashParams):
    """A ``fuzzy_dedup`` stage: MinHash parameters plus how to run the plan."""

    op: Literal["fuzzy_dedup"] = "fuzzy_dedup"
    verify_threshold: float | None = Field(
        None, gt=0, le=1, description="Keep only candidate pairs whose true Jaccard similarity reaches this."
    )
    index_from: str | None = Field(
        None, description="The dedup_index/ of an earlier output: dedup new documents against it (incremental)."
    )
    partitions: int = Field(8, ge=2, description="Pieces of each shuffle; more for bigger corpora.")
    resources: Resources = Resources()

    @property
    def params(self) -> MinHashParams:
        return MinHashParams(**{name: getattr(self, name) for name in MinHashParams.model_fields})


def _document_langs(docs: pa.Table) -> list[str | None]:
    """The label that picks word or character shingles: ``lang`` from language ID, else the source's own."""
    if LANG in docs.column_names:
        return docs[LANG].to_pylist()
    return pc.list_element(pc.fill_null(docs["source_lang"], pa.scalar([None], pa.list_(pa.string()))), 0).to_pylist()


def _sign(batch: pa.Table, params: MinHashParams, ordinals: dict[str, int], keep_shingles: bool) -> pa.Table:
    """``(node, doc_id, keys[, shingles])`` for the batch's documents in play that have any shingle.

    Works through the batch in slices: Ray hands a fused read task's output over in blocks of up to
    128 MiB, and numpy's arrays for that many documents would not stay in cache (measured 2x slower). A
    ``batch_size`` would do the slicing but stop Ray from fusing this map with the read.
    """
    docs = batch.filter(pa.array(in_play(batch)))
    hasher = MinHasher(params)
    slices = [docs.slice(start, SIGN_BATCH_ROWS) for start in range(0, docs.num_rows, SIGN_BATCH_ROWS)]
    signed = [_sign_slice(part, hasher, ordinals, keep_shingles) for part in slices]
    return pa.concat_tables(signed) if signed else _sign_slice(docs, hasher, ordinals, keep_shingles)


def _sign_slice(docs: pa.Table, hasher: MinHasher, ordinals: dict[str, int], keep_shingles: bool) -> pa.Table:
    params = hasher.params
    shingles = shingle(docs[TEXT].combine_chunks(), unspaced(_document_langs(docs)), params)
    signatures, has = hasher.signatures(shingles, docs.num_rows)
    keys = hasher.band_keys(signatures)
    columns: dict[str, Any] = {
        "node": pa.array(node_ids(docs[SOURCE], ordinals), pa.int64()),
        DOC_ID: docs[DOC_ID],
        "keys": pa.FixedSizeListArray.from_arrays(pa.array(keys.ravel(), pa.uint64()), params.bands),
    }
    if keep_shingles:
        columns["shingles"] = _shingle_sets(shingles.hashes, shingles.owner, docs.num_rows)
    return pa.table(columns).filter(pa.array(has))


def _shingle_sets(hashes: np.ndarray, owner: np.ndarray, num_docs: int) -> pa.Array:
    """Each document's distinct shingle hashes, sorted, as a list column."""
    order = np.lexsort((hashes, owner))
    hashes, owner = hashes[order], owner[order]
    distinct = run_starts(owner) | run_starts(hashes)
    hashes, owner = hashes[distinct], owner[distinct]
    offsets = np.searchsorted(owner, np.arange(num_docs + 1))
    return pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), pa.array(hashes, pa.uint64()))


def _key_rows(batch: pa.Table) -> pa.Table:
    """One ``(key, node)`` row per band of each document."""
    keys = batch["keys"].combine_chunks()
    bands = keys.type.list_size
    return pa.table({"key": keys.flatten(), "node": np.repeat(batch["node"].to_numpy(), bands)}, schema=KEY_ROWS_SCHEMA)


def _bucket_edges(rows: pa.Table) -> pa.Table:
    """Star edges inside each bucket (rows with one key): every member to the smallest node."""
    key, node = rows["key"].to_numpy(), rows["node"].to_numpy()
    order = np.lexsort((node, key))
    key, node = key[order], node[order]
    root = node[first_of_run(run_starts(key))]
    linked = node != root
    return edge_table(node[linked], root[linked])


class FuzzyDedup(GlobalStage):
    """Drops all but the earliest document of each group of near-duplicates: the global steps of one
    ``fuzzy_dedup`` stage, where they write, and what they were computed from."""

    name = "fuzzy_dedup"
    sees = "upstream"
    index = "dedup_index"

    def __init__(self, config: FuzzyDedupConfig, run: RunContext, key: str) -> None:
        super().__init__(config, run, key)
        self.index_folder = run.staging.join(self.index)
        self.index_from = run.staging.at(config.index_from) if config.index_from else None
        self.inputs = {"shards": [[s.uri, s.version] for s in run.shards], "index_from": config.index_from}
        self.ran: list[str] = []  # the steps this attempt ran (the others were finished before)
        self.seconds: dict[str, float] = {}

    def check(self) -> None:
        """An ``index_from`` must exist, use the same MinHash parameters and not cover the new shards."""
        if self.index_from is None:
            return
        old = checked_index(self.index_from, self.key, "dedup", self.run.shards)
        if old.get("params") != self.config.params.model_dump():
            raise ConfigError(
                f"config error: {self.key}: the MinHash parameters differ from those of the index at "
                f"{self.index_from} ({old.get('params')}); band keys would never match"
            )

    @cached_property
    def old(self) -> dict[str, Any] | None:
        """The manifest of the index this run continues, if any."""
        return read_index_manifest(self.index_from) if self.index_from else None

    @property
    def old_parts(self) -> list[Location]:
        return index_parts(self.index_from, self.old) if self.index_from and self.old else []

    @property
    def offset(self) -> int:
        """The first shard ordinal of this run: after the shards of the index it continues."""
        return self.old["next_ordinal"] if self.old else 0

    @property
    def ordinals(self) -> dict[str, int]:
        return self.run.ordinals(self.offset)

    def path(self, step: str) -> Location:
        return self.folder.join(step)

    @property
    def duplicates(self) -> Location:
        return self.path(DUPLICATES)

    @property
    def edges(self) -> Location:
        return self.path("edges" if self.config.verify_threshold is None else "verified")

    def prepare(self, documents: ray.data.Dataset) -> None:
        """Run the steps not yet finished; ``documents`` are the rows after the earlier stages."""
        steps = [("signatures", partial(self.sign, documents)), ("edges", self.find_edges)]
        if self.config.verify_threshold is not None:
            steps.append(("verified", self.verify))
        steps.append(("resolved", self.resolve))
        for name, run in steps:
            if not finished(self.path(name), self.inputs):
                self.ran.append(name)
                started = time.perf_counter()
                run()
                self.seconds[name] = round(time.perf_counter() - started, 3)

    def sign(self, documents: ray.data.Dataset) -> None:
        keep = self.config.verify_threshold is not None
        signed = documents.map_batches(
            _sign,
            batch_format="pyarrow",
            fn_kwargs={"params": self.config.params, "ordinals": self.ordinals, "keep_shingles": keep},
        )
        write_step(signed, self.path("signatures"))
        mark_finished(self.path("signatures"), self.inputs)

    def find_edges(self) -> None:
        rows = read_step(
            self.path("signatures"), _signature_schema(self.config.bands, self.config.verify_threshold is not None)
        ).map_batches(_key_rows, batch_format="pyarrow")
        if self.old:
            old = read_step([part.join("bands") for part in self.old_parts], INDEX_BANDS_SCHEMA)
            rows = rows.union(old.map_batches(_index_rows, batch_format="pyarrow"))
        edges = by_partition(rows, "key", _bucket_edges, self.config.partitions)
        write_step(edges, self.path("edges"))
        mark_finished(self.path("edges"), self.inputs)

    def scatter_signatures(self, columns: list[str]) -> Pieces:
        return scatter(step_files(self.path("signatures")), columns, "node", self.config.partitions)

    def verify(self) -> None:
        """Two exchanges: attach each edge's node shingles (pieces by node), then its root's (pieces by root)."""
        partitions = self.config.partitions
        shingles = self.scatter_signatures(["node", "shingles"])
        edges = scatter(step_files(self.path("edges")), ["node", "root"], "node", partitions)
        attached = [
            _attach_shingles.options(num_returns=partitions).remote(
                partitions, len(edges), *piece(edges, j), *piece(shingles, j)
            )
            for j in range(partitions)
        ]
        kept = [
            _verify_piece.remote(
                self.path("verified").join(f"part-{j:05d}.parquet"),
                self.config.verify_threshold,
                len(attached),
                *piece(attached, j),
                *piece(shingles, j),
            )
            for j in range(partitions)
        ]
        checked = np.sum(ray.get(kept), axis=0)
        mark_finished(self.path("verified"), self.inputs, candidates=int(checked[0]), verified=int(checked[1]))

    def resolve(self) -> None:
        started = time.perf_counter()
        partitions = self.config.partitions
        for folder in (self.duplicates, self.index_folder):  # what an interrupted attempt left
            folder.remove()
        stars = connected_components(scatter_edges(step_files(self.edges), partitions), partitions)
        signatures = self.scatter_signatures(["node", DOC_ID, "keys"])
        old_nodes = (
            scatter(step_files([part.join("nodes") for part in self.old_parts]), ["node", DOC_ID], "node", partitions)
            if self.old
            else [[pa.table({"node": pa.array([], pa.int64())})] * partitions]
        )
        shard_keys = [shard_key(shard.uri) for shard in self.run.shards]
        tasks = [
            _resolve_piece.remote(
                self.resolved_paths(j),
                self.offset,
                shard_keys,
                self.config.bands,
                (len(stars), len(signatures)),
                *piece(stars, j),
                *piece(signatures, j),
                *piece(old_nodes, j),
            )
            for j in range(partitions)
        ]
        counts = np.sum(ray.get(tasks), axis=0)
        self.write_index_manifest()
        mark_finished(
            self.path("resolved"),
            self.inputs,
            duplicates=int(counts[0]),
            components=int(counts[1]),
            bridged=int(counts[2]),
            documents=int(counts[3]),
            steps_run=self.ran,
            seconds=self.seconds | {"resolved": round(time.perf_counter() - started, 3)},
        )

    def resolved_paths(self, j: int) -> dict[str, Any]:
        return {
            "duplicates": self.duplicates,
            "bands": self.index_folder.join("bands"),
            "nodes": self.index_folder.join("nodes"),
            "name": f"run{self.offset:010d}-part-{j:05d}.parquet",
        }

    def write_index_manifest(self) -> None:
        """The output's index: this run's files, the old index's parts by reference, and what it covers."""
        ordinals = self.ordinals
        shards = [{"uri": s.uri, "version": s.version, "ordinal": ordinals[s.uri]} for s in self.run.shards]
        manifest = {
            "format": INDEX_FORMAT,
            "params": self.config.params.model_dump(),
            "next_ordinal": self.offset + len(self.run.shards),
            "shards": (self.old["shards"] if self.old else []) + shards,
            "parts": [*(part.uri for part in self.old_parts), "."],
        }
        write_index_manifest(self.index_folder, manifest)

    def operator(self) -> OperatorSpec:
        arguments = {"name": self.name, "table": self.duplicates}
        return OperatorSpec(f"{self.run.attempt}:{self.key}", DuplicateLookup, arguments, None, lookup=True)

    def facts(self) -> dict[str, Any]:
        """What the plan found (duplicates, components, verification, steps run) and the index files."""
        found = step_facts(self.path("resolved"))
        if self.path("verified").join(DONE).exists():
            found |= step_facts(self.path("verified"))
        found.pop("inputs")
        files = self.run.output.artifact_files(self.index)
        return {self.name: found, self.index: {"path": self.index, "files": files}}


def _index_rows(batch: pa.Table) -> pa.Table:
    """The old index's buckets as LSH rows: each bucket's kept node stands for all its members."""
    return pa.table({"key": batch["key"], "node": batch["root"]}, schema=KEY_ROWS_SCHEMA)


@ray.remote
def _attach_shingles(partitions: int, num_edges: int, *pieces: pa.Table) -> tuple[pa.Table, ...]:
    edges = concat(pieces[:num_edges], EDGES_SCHEMA)
    shingles = concat(pieces[num_edges:], SHINGLES_SCHEMA)
    rows, found = lookup(edges["node"].to_numpy(), shingles, "node")
    attached = edges.filter(pa.array(found)).append_column("node_shingles", shingles["shingles"].take(rows[found]))
    return tuple(split(attached, "root", partitions))


@ray.remote
def _verify_piece(out: Location, threshold: float, num_edges: int, *pieces: pa.Table) -> tuple:
    edges = concat(pieces[:num_edges], ATTACHED_SCHEMA)
    shingles = concat(pieces[num_edges:], SHINGLES_SCHEMA)
    rows, found = lookup(edges["root"].to_numpy(), shingles, "node")
    keep = ~found  # a root from the index has no shingles here: its edge stands unverified
    node_sets = edges["node_shingles"].to_pylist()
    root_sets = shingles["shingles"].take(rows).to_pylist() if shingles.num_rows else [None] * len(rows)
    for i in np.flatnonzero(found):
        a, b = np.asarray(node_sets[i], np.uint64), np.asarray(root_sets[i], np.uint64)
        common = len(np.intersect1d(a, b, assume_unique=True))
        keep[i] = common >= threshold * (len(a) + len(b) - common)
    out.write_table(edges.filter(pa.array(keep)).select(["node", "root"]))
    return (edges.num_rows, int(keep.sum()))


@ray.remote
def _resolve_piece(
    paths: dict[str, Any],
    offset: int,
    shard_keys: list[str],
    bands: int,
    sizes: tuple[int, int],
    *pieces: pa.Table,
) -> tuple[int, int, int, int]:
    """One piece of the final exchange: the star edges, signatures and old kept nodes of the nodes that hash
    here. Writes the duplicates of the roots that hash here, and this piece's share of the band index."""
    stars = concat(pieces[: sizes[0]], DIRECTED_SCHEMA)
    signatures = concat(pieces[sizes[0] : sizes[0] + sizes[1]], _signature_schema(bands))
    old_nodes = concat(pieces[sizes[0] + sizes[1] :], NODES_SCHEMA)
    u, v = stars["u"].to_numpy(), stars["v"].to_numpy()
    known = pa.concat_tables([signatures.select(["node", DOC_ID]), old_nodes])
    duplicates = _duplicates(u, v, known, offset, shard_keys)
    for shard in np.unique(duplicates["shard"].to_numpy(zero_copy_only=False)):
        part = duplicates.filter(pc.equal(duplicates["shard"], shard)).drop_columns(["shard"])
        paths["duplicates"].join(f"shard={shard}", paths["name"]).write_table(part)
    _write_index_share(signatures, u, v, bands, paths)
    bridged = int(((u > v) & (u < offset << LINE_BITS)).sum())  # old nodes that found an older root
    components = pc.count_distinct(duplicates["dup_cluster"]).as_py()  # each root hashes to one piece
    return duplicates.num_rows, components, bridged, signatures.num_rows


def _duplicates(u: np.ndarray, v: np.ndarray, known: pa.Table, offset: int, shard_keys: list[str]) -> pa.Table:
    """``(shard, line, dup_cluster)`` for the members ``v`` of this run of the components whose root ``u``
    hashes here, ``dup_cluster`` being the root's ``doc_id`` (from this run's signatures or the old index)."""
    members = (u < v) & (v >= offset << LINE_BITS)
    roots, member = u[members], v[members]
    rows, found = lookup(roots, known, "node")
    if not found.all():
        raise RuntimeError(f"{int((~found).sum())} component roots have no document id")
    return pa.table(
        {
            "shard": pa.array(np.asarray(shard_keys, dtype=object)[(member >> LINE_BITS) - offset], pa.string()),
            "line": pa.array(member & ((1 << LINE_BITS) - 1), pa.int64()),
            "dup_cluster": known[DOC_ID].take(pa.array(rows)),
        },
        schema=DUPLICATES_SCHEMA,
    )


def _write_index_share(signatures: pa.Table, u: np.ndarray, v: np.ndarray, bands: int, paths: dict[str, Any]) -> None:
    """Every band key of this piece's nodes with the node's root, and the kept nodes with their ids."""
    nodes = signatures["node"].to_numpy()
    linked = u > v  # rows saying node u has root v
    rows, found = lookup(nodes, pa.table({"u": u[linked]}), "u")
    root = np.where(found, v[linked][rows] if linked.any() else nodes, nodes)
    keys = signatures["keys"].combine_chunks().flatten().to_numpy().reshape(len(nodes), bands)
    for band in range(bands):  # a bucket's members share a root: one row per key is enough
        band_keys, first = np.unique(keys[:, band], return_index=True)
        table = pa.table({"key": pa.array(band_keys, pa.uint64()), "root": pa.array(root[first], pa.int64())})
        paths["bands"].join(f"band={band:03d}", paths["name"]).write_table(table)
    paths["nodes"].join(paths["name"]).write_table(signatures.filter(pa.array(~found)).select(["node", DOC_ID]))
