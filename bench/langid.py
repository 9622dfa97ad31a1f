"""Benchmark: the language-ID stage inside the Ray Data pipeline vs raw fastText on the same documents.

    python bench/langid.py [--data ../shared/data/hplt-v2-excerpts] [--repeat 3]

Raw = one Python process calling fastText's predict (k=3) on each document, the way a script would.
Pipeline = the same documents as Arrow blocks through ``map_batches(LanguageId)`` on the actor pool that
``shardflow run`` builds, timed from submission until every output block is in the object store (actor
start and model load included).
Also: the whole corpus job (read the .jsonl.zst shards, language ID, write parquet) end to end.
Goal (issue 2): pipeline stage >= 0.8x raw docs/s. Results go to bench/RESULTS.md by hand.
"""

from __future__ import annotations

import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import ray
from common import arguments, start_ray

from shardflow.config import validate
from shardflow.operators.langid import LangIdConfig, default_model_path
from shardflow.operators.readers import ReaderConfig, shard_rows
from shardflow.pipelines.corpus import CorpusConfig, apply_stages, run_corpus
from shardflow.schema import READ_SCHEMA
from shardflow.shards import list_shards
from shardflow.storage import Location, StorageConfig


def load_documents(folder: Path) -> pa.Table:
    config = ReaderConfig(paths=[str(folder)])
    shards = list_shards([Location(path) for path in config.paths])
    rows = [row for shard in shards for row in shard_rows(shard, config)]
    table = pa.Table.from_pylist(rows, schema=READ_SCHEMA)
    return table.filter(pa.compute.is_null(table["quarantine_reason"]))


def raw_fasttext(texts: list[str]) -> float:
    import fasttext

    model = fasttext.load_model(str(default_model_path()))
    started = time.perf_counter()
    for text in texts:
        model.predict(text[:2048].replace("\n", " "), k=3)
    return time.perf_counter() - started


def pipeline_stage(docs: pa.Table, actors: int) -> float:
    blocks = [docs.slice(offset, 1000) for offset in range(0, docs.num_rows, 1000)]
    dataset = ray.data.from_arrow(blocks).materialize()
    # num_cpus below 1 lets the pool share the cores with the rest of the job (here: nothing else runs)
    stage = LangIdConfig(resources={"concurrency": actors, "num_cpus": 0.5, "batch_size": 1000})
    started = time.perf_counter()
    # materialize keeps the output in the object store: the driver does not compete for the CPUs
    output = apply_stages(dataset, [stage], StorageConfig()).materialize()
    assert output.count() == docs.num_rows
    return time.perf_counter() - started


def whole_job(folder: Path, actors: int | None) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as output:
        stage = {"op": "langid", "resources": {"concurrency": actors, "num_cpus": 0.5} if actors else {}}
        config = validate(
            {
                "input": {"paths": [str(folder)]},
                "output": {"path": output},
                "stages": [stage],
                "ray": {"progress": False},
            },
            CorpusConfig,
        )
        result = run_corpus(config)
        return result.seconds, result.manifest["counts"]["read"]


def main() -> None:
    args = arguments(__doc__, repeat=(int, 3, "timed runs of each; the best is reported"))

    docs = load_documents(args.data)
    texts = docs["text"].to_pylist()
    chars = sum(len(t) for t in texts)
    print(
        f"{len(texts):,} documents, {chars / len(texts):,.0f} characters each on average; "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, Python {platform.python_version()}"
    )

    raw = min(raw_fasttext(texts) for _ in range(args.repeat))
    print(f"raw fastText, 1 process        : {len(texts) / raw:10,.0f} docs/s  ({raw:.2f} s)")
    start_ray()
    doubled = pa.concat_tables([docs, docs])
    for actors in (1, 2):
        stage = min(pipeline_stage(docs, actors) for _ in range(args.repeat))
        print(
            f"pipeline langid, {actors} actor(s)    : {len(texts) / stage:10,.0f} docs/s  ({stage:.2f} s)  "
            f"= {raw / stage:.2f}x raw"
        )
        # the cost of 33k more documents, without the fixed cost of starting the pool
        steady = min(pipeline_stage(doubled, actors) for _ in range(args.repeat)) - stage
        print(
            f"  ... steady state (2x docs - 1x) : {len(texts) / steady:10,.0f} docs/s  ({steady:.2f} s)  "
            f"= {raw / steady:.2f}x raw"
        )
    for actors in (None, 2):
        seconds, read = whole_job(args.data, actors)
        pool = "default pool" if actors is None else f"{actors} actors x 0.5 CPU"
        print(
            f"whole job, {pool:16}: {read / seconds:10,.0f} docs/s  ({seconds:.2f} s for {read:,} docs, "
            "read + langid + write + commit)"
        )
    print(f"driver peak RSS                 : {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")
    ray.shutdown()


if __name__ == "__main__":
    main()
