"""The embed stage in the corpus job: vectors land in the corpus; GPU stages get one pinned actor per GPU
(Ray's logical GPUs stand in for real ones), and run on CPU actors where the cluster has none."""

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
    import json, os, sys
    import ray
    from shardflow.pipelines import corpus
    from shardflow.operators.embed import Embedder
    from shardflow.operators.registry import STAGES

    class Probe(Embedder):
        record = sys.argv[2]  # a class attribute travels with the class into the actors; sys.argv does not

        def __init__(self, config, storage):
            super().__init__(config, storage)
            with open(self.record, "a") as out:
                out.write(json.dumps([os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")]) + "\\n")

    STAGES.implementations["embed"] = Probe
    ray.init(num_cpus=8, num_gpus=4, include_dashboard=False, log_to_driver=False)
    # Ray Data starts pool actors asynchronously: a small job can end before a slow fourth one is up
    ray.data.DataContext.get_current().wait_for_min_actors_s = 300
    config = corpus.CorpusConfig.model_validate_json(sys.argv[1])
    manifest = corpus.run_corpus(config).manifest
    print(json.dumps(manifest["counts"]))
    """
)


def test_gpu_stage_runs_one_actor_per_gpu_each_on_its_own_device(tmp_path: Path) -> None:
    shards, model = corpus(tmp_path)
    config = {
        "input": {"paths": [str(shards)], "batch_rows": 10},
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
    assert len({pid for pid, _ in seen}) == 4  # a fixed pool: one actor per logical GPU
    assert sorted(device for _, device in seen) == ["0", "1", "2", "3"]
