"""Benchmark: the corpus DAG at 33k, 330k and 1M documents: time per document, per stage, and memory.

    python bench/scale.py [--data ../shared/data/hplt-v2-excerpts] [--scales 1,10,30] [--work DIR]

Scale k is bench/dedup.py's set: the 33,022 HPLT v2 excerpts, each followed by k-1 copies with 0.5-4% of
its words replaced (planted near-duplicates). Stages: langid -> exact_dedup -> fuzzy_dedup -> quality
(filter), the CPU part of the DAG, on a local Ray started before the clock. Embedding is measured on its own
by bench/embed.py (on 2 CPUs it runs at a few thousand tokens/s; a million documents is a GPU's work).

Per scale: wall time, time per document (goal: flat within 20% from scale to scale), worker-seconds per
stage from the manifest (stages overlap in a streaming run; these say where the work went), and peak RSS
of the driver (goal: flat) and of all other processes together (Ray's workers, raylet, GCS).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from common import arguments, start_ray
from dedup import PeakMemory, build

from shardflow.config import validate
from shardflow.pipelines.corpus import CorpusConfig, run_corpus

STAGES = [{"op": "langid"}, {"op": "exact_dedup"}, {"op": "fuzzy_dedup"}, {"op": "quality"}]


def run(folder: Path, out: Path) -> dict[str, Any]:
    config = validate(
        {
            "input": {"paths": [str(folder)]},
            "output": {"path": str(out), "if_exists": "overwrite"},
            "stages": STAGES,
            "ray": {"progress": False},
        },
        CorpusConfig,
    )
    with PeakMemory() as memory:
        started = time.perf_counter()
        manifest = run_corpus(config).manifest
        seconds = time.perf_counter() - started
    return {"manifest": manifest, "seconds": seconds, "driver": memory.driver, "workers": memory.descendants}


def main() -> None:
    args = arguments(
        __doc__,
        scales=(str, "1,10,30", "sizes of the sets, in multiples of the excerpts"),
        work=(Path, Path("/tmp/shardflow-bench-scale"), "where generated sets and outputs go"),
    )
    args.work.mkdir(parents=True, exist_ok=True)
    start_ray()
    lines = []
    for scale in [int(s) for s in args.scales.split(",")]:
        result = run(build(args.data, scale, args.work), args.work / "out")
        manifest, seconds = result["manifest"], result["seconds"]
        docs = manifest["counts"]["read"]
        stages = {
            name: f"{timing['docs_per_busy_second']:,.0f} docs/s ({timing['busy_seconds']:.0f} s)"
            for name, timing in manifest["timing"].items()
        }
        line = {
            "scale": scale,
            "docs": docs,
            "kept": manifest["counts"]["kept"],
            "seconds": round(seconds, 1),
            "us_per_doc": round(1e6 * seconds / docs, 1),
            "docs_per_s": round(docs / seconds),
            "driver_mib": round(result["driver"] / 2**20),
            "workers_mib": round(result["workers"] / 2**20),
            "stages": stages,
            "fuzzy_steps_s": manifest.get("fuzzy_dedup", {}).get("seconds"),
        }
        lines.append(line)
        print(json.dumps(line), flush=True)
    print(f"\n{os.cpu_count()} CPUs")
    print("| docs | kept | seconds | us/doc | docs/s | driver peak RSS | other processes |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for line in lines:
        print(
            f"| {line['docs']:,} | {line['kept']:,} | {line['seconds']} | {line['us_per_doc']} | "
            f"{line['docs_per_s']:,} | {line['driver_mib']} MiB | {line['workers_mib']:,} MiB |"
        )


if __name__ == "__main__":
    main()
