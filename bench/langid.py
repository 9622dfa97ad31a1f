"""Benchmark: the language-ID stage inside the Ray Data pipeline vs raw fastText on the same documents.

    python bench/langid.py [--data ../shared/data/hplt-v2-excerpts] [--repeat 3]

Raw = one Python process calling fastText's predict (k=3) on each document, the way a script would.
Pipeline = the same documents as Arrow blocks through ``map_batches(LanguageId)`` on the actor pool that
``shardflow run`` builds, timed from submission to the last batch (actor start and model load included).
Also: the whole corpus job (read the .jsonl.zst shards, language ID, write parquet) end to end.
Goal (issue 2): pipeline stage >= 0.8x raw docs/s. Results go to bench/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import ray

from shardflow.config import validate
from shardflow.operators.langid import LangIdConfig, default_model_path
from shardflow.operators.readers import ReaderConfig, list_shards, shard_rows
from shardflow.pipelines.corpus import CorpusConfig, apply_stages, run_corpus
from shardflow.schema import READ_SCHEMA
from shardflow.storage import StorageConfig

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hplt-v2-excerpts"


def load_documents(folder: Path) -> pa.Table:
    config = ReaderConfig(paths=[str(folder)])
    rows = [row for shard in list_shards(config, StorageConfig()) for row in shard_rows(shard, config, StorageConfig())]
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
    rows = sum(
        batch.num_rows
        for batch in apply_stages(dataset, [stage], StorageConfig()).iter_batches(
            batch_size=None, batch_format="pyarrow"
        )
    )
    assert rows == docs.num_rows
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each; the best is reported")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"no data at {args.data} (the shared HPLT v2 excerpts)")

    docs = load_documents(args.data)
    texts = docs["text"].to_pylist()
    chars = sum(len(t) for t in texts)
    print(
        f"{len(texts):,} documents, {chars / len(texts):,.0f} characters each on average; "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, Python {platform.python_version()}"
    )

    raw = min(raw_fasttext(texts) for _ in range(args.repeat))
    print(f"raw fastText, 1 process        : {len(texts) / raw:10,.0f} docs/s  ({raw:.2f} s)")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    for actors in (1, 2):
        stage = min(pipeline_stage(docs, actors) for _ in range(args.repeat))
        print(
            f"pipeline langid, {actors} actor(s)    : {len(texts) / stage:10,.0f} docs/s  ({stage:.2f} s)  "
            f"= {raw / stage:.2f}x raw"
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
