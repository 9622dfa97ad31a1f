"""The embed stage in the corpus job: vectors land in the corpus; GPU stages get one pinned actor per GPU
(Ray's logical GPUs stand in for real ones), each with a share of the rows, and run on CPU actors where the
cluster has none."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from shardflow.config import validate
from shardflow.pipelines.corpus import CorpusConfig, run_corpus
from support import REPO, sample_records, write_shard, write_tiny_encoder


def corpus(tmp_path: Path) -> tuple[Path, Path]:
    texts = [r["text"] for r in sample_records()[:60]]
    write_shard(tmp_path / "in" / "a.jsonl.zst", [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)])
    return tmp_path / "in", write_tiny_encoder(tmp_path / "model", "bert", texts)


@pytest.mark.usefixtures("ray_local")
def test_embeddings_land_in_the_corpus_on_cpu_actors_when_there_is_no_gpu(tmp_path: Path) -> None:
    shards, model = corpus(tmp_path)
    config = validate(
        {
            "input": {"paths": [str(shards)]},
            "output": {"path": str(tmp_path / "out")},
            "stages": [{"op": "embed", "model": str(model), "token_budget": 256}],  # asks for a GPU by default
        },
        CorpusConfig,
    )
    manifest = run_corpus(config).manifest
    rows = [
        row
        for entry in manifest["files"]
        if entry["kind"] == "corpus"
        for row in pq.read_table(tmp_path / "out" / entry["path"]).to_pylist()
    ]
    assert len(rows) == manifest["counts"]["read"] == 60
    vectors = np.array([row["embedding"] for row in rows], dtype=np.float32)
    assert vectors.shape == (60, 32)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=5e-3)
    assert manifest["stages"][1]["name"] == "embed" and manifest["stages"][1]["out"] == 60


PINNING = textwrap.dedent(
    """
    import json, os, sys, time
    import ray
    from shardflow.pipelines import corpus
    from shardflow.operators.embed import Embedder
    from shardflow.operators.registry import STAGES

    class Probe(Embedder):
        record = sys.argv[2]  # a class attribute travels with the class into the actors; sys.argv does not

        def __init__(self, config, storage):
            super().__init__(config, storage)
            self.write(None)  # started

        def annotate(self, docs):
            self.write(docs.num_rows)
            # Busy until every actor has a block (or a minute has passed): Ray Data hands the next block to
            # the least busy actor, so this holds the first ones back only if the blocks really are there.
            deadline = time.monotonic() + 60
            while self.with_rows() < 4 and time.monotonic() < deadline:
                time.sleep(0.1)
            return super().annotate(docs)

        def with_rows(self):
            with open(self.record) as seen:
                return len({pid for pid, _, rows in map(json.loads, seen) if rows is not None})

        def write(self, rows):
            with open(self.record, "a") as out:
                out.write(json.dumps([os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES"), rows]) + "\\n")

    STAGES.implementations["embed"] = Probe
    ray.init(num_cpus=8, num_gpus=4, include_dashboard=False, log_to_driver=False)
    # Ray Data starts pool actors asynchronously: a small job can end before a slow fourth one is up
    ray.data.DataContext.get_current().wait_for_min_actors_s = 300
    config = corpus.CorpusConfig.model_validate_json(sys.argv[1])
    manifest = corpus.run_corpus(config).manifest
    print(json.dumps(manifest["counts"]))
    """
)


def test_gpu_stage_runs_one_actor_per_gpu_each_on_its_own_device_each_with_rows(tmp_path: Path) -> None:
    shards, model = corpus(tmp_path)  # one file: the reader emits its 60 rows as one block
    config = {
        "input": {"paths": [str(shards)]},
        "output": {"path": str(tmp_path / "out")},
        "stages": [{"op": "embed", "model": str(model), "resources": {"num_gpus": 1, "num_cpus": 1}}],
        "ray": {"progress": False},
    }
    actors = tmp_path / "actors.jsonl"
    done = subprocess.run(
        [sys.executable, "-c", PINNING, json.dumps(config), str(actors)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["kept"] == 60
    seen = [json.loads(line) for line in actors.read_text().splitlines()]
    started = [(pid, device) for pid, device, rows in seen if rows is None]
    assert len({pid for pid, _ in started}) == 4  # a fixed pool: one actor per logical GPU
    assert sorted(device for _, device in started) == ["0", "1", "2", "3"]
    rows = {pid: sum(r for p, _, r in seen if p == pid and r is not None) for pid, _ in started}
    assert sum(rows.values()) == 60 and all(rows.values()), rows  # every actor embedded a share
