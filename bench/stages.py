"""Benchmark: stages together cost what they cost apart (every stage runs once per document).

    python bench/stages.py [--data ../shared/data/hplt-v2-excerpts] [--scale 3] [--repeat 1]
                           [--work /tmp/shardflow-bench-stages]

On bench/scale.py's ``--mix unique`` set of the given scale (33,022 HPLT v2 excerpts per unit, each generation
with 4% exact and 4% near copies), four whole corpus runs, each on a local Ray started before the clock:
``langid`` alone, ``exact_dedup`` alone, ``fuzzy_dedup`` alone, and ``langid, exact_dedup, fuzzy_dedup``
together. The goal: together <= the three apart added up, +15%. Before every stage ran once, the fuzzy pass
read every shard through language ID a second time. Per run: wall seconds, fuzzy dedup's steps (from the
manifest) and the worker-seconds of each stage; ``--repeat`` keeps the best of N.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common import arguments, start_ray
from dedup import timed_run
from scale import build_unique

RUNS = {
    "langid": [{"op": "langid"}],
    "exact_dedup": [{"op": "exact_dedup"}],
    "fuzzy_dedup": [{"op": "fuzzy_dedup"}],
    "together": [{"op": "langid"}, {"op": "exact_dedup"}, {"op": "fuzzy_dedup"}],
}


def best_of(repeat: int, folder: Path, out: Path, stages: list[dict[str, Any]]) -> dict[str, Any]:
    runs = [timed_run(folder, out, stages) for _ in range(repeat)]
    return min(runs, key=lambda run: run["seconds"])


def main() -> None:
    args = arguments(
        __doc__,
        scale=(int, 3, "size of the set, in multiples of the excerpts"),
        repeat=(int, 1, "runs of each configuration; the fastest counts"),
        work=(Path, Path("/tmp/shardflow-bench-stages"), "where the generated set and outputs go"),
    )
    args.work.mkdir(parents=True, exist_ok=True)
    folder = build_unique(args.data, args.scale, args.work)
    start_ray()
    found = {}
    for name, stages in RUNS.items():
        result = best_of(args.repeat, folder, args.work / "out", stages)
        manifest = result["manifest"]
        found[name] = {
            "docs": manifest["counts"]["read"],
            "seconds": round(result["seconds"], 1),
            "fuzzy_steps_s": manifest.get("fuzzy_dedup", {}).get("seconds"),
            "busy_s": {stage: round(timing["busy_seconds"], 1) for stage, timing in manifest["timing"].items()},
        }
        print(json.dumps({name: found[name]}), flush=True)
    apart = sum(found[name]["seconds"] for name in ("langid", "exact_dedup", "fuzzy_dedup"))
    together = found["together"]["seconds"]
    print(f"\n{found['together']['docs']:,} documents: apart {apart:.1f} s, together {together:.1f} s", end="")
    print(f" ({together / apart:.2f}x the sum; goal <= 1.15x)")


if __name__ == "__main__":
    main()
