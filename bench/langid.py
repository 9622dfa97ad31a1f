"""Benchmark: the language-ID stage inside the Ray Data pipeline vs raw fastText on the same text.

    python bench/langid.py [--data ../shared/data/hplt-v2-excerpts] [--repeat 3]

Two modes of the stage: per segment (the default: every line identified, ``seg_langs``) and whole document
(``segments: false``: one prediction over the first 2,048 characters). Each is compared with raw fastText
doing the same work in one Python process, the way a script would: ``model.predict(line, k=3)`` on every
line of every document, or ``model.predict(text[:2048], k=3)`` on every document.
Pipeline = the documents as Arrow blocks through ``map_batches(LanguageId)`` on the actor pool that
``shardflow run`` builds, timed from submission until every output block is in the object store (actor
start and model load included).
Also: the whole corpus job (read the .jsonl.zst shards, language ID, write parquet) end to end, and how the
two modes label the mixed-language documents of tests/data/mixed_langs.jsonl.
Goals: pipeline stage >= 0.8x raw docs/s (issue 2: whole documents; issue 20: segments). Results go to
bench/RESULTS.md by hand.
"""

from __future__ import annotations

import json
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
from shardflow.operators.langid import LangIdConfig, LanguageId, default_model_path
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


def raw_fasttext(texts: list[str], segments: bool) -> float:
    import fasttext

    model = fasttext.load_model(str(default_model_path()))
    started = time.perf_counter()
    if segments:
        for text in texts:
            for line in text.split("\n"):
                model.predict(line[:2048], k=3)
    else:
        for text in texts:
            model.predict(text[:2048].replace("\n", " "), k=3)
    return time.perf_counter() - started


def pipeline_stage(docs: pa.Table, actors: int, segments: bool) -> float:
    blocks = [docs.slice(offset, 1000) for offset in range(0, docs.num_rows, 1000)]
    dataset = ray.data.from_arrow(blocks).materialize()
    # num_cpus below 1 lets the pool share the cores with the rest of the job (here: nothing else runs)
    stage = LangIdConfig(segments=segments, resources={"concurrency": actors, "num_cpus": 0.5, "batch_size": 1000})
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


def mixed_documents() -> dict[str, int]:
    """How many of the mixed-language test documents each mode labels with the language of most characters."""
    path = Path(__file__).resolve().parents[1] / "tests" / "data" / "mixed_langs.jsonl"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    docs = pa.Table.from_pylist(
        [{"doc_id": r["id"], "text": r["text"], "source": f"mixed:{i}"} for i, r in enumerate(records)],
        schema=READ_SCHEMA,
    )
    found = {}
    for mode, config in (("segments", LangIdConfig()), ("whole", LangIdConfig(segments=False))):
        labels = LanguageId(config, StorageConfig())(docs)["lang"].to_pylist()
        found[mode] = sum(label == r["majority"] for label, r in zip(labels, records, strict=True))
    return found | {"documents": len(records)}


def main() -> None:
    args = arguments(__doc__, repeat=(int, 3, "timed runs of each; the best is reported"))

    docs = load_documents(args.data)
    texts = docs["text"].to_pylist()
    chars = sum(len(t) for t in texts)
    lines = sum(t.count("\n") + 1 for t in texts)
    print(
        f"{len(texts):,} documents, {chars / len(texts):,.0f} characters and {lines / len(texts):.1f} lines each "
        f"on average; {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}"
    )
    start_ray()
    doubled = pa.concat_tables([docs, docs])
    for segments in (True, False):
        mode = "segments" if segments else "whole"
        raw = min(raw_fasttext(texts, segments) for _ in range(args.repeat))
        print(f"[{mode}] raw fastText, 1 process   : {len(texts) / raw:10,.0f} docs/s  ({raw:.2f} s)")
        for actors in (1, 2):
            stage = min(pipeline_stage(docs, actors, segments) for _ in range(args.repeat))
            print(
                f"[{mode}] pipeline, {actors} actor(s)     : {len(texts) / stage:10,.0f} docs/s  ({stage:.2f} s)  "
                f"= {raw / stage:.2f}x raw"
            )
            # the cost of as many documents again, without the fixed cost of starting the pool
            steady = min(pipeline_stage(doubled, actors, segments) for _ in range(args.repeat)) - stage
            print(
                f"[{mode}]   ... steady state       : {len(texts) / steady:10,.0f} docs/s  ({steady:.2f} s)  "
                f"= {raw / steady:.2f}x raw"
            )
    for actors in (None, 2):
        seconds, read = whole_job(args.data, actors)
        pool = "default pool" if actors is None else f"{actors} actors x 0.5 CPU"
        print(
            f"whole job, {pool:16}: {read / seconds:10,.0f} docs/s  ({seconds:.2f} s for {read:,} docs, "
            "read + langid + write + commit)"
        )
    found = mixed_documents()
    print(
        f"mixed documents labelled with their language of most characters: segments {found['segments']}, "
        f"whole {found['whole']} of {found['documents']}"
    )
    print(f"driver peak RSS                 : {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")
    ray.shutdown()


if __name__ == "__main__":
    main()
