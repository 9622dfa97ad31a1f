"""Benchmark: the whole rerank job on run sets of the shapes users bring (``shardflow rerank`` in a subprocess).

    python bench/rerank_job.py --job encode-once [--queries 1000] [--top-k 100] [--passages 2000]
        [--before-python /tmp/oldvenv/bin/python]
    python bench/rerank_job.py --job plumbing --pairs 1000000 [--top-k 100]

``encode-once``: the embedding scorer on a shared-candidate run set: ``--queries`` queries (the first 8 words of
an HPLT excerpt) x ``--top-k`` candidates drawn from ``--passages`` HPLT excerpts (the query's own excerpt and
random others, shuffled), 64 chunks (the default), encoder max_length 64 (to keep the run short on a CPU; the
ratio is what is compared). The same job is run by ``sys.executable`` and, where ``--before-python`` names the
interpreter of an environment that holds an older shardflow (say a checkout of the commit before "encode
once"), by that one: pairs/s of each, whole job (Ray start, join, encoding, scoring, writing).

``plumbing``: ``kind: bm25`` (no model) on a generated run set of ``--pairs`` pairs: ``pairs / top-k`` queries of
3 words x ``--top-k`` candidates over a corpus of ``pairs / 10`` passages of ~20 words each, drawn from a
Zipf vocabulary. Measures pairs/s of join, chunking, statistics, scoring and writing, and the driver's peak RSS
(it must stay flat as the run set grows: nothing is collected on the driver).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from common import arguments
from embed import mixed_documents

REPO = Path(__file__).resolve().parents[1]


def run_job(python: str, config: dict, folder: Path) -> dict:
    """``shardflow rerank`` on ``config`` by ``python``: seconds, the job's summary and the driver's peak RSS in
    MiB, sampled every 0.1 s (the summary's own figure, Linux's high-water mark, would include this process's:
    a forked child keeps it across exec)."""
    path = folder / f"rerank-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(config))
    started = time.perf_counter()
    command = [python, "-m", "shardflow.cli", "rerank", str(path), "--restart"]
    job = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    driver, peak = psutil.Process(job.pid), 0
    while job.poll() is None:
        with contextlib.suppress(psutil.Error):
            peak = max(peak, driver.memory_info().rss)
        time.sleep(0.1)
    seconds = time.perf_counter() - started
    if job.returncode:
        raise SystemExit(f"the job failed ({job.returncode}): {' '.join(command)}")
    summary = json.loads((Path(config["output"]["path"]) / "summary.json").read_text())
    return {"seconds": seconds, "summary": summary, "driver_peak_mib": peak >> 20}


def shared_candidates(data: Path, folder: Path, queries: int, top_k: int, passages: int) -> dict:
    """The encode-once run set, written under ``folder``; the job's inputs."""
    texts = mixed_documents(data, passages)
    rng = random.Random(0)
    with open(folder / "corpus.jsonl", "w") as corpus:
        for number, text in enumerate(texts):
            corpus.write(json.dumps({"doc_id": f"p{number}", "text": text}) + "\n")
    with open(folder / "queries.jsonl", "w") as out, open(folder / "run.txt", "w") as run:
        with open(folder / "qrels.txt", "w") as qrels:
            for number in range(queries):
                own = number % passages
                out.write(json.dumps({"qid": f"q{number}", "text": " ".join(texts[own].split()[:8])}) + "\n")
                others = rng.sample([p for p in range(passages) if p != own], top_k - 1)
                candidates = [own, *others]
                rng.shuffle(candidates)
                run.writelines(f"q{number} Q0 p{p} {rank} {-rank} first\n" for rank, p in enumerate(candidates, 1))
                qrels.write(f"q{number} 0 p{own} 1\n")
    return {
        "runs": [str(folder / "run.txt")],
        "queries": str(folder / "queries.jsonl"),
        "corpus": {"path": str(folder / "corpus.jsonl")},
        "qrels": str(folder / "qrels.txt"),
        "top_k": top_k,
    }


def generated(folder: Path, pairs: int, top_k: int) -> dict:
    """The plumbing run set, written under ``folder`` with numpy (no Python per word); the job's inputs."""
    rng = np.random.default_rng(0)
    vocabulary = np.array([f"w{n}" for n in range(50_000)])
    weights = 1 / np.arange(1, len(vocabulary) + 1)
    weights /= weights.sum()
    queries, passages = pairs // top_k, max(pairs // 10, top_k)
    words = vocabulary[rng.choice(len(vocabulary), size=(passages, 20), p=weights)]
    with open(folder / "corpus.tsv", "w") as corpus:
        corpus.writelines(f"p{n}\t{' '.join(row)}\n" for n, row in enumerate(words))
    terms = vocabulary[rng.choice(len(vocabulary), size=(queries, 3), p=weights)]
    with open(folder / "queries.tsv", "w") as out:
        out.writelines(f"q{n}\t{' '.join(row)}\n" for n, row in enumerate(terms))
    with open(folder / "run.txt", "w") as run:
        for start in range(0, queries, 1000):
            block = rng.integers(0, passages, size=(min(1000, queries - start), top_k))
            run.writelines(
                f"q{start + q} Q0 p{p} {rank} {-rank} first\n"
                for q, row in enumerate(block)
                for rank, p in enumerate(row, 1)
            )
    return {
        "runs": [str(folder / "run.txt")],
        "queries": str(folder / "queries.tsv"),
        "corpus": {"path": str(folder / "corpus.tsv")},
        "top_k": top_k,
    }


def main() -> None:
    args = arguments(
        __doc__,
        job=(str, "encode-once", "encode-once or plumbing"),
        queries=(int, 1000, "encode-once: queries"),
        top_k=(int, 100, "candidates per query"),
        passages=(int, 2000, "encode-once: passages the candidates are drawn from"),
        pairs=(int, 1_000_000, "plumbing: pairs in the run set"),
        before_python=(str, None, "encode-once: the python of an environment with the shardflow to compare"),
    )
    folder = Path(tempfile.mkdtemp(prefix="shardflow-bench-rerank-"))
    # the run set is made in a spawned process: a job forked from this one would inherit the generator's peak
    # RSS in its own (Linux keeps the high-water mark across exec)
    make = multiprocessing.get_context("spawn").Pool(1)
    if args.job == "encode-once":
        inputs = make.apply(shared_candidates, (args.data, folder, args.queries, args.top_k, args.passages))
        scorer = {"kind": "embedding", "encoder": {"max_length": 64}}
        pythons = {"this": sys.executable, **({"before": args.before_python} if args.before_python else {})}
    else:
        inputs = make.apply(generated, (folder, args.pairs, args.top_k))
        scorer = {"kind": "bm25"}
        pythons = {"this": sys.executable}
    make.close()
    print(f"run set in {folder}: {json.dumps(inputs)}")
    print("| shardflow | pairs | seconds | pairs/s | driver peak RSS MiB | nDCG@10 after |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, python in pythons.items():
        config = {
            **inputs,
            "scorer": scorer,
            "output": {"path": str(folder / f"out-{name}")},
            "ray": {"progress": False},
        }
        found = run_job(python, config, folder)
        pairs = found["summary"]["pairs"]["pairs"]
        metrics = next(iter(found["summary"]["runs"].values())).get("metrics", {}).get("after", {})
        print(
            f"| {name} | {pairs:,} | {found['seconds']:.1f} | {pairs / found['seconds']:,.0f} | "
            f"{found['driver_peak_mib']:,} | {metrics.get('nDCG@10', '-')} |"
        )


if __name__ == "__main__":
    main()
