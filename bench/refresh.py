"""Benchmark: the nightly refresh, night by night, against one run over every night's shards.

    python bench/refresh.py [--data ../shared/data/hplt-v2-excerpts] [--nights 5] [--work /tmp/shardflow-bench-refresh]

The 33,022 HPLT v2 excerpts, shuffled, are cut into ``--nights`` nights of one shard per language; every
night after the first also repeats 2% of the earlier nights' documents exactly and 5% with 1-3% of their
words replaced. Stages: language ID, exact dedup, fuzzy dedup (the ones a refresh must reconcile with the
published corpus). Per night: the refresh's wall time (the new shards' processing plus reading the
published dedup indexes and copying them forward) and its rate over the night's documents. At the end, one
``shardflow run`` over all the shards: its time, and whether it keeps exactly the documents the refreshed
corpus keeps.
"""

from __future__ import annotations

import json
import resource
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import zstandard
from common import arguments, start_ray
from dedup import edit, read_excerpts

from shardflow.config import validate
from shardflow.pipelines.corpus import CorpusConfig, run_corpus
from shardflow.pipelines.refresh import RefreshConfig, current_version, refresh
from shardflow.storage import Location

STAGES = [{"op": "langid"}, {"op": "exact_dedup"}, {"op": "fuzzy_dedup"}]
EXACT_SHARE, NEAR_SHARE = 0.02, 0.05


def nights(data: Path, count: int) -> list[dict[str, list[dict[str, Any]]]]:
    """Per night: shard name -> records."""
    rng = np.random.default_rng(0)
    records = [(name, r) for name, rows in read_excerpts(data).items() for r in rows]
    order = rng.permutation(len(records))
    cuts = np.array_split(order, count)
    out: list[dict[str, list[dict[str, Any]]]] = []
    for night, picked in enumerate(cuts):
        shards: dict[str, list[dict[str, Any]]] = {}
        for i in picked:
            name, record = records[i]
            shards.setdefault(name, []).append(record)
        earlier = np.concatenate(cuts[:night]) if night else np.array([], dtype=int)
        for kind, share in (("exact", EXACT_SHARE), ("near", NEAR_SHARE)):
            for i in rng.choice(earlier, size=round(share * len(earlier)), replace=False) if night else []:
                name, record = records[i]
                words = record["text"].split(" ")
                text = record["text"].upper() if kind == "exact" else edit(words, rng.uniform(0.01, 0.03), rng)
                shards.setdefault(name, []).append({**record, "id": f"{record['id']}~{kind}{night}", "text": text})
        out.append(shards)
    return out


def write_night(folder: Path, shards: dict[str, list[dict[str, Any]]]) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in shards.items():
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
        (folder / name).write_bytes(zstandard.ZstdCompressor(level=3).compress(body))
    return sum(len(rows) for rows in shards.values())


def kept_ids(root: Path, files: list[dict[str, Any]]) -> set[str]:
    return {
        doc
        for entry in files
        if entry["kind"] == "corpus"
        for doc in pq.read_table(root / entry["path"], columns=["doc_id"])["doc_id"].to_pylist()
    }


def main() -> None:
    args = arguments(__doc__, nights=(int, 5, "nights"), work=(Path, Path("/tmp/shardflow-bench-refresh"), "scratch"))
    shutil.rmtree(args.work, ignore_errors=True)
    inputs, root = args.work / "in", args.work / "corpus"
    plan = nights(args.data, args.nights)
    start_ray()
    config = validate(
        {"input": {"paths": [str(inputs)]}, "output": {"path": str(root)}, "stages": STAGES}, RefreshConfig
    )
    print("| night | new docs | kept (corpus) | dropped as duplicates of earlier nights or itself | seconds | docs/s |")
    print("|---:|---:|---:|---:|---:|---:|")
    total = 0.0
    for number, shards in enumerate(plan, 1):
        docs = write_night(inputs / f"night-{number:02d}", shards)
        started = time.perf_counter()
        result = refresh(config)
        seconds = time.perf_counter() - started
        total += seconds
        night = result.record["this_version"]["counts"]
        segment = segment_manifest(root, result.record["this_version"]["segment"])
        dedup = sum(stage["dropped"] for stage in segment["stages"] if stage["name"].endswith("dedup"))
        print(
            f"| {number} | {docs:,} | {result.record['counts']['kept']:,} | {dedup:,} | {seconds:.1f} | "
            f"{night['read'] / seconds:,.0f} |"
        )
    started = time.perf_counter()
    scratch = validate(
        {"input": {"paths": [str(inputs)]}, "output": {"path": str(args.work / "scratch")}, "stages": STAGES},
        CorpusConfig,
    )
    manifest = run_corpus(scratch).manifest
    once = time.perf_counter() - started
    record = current_version(Location(str(root)))
    differ = kept_ids(root, record["files"]) ^ kept_ids(args.work / "scratch", manifest["files"])
    bridged = sum(segment_manifest(root, s)["fuzzy_dedup"]["bridged"] for s in record["segments"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"\nall {args.nights} nights refreshed: {total:.1f} s; one run over every shard: {once:.1f} s "
        f"({manifest['counts']['read']:,} docs); kept by one but not the other: {len(differ)} (bridges counted by "
        f"the refresh: {bridged}); driver peak RSS {peak:.0f} MiB"
    )


def segment_manifest(root: Path, segment: str) -> dict[str, Any]:
    """A segment's own manifest (per-stage counts, fuzzy dedup's facts)."""
    return json.loads((root / segment / "manifest.json").read_text())


if __name__ == "__main__":
    main()
