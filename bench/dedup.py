"""Benchmark: shardflow's fuzzy dedup vs datatrove's 4-stage MinHash, same documents, parameters and cores.

    pip install -e '.[bench]'
    python bench/dedup.py [--data ../shared/data/hplt-v2-excerpts] [--scales 1,10,30] [--datatrove-scales 1,10]

Scale 1 is the 33,022 HPLT v2 excerpts as they are. Scale k holds, per language file, the excerpts followed
by k-1 copies of each with random word edits (0.5% to 4% of its words replaced): planted near-duplicates,
k per original. Both tools use 14 bands x 8 rows over word 5-grams (datatrove's defaults). Per scale:

- shardflow: the whole job (``run_corpus`` with one ``fuzzy_dedup`` stage: read, signatures, LSH, components,
  then read again, look up, write the corpus and commit), on a local Ray started before the clock;
- datatrove: ``MinhashDedupSignature -> Buckets -> Cluster -> Filter`` with ``LocalPipelineExecutor``
  (one task per file, or per bucket, on as many workers as CPUs), writing kept and removed documents;
- recall: of a sample of planted copies whose true Jaccard similarity to their original is >= 0.8 (word
  5-grams after normalisation), the fraction each tool removed; and how many originals each kept.

Peak RSS is sampled every 0.2 s: the driver, and the sum over its descendant processes (for shardflow all
of Ray's: raylet, GCS, workers; for datatrove its worker pool). Generated sets are cached under ``--work``.
"""

from __future__ import annotations

import gzip
import json
import os
import resource
import shutil
import threading
import time
import unicodedata
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow.parquet as pq
import ray
import regex
import zstandard
from common import arguments, start_ray

from shardflow.config import validate
from shardflow.pipelines.corpus import CorpusConfig, run_corpus

EDIT_RATES = (0.005, 0.04)


class PeakMemory:
    """Peak RSS of this process and of all its descendants together, sampled in a thread; with
    ``new_only``, only descendants started inside the block (datatrove's workers, not Ray's idle ones)."""

    def __init__(self, new_only: bool = False) -> None:
        self.driver = self.descendants = 0
        self.running = False
        self.before = set(map(int, filter(str.isdigit, os.listdir("/proc")))) if new_only else set()

    def __enter__(self) -> PeakMemory:
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.running = False
        self.thread.join()

    def _sample(self) -> None:
        while self.running:
            parents: dict[int, int] = {}
            sizes: dict[int, int] = {}
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    try:
                        stat = Path(f"/proc/{entry}/stat").read_text()
                        status = Path(f"/proc/{entry}/status").read_text()
                    except OSError:
                        continue
                    parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
                    rss = regex.search(r"VmRSS:\s+(\d+)", status)
                    sizes[int(entry)] = int(rss.group(1)) * 1024 if rss else 0
            me = os.getpid()
            tree = {me}
            for _ in range(6):
                tree |= {pid for pid, parent in parents.items() if parent in tree}
            self.driver = max(self.driver, sizes.get(me, 0))
            self.descendants = max(self.descendants, sum(sizes.get(pid, 0) for pid in tree - {me} - self.before))
            time.sleep(0.2)


def read_excerpts(folder: Path) -> dict[str, list[dict[str, Any]]]:
    files = {}
    for path in sorted(folder.glob("*.jsonl.zst")):
        body = zstandard.ZstdDecompressor().stream_reader(path.open("rb")).read()
        files[path.name] = [orjson.loads(line) for line in body.splitlines()]
    return files


def edit(words: list[str], rate: float, rng: np.random.Generator) -> str:
    words = list(words)
    for position in rng.choice(len(words), size=max(1, round(rate * len(words))), replace=False):
        words[position] = f"w{rng.integers(1 << 40):x}"
    return " ".join(words)


def cached_set(folder: Path, data: Path, derive: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> Path:
    """A generated set in ``folder``, kept once complete: per language file of ``data``, ``derive(records)``."""
    if (folder / "_DONE").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name, records in read_excerpts(data).items():
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in derive(records)).encode()
        (folder / name).write_bytes(zstandard.ZstdCompressor(level=3).compress(body))
    (folder / "_DONE").touch()
    return folder


def build(data: Path, scale: int, work: Path) -> Path:
    """The scale-k set (cached): per file, the originals, then k-1 edited copies of each."""
    if scale == 1:
        return data
    rng = np.random.default_rng(scale)

    def copies(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = list(records)
        for copy in range(1, scale):
            for record in records:
                words = record["text"].split(" ")
                text = edit(words, rng.uniform(*EDIT_RATES), rng) if len(words) > 1 else record["text"]
                out.append({**record, "id": f"{record['id']}~{copy}", "text": text})
        return out

    return cached_set(work / f"x{scale}", data, copies)


def normalised_shingles(text: str, n: int = 5) -> set[str]:
    text = unicodedata.normalize("NFKC", text).lower()
    text = regex.sub(r"[\p{P}\p{S}\s]+", " ", regex.sub(r"\p{Nd}+", "0", text)).strip()
    words = text.split()
    return {" ".join(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}


def planted_sample(folder: Path, size: int) -> tuple[list[str], int]:
    """Ids of sampled copies whose Jaccard similarity to their original is >= 0.8; how many were sampled."""
    rng = np.random.default_rng(0)
    similar, sampled = [], 0
    for records in read_excerpts(folder).values():
        originals = {r["id"]: r["text"] for r in records if "~" not in r["id"]}
        copies = [r for r in records if "~" in r["id"]]
        for record in rng.permutation(len(copies))[: max(1, size // 169)]:
            copy = copies[record]
            a, b = normalised_shingles(originals[copy["id"].split("~")[0]]), normalised_shingles(copy["text"])
            sampled += 1
            if len(a & b) >= 0.8 * len(a | b):
                similar.append(copy["id"])
    return similar, sampled


def timed_run(folder: Path, out: Path, stages: list[dict[str, Any]]) -> dict[str, Any]:
    """A corpus run of ``stages`` over ``folder``: its manifest, wall seconds and peak RSS (driver, the rest)."""
    config = validate(
        {
            "input": {"paths": [str(folder)]},
            "output": {"path": str(out), "if_exists": "overwrite"},
            "stages": stages,
            "ray": {"progress": False},
        },
        CorpusConfig,
    )
    with PeakMemory() as memory:
        started = time.perf_counter()
        manifest = run_corpus(config).manifest
        seconds = time.perf_counter() - started
    return {"manifest": manifest, "seconds": seconds, "driver": memory.driver, "workers": memory.descendants}


def run_shardflow(folder: Path, out: Path) -> dict[str, Any]:
    result = timed_run(folder, out, [{"op": "fuzzy_dedup"}])
    manifest = result["manifest"]
    removed = set()
    for entry in manifest["files"]:
        if entry["kind"] == "removed":
            removed.update(pq.read_table(out / entry["path"], columns=["doc_id"])["doc_id"].to_pylist())
    return {
        "docs": manifest["counts"]["read"],
        "seconds": result["seconds"],
        "removed": removed,
        "steps": manifest["fuzzy_dedup"]["seconds"],
        "driver": result["driver"],
        "workers": result["workers"],
    }


def xxhash64_text(text: str) -> int:
    """What datatrove's ``xxhash64`` did with a ``str`` before xxhash 4 stopped accepting one."""
    import xxhash

    return xxhash.xxh64_intdigest(text.encode("utf-8"))


def run_datatrove(folder: Path, work: Path) -> dict[str, Any]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    class Signature(MinhashDedupSignature):
        """datatrove 0.10.1 hashes shingles with ``xxhash.xxh64_intdigest(str)``, which xxhash 4 refuses."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._hash_func = xxhash64_text

    shutil.rmtree(work, ignore_errors=True)
    files = len(list(folder.glob("*.jsonl.zst")))
    workers = os.cpu_count() or 1
    config = MinhashConfig()  # 5-grams, 14 buckets x 8 hashes

    def reader() -> JsonlReader:
        return JsonlReader(str(folder), glob_pattern="*.jsonl.zst", compression="zstd", id_key="id")

    stages = [
        ([reader(), Signature(output_folder=str(work / "sigs"), config=config)], files),
        ([MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=config)], config.num_buckets),
        ([MinhashDedupCluster(str(work / "buckets"), str(work / "remove_ids"), config=config)], 1),
        (
            [
                reader(),
                MinhashDedupFilter(str(work / "remove_ids"), exclusion_writer=JsonlWriter(str(work / "removed"))),
                JsonlWriter(str(work / "kept")),
            ],
            files,
        ),
    ]
    with PeakMemory(new_only=True) as memory:
        started = time.perf_counter()
        for number, (pipeline, tasks) in enumerate(stages):
            LocalPipelineExecutor(
                pipeline, tasks=tasks, workers=min(workers, tasks), logging_dir=str(work / f"logs{number}")
            ).run()
        seconds = time.perf_counter() - started
    removed = set()
    for path in (work / "removed").glob("*.jsonl.gz"):
        removed.update(orjson.loads(line)["id"] for line in gzip.open(path))
    return {"seconds": seconds, "removed": removed, "driver": memory.driver, "workers": memory.descendants}


def main() -> None:
    args = arguments(
        __doc__,
        scales=(str, "1,10,30", "sizes of the sets, in multiples of the excerpts"),
        **{"datatrove-scales": (str, "1,10", "the scales datatrove runs on too")},
        work=(Path, Path("/tmp/shardflow-bench-dedup"), "where generated sets and outputs go"),
        sample=(int, 5000, "planted copies sampled for recall"),
    )
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    start_ray()
    ray_start = time.perf_counter() - started
    datatrove_scales = {int(s) for s in args.datatrove_scales.split(",") if s}
    for scale in [int(s) for s in args.scales.split(",")]:
        folder = build(args.data, scale, args.work)
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:  # keeps the driver's RSS clean
            similar, sampled = pool.submit(planted_sample, folder, args.sample).result() if scale > 1 else ([], 0)
        ours = run_shardflow(folder, args.work / "out")
        line = {"scale": scale, "docs": ours["docs"], "shardflow": ours, "similar": len(similar), "sampled": sampled}
        if scale in datatrove_scales:
            line["datatrove"] = run_datatrove(folder, args.work / "datatrove")
        report(line, similar)  # then dropped: the id sets would weigh on the next scale's driver RSS
    print(f"Ray start (not in the times above): {ray_start:.1f} s; {os.cpu_count()} CPUs")
    print(f"bench process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")
    ray.shutdown()


def report(line: dict[str, Any], similar: list[str]) -> None:
    docs = line["docs"]
    print(f"\n== scale {line['scale']}: {docs:,} documents")
    for tool in ("shardflow", "datatrove"):
        if tool not in line:
            continue
        result = line[tool]
        recall = (
            f", recall {sum(d in result['removed'] for d in similar) / len(similar):.4f} "
            f"of {len(similar):,} planted copies with J >= 0.8 (of {line['sampled']:,} sampled)"
            if similar
            else ""
        )
        kept_originals = sum("~" not in d for d in result["removed"])
        print(
            f"{tool:9s}: {docs / result['seconds']:9,.0f} docs/s  {result['seconds']:8.1f} s  "
            f"{1e6 * result['seconds'] / docs:6.1f} us/doc  removed {len(result['removed']):,} "
            f"({kept_originals:,} originals){recall}"
        )
        print(
            f"           peak RSS driver {result['driver'] / 2**20:,.0f} MiB, "
            f"other processes together {result['workers'] / 2**20:,.0f} MiB"
        )
        if "steps" in result:
            print(f"           global steps (s): {json.dumps(result['steps'])}")
    if "datatrove" in line:
        print(f"speed-up: {line['datatrove']['seconds'] / line['shardflow']['seconds']:.1f}x")


if __name__ == "__main__":
    main()
