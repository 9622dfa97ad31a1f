"""``shardflow search``: queries -> the dense index -> a TREC run.

Queries are embedded with the encoder settings the index was built with (``index.json``: model, preset,
prompts, max length, dimensions), with the query prompt, so they land in the same space as the passages.
Searching runs in this process: FAISS uses every core for a batch of queries, and a million-vector index
answers thousands of queries in seconds; the encoder is the slow part.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.progress import Progress

from shardflow.errors import InputError
from shardflow.operators.embed import EmbedConfig, TextEncoder
from shardflow.operators.index import CARD_FILE, DenseIndex, read_index_card
from shardflow.pipelines.refresh import current_version
from shardflow.storage import Location, StorageConfig
from shardflow.trec import read_queries, run_lines

__all__ = ["SearchRequest", "search"]

QUERY_BATCH = 256


@dataclass(frozen=True)
class SearchRequest:
    index: str
    queries: str
    out: str
    k: int = 100
    nprobe: int | None = None
    model: str | None = None
    tag: str = "shardflow"


def index_folder(path: Location) -> Location:
    """``path`` itself, the ``index/`` of the corpus output it names, or the current version's index of the
    refreshed corpus it names."""
    if path.join(CARD_FILE).exists():
        return path
    if path.join("index", CARD_FILE).exists():
        return path.join("index")
    record = current_version(path)
    if record is not None and record.get("index"):
        return path.join(record["index"]["path"])
    return path


def search(request: SearchRequest, storage: StorageConfig, progress: bool = True) -> dict[str, object]:
    """Write the run; returns what was searched (queries, k, the index's factory and size)."""
    folder = index_folder(Location(request.index, storage))
    card = read_index_card(folder)
    if not card.get("vectors"):
        raise InputError(f"{folder}: the index is empty (the corpus kept no documents)")
    if card.get("encoder") is None:
        raise InputError(f"{folder}/{CARD_FILE}: records no encoder; it was not built by a corpus run")
    queries = read_queries(Location(request.queries, storage))
    encoder_config = EmbedConfig(**card["encoder"])
    if request.model:
        encoder_config = encoder_config.model_copy(update={"model": request.model})
    encoder = TextEncoder(encoder_config)
    index = DenseIndex(folder, request.nprobe or int(card["nprobe"]))
    lines: list[str] = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("searching", total=len(queries))
        for start in range(0, len(queries), QUERY_BATCH):
            batch = queries[start : start + QUERY_BATCH]
            vectors = encoder.encode([text for _, text in batch], "query")
            scores, docids = index.search(vectors, request.k)
            for (qid, _), row_ids, row_scores in zip(batch, docids, scores, strict=True):
                lines.extend(run_lines(qid, row_ids, row_scores[: len(row_ids)], request.tag))
            bar.advance(task, len(batch))
    Location(request.out, storage).write_atomic(lambda handle: handle.write("".join(lines).encode()))
    return {
        "queries": len(queries),
        "k": request.k,
        "lines": len(lines),
        "factory": card["factory"],
        "index": folder.uri,
    }
