"""Benchmark: the corpus DAG at 33k, 330k and 1M documents: time per document, per stage, and memory.

    python bench/scale.py [--data ../shared/data/hplt-v2-excerpts] [--scales 1,10,30] [--mix unique|copies]
                          [--embed-sample 2000] [--work DIR]

``--mix unique`` (default): scale k holds k generations of the 33,022 HPLT v2 excerpts; in each, every
excerpt appears once with 30% of its words replaced (so generations do not near-duplicate each other), and
besides it, 4% of them as an exact copy and 4% as a near copy (1-3% of words replaced). Every scale has the
same mix, so time per document is comparable across scales: the test of "flat". ``--mix copies`` is
bench/dedup.py's set (each excerpt followed by k-1 near copies): dedup removes more the larger the scale.

Stages: langid -> exact_dedup -> fuzzy_dedup -> quality (filter), the CPU part of the DAG, on a local Ray
started before the clock. With ``--embed-sample N`` the DAG runs again on the first N documents of each
language file with embedding (the offline default encoder) in place of quality, which would leave it little
to embed: the embed stage's documents per worker-second. On 2 CPUs it embeds a few thousand tokens/s; a
million documents is a GPU's work.

Per scale: wall time, time per document (goal: flat within 20% from scale to scale), worker-seconds per
stage from the manifest (stages overlap in a streaming run; these say where the work went), and peak RSS
of the driver (goal: flat) and of all other processes together (Ray's workers, raylet, GCS).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import zstandard
from common import arguments, start_ray
from dedup import build, cached_set, edit, timed_run

STAGES = [{"op": "langid"}, {"op": "exact_dedup"}, {"op": "fuzzy_dedup"}, {"op": "quality"}]
EMBED = {"op": "embed"}  # no GPU here: CPU actors
UNIQUE_EDIT, NEAR_EDIT, COPY_SHARE = 0.30, (0.01, 0.03), 0.04


def build_unique(data: Path, scale: int, work: Path) -> Path:
    """The ``--mix unique`` set of scale k (cached): k generations, each with the same share of copies."""
    rng = np.random.default_rng(scale)

    def generations(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for generation in range(scale):
            for record in records:
                words = record["text"].split(" ")
                base = edit(words, UNIQUE_EDIT, rng) if len(words) > 3 else f"{record['text']} g{generation}"
                out.append({**record, "id": f"{record['id']}~{generation}", "text": base})
                if rng.random() < COPY_SHARE:
                    out.append({**record, "id": f"{record['id']}~{generation}e", "text": base})
                if rng.random() < COPY_SHARE and len(words) > 3:
                    near = edit(base.split(" "), rng.uniform(*NEAR_EDIT), rng)
                    out.append({**record, "id": f"{record['id']}~{generation}n", "text": near})
        return out

    return cached_set(work / f"u{scale}", data, generations)


def sample(folder: Path, per_file: int, work: Path) -> Path:
    """The first ``per_file`` documents of each language file of ``folder``."""
    target = work / f"{folder.name}-sample{per_file}"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for path in sorted(folder.glob("*.jsonl.zst")):
        lines = zstandard.ZstdDecompressor().stream_reader(path.open("rb")).read().splitlines()[:per_file]
        (target / path.name).write_bytes(zstandard.ZstdCompressor().compress(b"\n".join(lines) + b"\n"))
    return target


def main() -> None:
    args = arguments(
        __doc__,
        scales=(str, "1,10,30", "sizes of the sets, in multiples of the excerpts"),
        mix=(str, "unique", "unique: the same share of copies at every scale; copies: bench/dedup.py's sets"),
        embed_sample=(int, 0, "also run the DAG with embedding on this many documents per language file"),
        work=(Path, Path("/tmp/shardflow-bench-scale"), "where generated sets and outputs go"),
    )
    args.work.mkdir(parents=True, exist_ok=True)
    start_ray()
    lines = []
    for scale in [int(s) for s in args.scales.split(",")]:
        folder = (build_unique if args.mix == "unique" else build)(args.data, scale, args.work)
        result = timed_run(folder, args.work / "out", STAGES)
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
        if args.embed_sample:
            embedded = timed_run(
                sample(folder, args.embed_sample, args.work), args.work / "embed", [*STAGES[:-1], EMBED]
            )
            timing, manifest = embedded["manifest"]["timing"]["embed"], embedded["manifest"]
            line["embed_sample"] = {
                "docs": manifest["counts"]["read"],
                "embedded": manifest["counts"]["kept"],
                "embed_docs_per_worker_s": timing["docs_per_busy_second"],
                "seconds": round(embedded["seconds"], 1),
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
