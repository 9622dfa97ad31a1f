"""The dense index: FAISS, chosen by a factory string or by corpus size and a memory budget.

Build plan: the driver reads only the files' row counts; Ray tasks sample the vectors in parallel and one
trains the index; Ray tasks add the vectors in parallel, one per group of input files, each holding a copy of the
trained empty index; one task merges the parts and writes ``index.faiss`` and ``ids.parquet`` (FAISS id ->
``doc_id``) to the output folder, local or S3. Ids are assigned per input file from the files' row counts,
so any order of the add tasks builds the same index. HNSW indexes cannot be merged in FAISS: they are built
in one task.

``auto`` follows autofaiss's reasoning: exact search (``Flat``) while the corpus is small; an inverted
file with about ``4 * sqrt(n)`` lists (a power of two) above that, storing vectors as they are
(``IVFn,Flat``) if they fit the memory budget, else compressed by product quantisation with the largest
code that fits (``IVFn,PQm``).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import ray
from pydantic import Field, field_validator

from shardflow.config import StrictModel
from shardflow.errors import ConfigError, InputError, ShardflowError
from shardflow.operators.embed import EMBEDDING, EmbedConfig
from shardflow.schema import DOC_ID
from shardflow.storage import Location

__all__ = ["DenseIndex", "IndexConfig", "build_index", "choose_factory", "read_index_card", "write_index_card"]

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
CARD_FILE = "index.json"  # what the index holds and how its vectors were made: search embeds queries the same way
CARD_FORMAT = "shardflow-dense-index/1"
SMALL = 20_000  # below this many vectors exact search is fast enough
PQ_CODES = (64, 48, 32, 24, 16, 12, 8, 4)
PARSE_DIM = 20_160  # divisible by 1-10, 12, 14-16, 32, 48, 64: any sub-quantizer count a user may write


class IndexConfig(StrictModel):
    """How the dense index is built and searched."""

    factory: str = Field("auto", description="A FAISS factory string (Flat, HNSW32, IVF4096,PQ32, ...) or auto.")
    metric: Literal["inner_product", "l2"] = Field(
        "inner_product", description="inner_product for L2-normalised vectors."
    )
    memory_budget_mb: int = Field(4096, ge=1, description="What auto may give the index.")
    train_vectors: int = Field(100_000, ge=1, description="Vectors sampled to train IVF and PQ.")
    nprobe: int = Field(32, ge=1, description="Inverted lists searched per query (IVF indexes).")
    partitions: int | None = Field(
        None, ge=1, description="Parallel sample and add tasks; None: one per CPU of the cluster."
    )

    @field_validator("factory")
    @classmethod
    def _faiss_parses_it(cls, factory: str) -> str:
        """A typo fails here, not after the whole corpus is embedded. The dimension is not known yet: one
        with many divisors stands in, so only what FAISS cannot parse is rejected now."""
        import faiss

        if factory != "auto":
            try:
                faiss.index_factory(PARSE_DIM, factory)
            except RuntimeError as err:
                if "could not parse" in str(err):
                    raise ValueError(f"FAISS cannot parse the factory string {factory!r}") from None
        return factory


def choose_factory(count: int, dim: int, memory_budget_bytes: int) -> str:
    """The factory string ``auto`` picks for ``count`` vectors of ``dim`` dimensions."""
    if count < SMALL:
        return "Flat"
    lists = 2 ** round(math.log2(4 * math.sqrt(count)))
    if count * (dim * 4 + 8) <= memory_budget_bytes:
        return f"IVF{lists},Flat"
    for code in PQ_CODES:
        if dim % code == 0 and count * (code + 8) <= memory_budget_bytes:
            return f"IVF{lists},PQ{code}"
    raise ConfigError(
        f"config error: index.memory_budget_mb: {count:,} vectors do not fit even as IVF,PQ{PQ_CODES[-1]}; "
        "raise the budget or give a factory string"
    )


def _metric(name: str) -> int:
    import faiss

    return faiss.METRIC_INNER_PRODUCT if name == "inner_product" else faiss.METRIC_L2


def empty_index(factory: str, dim: int, metric: str, sample: np.ndarray):
    """A trained index without vectors; ``IndexIDMap2`` around the kinds that keep no ids of their own."""
    import faiss

    index = faiss.index_factory(dim, factory, _metric(metric))
    if not index.is_trained:
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    if not isinstance(faiss.try_extract_index_ivf(index), faiss.IndexIVF):
        index = faiss.IndexIDMap2(index)
    return index


def mergeable(factory: str) -> bool:
    return "HNSW" not in factory.upper()


def vectors_of(table: pa.Table) -> np.ndarray:
    column = table[EMBEDDING].combine_chunks()
    dim = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(column), dim)


@ray.remote
def _add_files(index_bytes: np.ndarray, files: list[Location], first_ids: list[int], threads: int = 1) -> np.ndarray:
    """Add the vectors of ``files`` (ids from ``first_ids``) to a copy of the trained index."""
    import faiss

    faiss.omp_set_num_threads(threads)
    index = faiss.deserialize_index(index_bytes)
    for file, first in zip(files, first_ids, strict=True):
        table = file.read_table([EMBEDDING])
        index.add_with_ids(vectors_of(table), np.arange(first, first + table.num_rows, dtype=np.int64))
    return faiss.serialize_index(index)


@ray.remote
def _merge_and_write(out: Location, *parts: np.ndarray) -> int:
    import faiss

    index = faiss.deserialize_index(parts[0])
    for part in parts[1:]:
        index.merge_from(faiss.deserialize_index(part), 0)
    out.join(INDEX_FILE).write_atomic(lambda handle: faiss.write_index(index, faiss.PyCallbackIOWriter(handle.write)))
    return int(index.ntotal)


@ray.remote
def _write_ids(files: list[Location], first_ids: list[int], out: Location, base: Location | None) -> None:
    tables = [base.join(IDS_FILE).read_table()] if base else []
    for file, first in zip(files, first_ids, strict=True):
        ids = file.read_table([DOC_ID])[DOC_ID]
        tables.append(pa.table({"id": pa.array(np.arange(first, first + len(ids)), pa.int64()), DOC_ID: ids}))
    out.join(IDS_FILE).write_table(pa.concat_tables(tables))


def _read_faiss(folder: Location):
    """The index in ``folder``, streamed from its file (local or S3): no second copy of it in memory."""
    import faiss

    fs, path = folder.join(INDEX_FILE).filesystem()
    with fs.open(path, "rb") as handle:
        return faiss.read_index(faiss.PyCallbackIOReader(handle.read))


@ray.remote
def _read_index(folder: Location, emptied: bool) -> np.ndarray:
    """A built index, serialised; ``emptied``: its trained structure without vectors, to add new ones to."""
    import faiss

    index = _read_faiss(folder)
    if emptied:
        index.reset()
    return faiss.serialize_index(index)


def build_index(
    files: list[Location], out: Location, config: IndexConfig, base: Location | None = None
) -> dict[str, object]:
    """Index the ``embedding`` column of ``files`` (parquet) into ``out``; returns what was built.

    With ``base`` (a built index's folder) the vectors are added to a copy of that index, after its own,
    with its training: how a corpus refresh grows its index without retraining. The driver reads only the
    files' row counts; sampling, training, adding and merging run in Ray tasks."""
    counts = [file.parquet_rows() for file in files]
    card = read_index_card(base) if base else {"vectors": 0}
    first_ids = [card["vectors"] + int(before) for before in np.cumsum([0, *counts[:-1]])] if counts else []
    groups = config.partitions or int(ray.cluster_resources().get("CPU", 1))
    chunks = [(files[i::groups], first_ids[i::groups]) for i in range(groups) if files[i::groups]]
    threads = _node_cpus()  # training (k-means) and an HNSW build are multi-threaded: give them a whole node
    if base:
        factory, dim = card["factory"], card["dim"]
        trained = _read_index.remote(base, emptied=True)
    else:
        samples = [
            _sample.remote(files[i::groups], counts[i::groups], config.train_vectors, sum(counts))
            for i in range(len(chunks))
        ]
        trained, factory, dim = _train.options(num_returns=3, num_cpus=threads).remote(
            config, sum(counts), threads, *samples
        )
        factory, dim = _user_facing(factory), ray.get(dim)
    if mergeable(factory):
        parts = [_add_files.remote(trained, chunk, firsts) for chunk, firsts in chunks]
    else:
        parts = [_add_files.options(num_cpus=threads).remote(trained, files, first_ids, threads)]
    if base:
        parts = [_read_index.remote(base, emptied=False), *parts]
    ids = _write_ids.remote(files, first_ids, out, base)
    added = ray.get(_merge_and_write.remote(out, *parts))
    ray.get(ids)
    return {"factory": factory, "vectors": added, "dim": dim, "metric": config.metric}


def _user_facing(result: ray.ObjectRef) -> object:
    """A task's result; a ``ShardflowError`` it raised (the user's to fix) as the message alone, not a
    remote traceback."""
    try:
        return ray.get(result)
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, ShardflowError):
            raise err.cause from None
        raise


@ray.remote
def _sample(files: list[Location], counts: list[int], size: int, total: int) -> np.ndarray:
    """These files' share of a ``size``-vector training sample: rows spread evenly, in proportion to each
    file's rows (deterministic); read in parallel with the other shares."""
    picked = []
    for file, count in zip(files, counts, strict=True):
        take = min(count, math.ceil(size * count / max(total, 1)))
        if take:
            table = file.read_table([EMBEDDING])
            picked.append(vectors_of(table.take(pa.array(np.linspace(0, count - 1, take).astype(np.int64)))))
    return np.concatenate(picked) if picked else np.zeros((0, 0), dtype=np.float32)


@ray.remote
def _train(config: IndexConfig, count: int, threads: int, *samples: np.ndarray) -> tuple:
    """The trained, empty index (serialised), its factory string and the vectors' dimension."""
    import faiss

    faiss.omp_set_num_threads(threads)
    sample = np.concatenate([part for part in samples if part.size])
    if not len(sample):
        raise ConfigError("index: the corpus has no embeddings to index")
    dim = sample.shape[1]
    budget = config.memory_budget_mb << 20
    factory = config.factory if config.factory != "auto" else choose_factory(count, dim, budget)
    try:
        trained = empty_index(factory, dim, config.metric, sample)
    except RuntimeError as err:  # FAISS's message ends with what is wrong; the rest is its source location
        reason = str(err).splitlines()[0].rsplit("failed: ", 1)[-1].rsplit("Error: ", 1)[-1]
        raise ConfigError(
            f"config error: index.factory: FAISS cannot build {factory!r} for {len(sample):,} training vectors "
            f"of {dim} dimensions: {reason}"
        ) from None
    return faiss.serialize_index(trained), factory, dim


def _node_cpus() -> int:
    """The CPUs of the largest live node."""
    return max(int(node["Resources"].get("CPU", 1)) for node in ray.nodes() if node["Alive"])


def write_index_card(
    folder: Location, facts: dict[str, object], config: IndexConfig, encoder: EmbedConfig | None
) -> None:
    """``index.json``: the build facts, the search defaults and the encoder settings (not its resources)."""
    card = {
        "format": CARD_FORMAT,
        **facts,
        "nprobe": config.nprobe,
        "encoder": encoder.model_dump(mode="json", exclude={"resources", "op"}) if encoder else None,
    }
    folder.join(CARD_FILE).put_bytes(orjson.dumps(card, option=orjson.OPT_INDENT_2))


def read_index_card(folder: Location) -> dict[str, object]:
    card = folder.join(CARD_FILE).read_json()
    if card is None:
        raise InputError(f"{folder}: not a shardflow index (no {CARD_FILE})")
    if card.get("format") != CARD_FORMAT:
        raise InputError(f"{folder}/{CARD_FILE}: unknown format {card.get('format')!r} (expected {CARD_FORMAT})")
    return card


class DenseIndex:
    """A built index and its id map, loaded for search."""

    def __init__(self, folder: Location, nprobe: int = 32) -> None:
        import faiss

        self.index = _read_faiss(folder)
        ivf = faiss.try_extract_index_ivf(self.index)
        if ivf is not None:
            ivf.nprobe = nprobe
        ids = folder.join(IDS_FILE).read_table()
        order = pc.sort_indices(ids["id"])
        self.doc_ids = ids[DOC_ID].take(order).to_pylist()

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        scores, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, [[self.doc_ids[i] for i in row if i >= 0] for row in ids]
