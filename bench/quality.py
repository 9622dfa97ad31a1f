"""Benchmark: the quality stage in the pipeline vs the same datatrove filters in one plain Python process.

    python bench/quality.py [--data ../shared/data/hplt-v2-excerpts] [--repeat 3]

Documents: the HPLT v2 excerpts, each with HPLT's own language label as ``lang`` (so no language-ID run is
needed). Plain = one process building datatrove's four filters per language with the same thresholds and
tokenizers and calling ``filter`` on each document until one fails, the way a datatrove pipeline does.
Pipeline = ``map_batches(QualityFilter)`` on the actor pool ``shardflow run`` builds (actor start,
tokenizer loading included). Goal (issue 3): pipeline >= 0.9x plain docs/s.
"""

from __future__ import annotations

import os
import resource
import time
from functools import cache
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import ray
from common import arguments, start_ray
from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import get_filter_result

from shardflow.operators.quality import QualityConfig, filters_for, load_thresholds, word_tokenizer
from shardflow.operators.readers import ReaderConfig, shard_rows
from shardflow.pipelines.corpus import apply_stages
from shardflow.schema import LANGID_FIELDS, READ_SCHEMA
from shardflow.shards import list_shards
from shardflow.storage import Location, StorageConfig

SCHEMA = pa.schema(list(READ_SCHEMA) + LANGID_FIELDS)


def load_documents(folder: Path) -> pa.Table:
    config = ReaderConfig(paths=[str(folder)])
    rows = []
    for shard in list_shards([Location(path) for path in config.paths]):
        for row in shard_rows(shard, config):
            if row.get("quarantine_reason") is None:
                rows.append({**row, "lang": row["source_lang"][0], "lang_score": 1.0})
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    return table.filter(pc.is_null(table["quarantine_reason"]))


@cache
def plain_filters(lang: str) -> dict[str, object]:
    """The same filters and thresholds, each splitting words itself, as datatrove runs them."""
    return filters_for(load_thresholds(lang, None), lang, word_tokenizer(lang))


def plain_datatrove(docs: pa.Table) -> tuple[float, int]:
    started = time.perf_counter()
    dropped = 0
    for text, lang in zip(docs["text"].to_pylist(), docs["lang"].to_pylist(), strict=True):
        for rule in plain_filters(lang).values():
            passed, _ = get_filter_result(rule.filter(Document(text=text, id="")))
            if not passed:
                dropped += 1
                break
    return time.perf_counter() - started, dropped


def pipeline_stage(docs: pa.Table, actors: int) -> tuple[float, int]:
    blocks = [docs.slice(offset, 500) for offset in range(0, docs.num_rows, 500)]
    dataset = ray.data.from_arrow(blocks).materialize()
    stage = QualityConfig(
        filters=["gopher_repetition", "gopher_quality", "c4", "fineweb"],
        resources={"concurrency": actors, "num_cpus": 0.5, "batch_size": 500},
    )
    started = time.perf_counter()
    dropped = 0
    for batch in apply_stages(dataset, [stage], StorageConfig()).iter_batches(batch_size=None, batch_format="pyarrow"):
        dropped += batch.num_rows - batch["drop_reason"].null_count
    return time.perf_counter() - started, dropped


def main() -> None:
    args = arguments(__doc__, repeat=(int, 3, "timed runs of each; the best is reported"))
    docs = load_documents(args.data)
    print(f"{docs.num_rows:,} documents in {len(set(docs['lang'].to_pylist()))} languages; {os.cpu_count()} CPUs")

    plain, plain_dropped = min(plain_datatrove(docs) for _ in range(args.repeat))
    print(
        f"plain datatrove, 1 process  : {docs.num_rows / plain:8,.0f} docs/s  ({plain:.2f} s)  "
        f"{plain_dropped:,} dropped"
    )
    start_ray()
    for actors in (1, 2):
        seconds, dropped = min(pipeline_stage(docs, actors) for _ in range(args.repeat))
        assert dropped == plain_dropped, (dropped, plain_dropped)
        print(
            f"pipeline quality, {actors} actor(s): {docs.num_rows / seconds:8,.0f} docs/s  ({seconds:.2f} s)  "
            f"= {plain / seconds:.2f}x plain"
        )
    print(f"driver peak RSS             : {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")
    ray.shutdown()


if __name__ == "__main__":
    main()
