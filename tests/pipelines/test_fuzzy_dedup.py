"""Fuzzy dedup end to end on real text: planted near-duplicates, boilerplate across languages, chains across
shards, a run killed after its signature step, and incremental runs against an earlier output's index."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from shardflow.config import validate
from shardflow.errors import ConfigError
from shardflow.pipelines.corpus import CorpusConfig, run_corpus
from shardflow.storage import Location
from support import jaccard, sample_records, write_shard

pytestmark = pytest.mark.usefixtures("ray_local")

LANGS = ("eng_Latn", "fra_Latn", "deu_Latn", "spa_Latn", "rus_Cyrl", "por_Latn", "ita_Latn", "pol_Latn")
STEEP = {"bands": 20, "rows": 5}  # P(pair found) = 0.9996 at Jaccard 0.8, 0.975 at 0.7, 0.05 at 0.3


def documents(per_doc: int = 6) -> list[tuple[str, str]]:
    """Web-page-sized documents of real text: ``per_doc`` consecutive UDHR articles of one language."""
    by_lang: dict[str, list[str]] = {}
    for record in sample_records():
        if record["lang"][0] in LANGS:
            by_lang.setdefault(record["lang"][0], []).append(record["text"])
    return [
        (lang, "\n".join(texts[i : i + per_doc]))
        for lang, texts in sorted(by_lang.items())
        for i in range(0, len(texts) - per_doc + 1, per_doc)
    ]


def edit(text: str, rate: float, rng: np.random.Generator) -> str:
    """Replace ``rate`` of the words (at least one) by new words."""
    words = text.split()
    for position in rng.choice(len(words), size=max(1, round(rate * len(words))), replace=False):
        words[position] = f"w{rng.integers(1 << 40):x}"
    return " ".join(words)


def run(tmp_path: Path, name: str, paths: list[Path], fuzzy: dict[str, Any], **stages: Any) -> dict[str, Any]:
    config = validate(
        {
            "input": {"paths": [str(p) for p in paths]},
            "output": {"path": str(tmp_path / name)},
            "stages": [*stages.get("before", []), {"op": "fuzzy_dedup", **fuzzy}],
        },
        CorpusConfig,
    )
    return run_corpus(config).manifest


def verdicts(tmp_path: Path, name: str, manifest: dict[str, Any]) -> dict[str, tuple[bool, str]]:
    """doc_id -> (kept, dup_cluster)."""
    import pyarrow.parquet as pq

    found = {}
    for entry in manifest["files"]:
        if entry["kind"] != "quarantine":
            for row in pq.read_table(tmp_path / name / entry["path"], columns=["doc_id", "dup_cluster"]).to_pylist():
                found[row["doc_id"]] = (entry["kind"] == "corpus", row["dup_cluster"])
    return found


def planted(tmp_path: Path) -> tuple[list[Path], list[tuple[str, str, float]]]:
    """Originals in one shard, a copy of each with 1%, 3% or 5% of its words edited in a later shard."""
    rng = np.random.default_rng(0)
    originals, copies, pairs = [], [], []
    for i, (_, text) in enumerate(documents()):
        rate = (0.01, 0.03, 0.05)[i % 3]
        copy = edit(text, rate, rng)
        originals.append({"id": f"o{i:03d}", "text": text})
        copies.append({"id": f"c{i:03d}", "text": copy})
        pairs.append((f"o{i:03d}", f"c{i:03d}", jaccard(text, copy)))
    paths = [
        write_shard(tmp_path / "in" / "a.jsonl.zst", originals),
        write_shard(tmp_path / "in" / "b.jsonl.zst", copies),
    ]
    return paths, pairs


def test_planted_near_duplicates_are_found_and_one_of_each_pair_is_kept(tmp_path: Path) -> None:
    paths, pairs = planted(tmp_path)
    similar = [p for p in pairs if p[2] >= 0.9]
    assert len(pairs) >= 40 and len(similar) >= 10 and min(p[2] for p in pairs) < 0.7  # a spread of similarities
    manifest = run(tmp_path, "out", paths, {})  # datatrove's parameters: 14 bands x 8 rows
    found = verdicts(tmp_path, "out", manifest)
    for original, copy, _ in similar:
        assert found[original] == (True, original)
        assert found[copy] == (False, original)
    assert all(found[original][0] for original, _, _ in pairs)  # distinct documents are never merged
    assert manifest["counts"]["dropped"] == manifest["fuzzy_dedup"]["duplicates"]
    assert manifest["counts"]["read"] == manifest["counts"]["kept"] + manifest["counts"]["dropped"]


def test_verification_keeps_exactly_the_pairs_above_the_threshold(tmp_path: Path) -> None:
    paths, pairs = planted(tmp_path)
    above = {copy for _, copy, similarity in pairs if similarity >= 0.8}
    assert 0 < len(above) < len(pairs)
    manifest = run(tmp_path, "out", paths, {**STEEP, "verify_threshold": 0.8})
    found = verdicts(tmp_path, "out", manifest)
    assert {doc for doc, (kept, _) in found.items() if not kept} == above
    facts = manifest["fuzzy_dedup"]
    assert facts["candidates"] > facts["verified"] >= len(above)  # LSH proposed pairs below 0.8 too


def test_shared_boilerplate_does_not_merge_documents_of_different_languages(tmp_path: Path) -> None:
    by_lang: dict[str, str] = {}
    for lang, text in documents(per_doc=3):
        by_lang.setdefault(lang, text)
    boilerplate = " ".join(documents()[0][1].split()[:120])  # 120 words of English on every page
    records = [{"id": lang, "text": f"{boilerplate}\n{text}"} for lang, text in by_lang.items()]
    assert all(0.1 < jaccard(records[0]["text"], r["text"]) < 0.6 for r in records[1:])
    manifest = run(tmp_path, "out", [write_shard(tmp_path / "in" / "pages.jsonl.zst", records)], STEEP)
    assert manifest["counts"]["kept"] == len(records) == len(LANGS)


def test_chains_across_shards_end_as_one_component(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    chains = []
    for lang, text in documents()[::6][:4]:
        chain = [text]
        for _ in range(6):
            chain.append(edit(chain[-1], 0.015, rng))
        assert jaccard(chain[0], chain[-1]) < 0.6 < min(jaccard(a, b) for a, b in zip(chain, chain[1:], strict=False))
        chains.append((lang, chain))
    for step in range(7):  # shard 0 holds the last link of each chain: input order runs against the chain
        records = [{"id": f"{lang}-{6 - step}", "text": chain[6 - step]} for lang, chain in chains]
        write_shard(tmp_path / "in" / f"{step}.jsonl.zst", records)
    manifest = run(tmp_path, "out", [tmp_path / "in"], STEEP)
    found = verdicts(tmp_path, "out", manifest)
    for lang, _ in chains:
        members = {doc: verdict for doc, verdict in found.items() if doc.startswith(lang)}
        assert [doc for doc, (kept, _) in members.items() if kept] == [f"{lang}-6"]
        assert {cluster for _, cluster in members.values()} == {f"{lang}-6"}
    assert manifest["fuzzy_dedup"]["components"] == len(chains)


def test_a_run_killed_after_its_signature_step_resumes_from_it(tmp_path: Path) -> None:
    paths, _ = planted(tmp_path)
    config = {
        "input": {"paths": [str(tmp_path / "in")]},
        "stages": [{"op": "langid"}, {"op": "fuzzy_dedup"}],
        "output": {"path": str(tmp_path / "out")},
        "ray": {"num_cpus": 2, "progress": False},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    driver = subprocess.Popen(
        [sys.executable, "-m", "shardflow.cli", "run", str(tmp_path / "run.yaml")],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    signed = tmp_path / "out" / "_staging"
    deadline = time.monotonic() + 180
    while not list(signed.glob("*/fuzzy_dedup/signatures/_DONE.json")) and time.monotonic() < deadline:
        assert driver.poll() is None, "the run ended before it could be killed"
        time.sleep(0.01)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    assert not list(signed.glob("*/fuzzy_dedup/resolved/_DONE.json"))

    resumed = run_corpus(validate(config, CorpusConfig)).manifest
    assert resumed["fuzzy_dedup"]["steps_run"] == ["edges", "resolved"]
    fresh_config = validate({**config, "output": {"path": str(tmp_path / "fresh")}}, CorpusConfig)
    fresh = run_corpus(fresh_config).manifest
    assert fresh["fuzzy_dedup"]["steps_run"] == ["signatures", "edges", "resolved"]
    assert verdicts(tmp_path, "out", resumed) == verdicts(tmp_path, "fresh", fresh)
    assert resumed["counts"] == fresh["counts"] and resumed["fuzzy_dedup"]["duplicates"] > 0


def test_incremental_run_against_an_index_equals_one_run_over_both_batches(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    docs = documents()
    batch1 = [{"id": f"1-{i}", "text": text} for i, (_, text) in enumerate(docs[:30])]
    batch2 = [{"id": f"2-{i}", "text": edit(docs[i][1], 0.01, rng)} for i in range(0, 30, 3)]  # against batch 1
    batch2 += [{"id": f"2-new-{i}", "text": text} for i, (_, text) in enumerate(docs[30:])]
    batch2 += [{"id": f"2-copy-{i}", "text": edit(text, 0.01, rng)} for i, (_, text) in enumerate(docs[30:])]
    write_shard(tmp_path / "in" / "night1" / "a.jsonl.zst", batch1)
    write_shard(tmp_path / "in" / "night2" / "a.jsonl.zst", batch2[::2])
    write_shard(tmp_path / "in" / "night2" / "b.jsonl.zst", batch2[1::2])

    first = run(tmp_path, "first", [tmp_path / "in" / "night1"], {})
    index = str(tmp_path / "first" / "dedup_index")
    second = run(tmp_path, "second", [tmp_path / "in" / "night2"], {"index_from": index})
    both = run(tmp_path, "both", [tmp_path / "in" / "night1", tmp_path / "in" / "night2"], {})

    incremental = verdicts(tmp_path, "first", first) | verdicts(tmp_path, "second", second)
    assert incremental == verdicts(tmp_path, "both", both)
    assert second["fuzzy_dedup"]["duplicates"] >= 10 + len(docs[30:]) - 1
    assert second["fuzzy_dedup"]["bridged"] == 0
    assert (tmp_path / "second" / "dedup_index" / "index.json").exists()

    with pytest.raises(ConfigError, match="already in the index"):
        run(tmp_path, "again", [tmp_path / "in" / "night1"], {"index_from": index})
    with pytest.raises(ConfigError, match="MinHash parameters differ"):
        run(tmp_path, "other", [tmp_path / "in" / "night2"], {"index_from": index, "rows": 9})


def test_every_step_and_the_index_live_on_s3(s3_storage) -> None:
    storage, bucket = s3_storage
    fs, _ = Location(f"s3://{bucket}", storage).filesystem()
    rng = np.random.default_rng(3)
    docs = documents()[:20]
    night1 = [{"id": f"1-{i}", "text": text} for i, (_, text) in enumerate(docs)]
    night2 = [{"id": f"2-{i}", "text": edit(text, 0.01, rng)} for i, (_, text) in enumerate(docs[:5])]
    for name, records in (("night1", night1), ("night2", night2)):
        fs.pipe_file(f"{bucket}/in/{name}/a.jsonl", "".join(json.dumps(r) + "\n" for r in records).encode())
    settings = storage.model_dump(mode="json") | {"key": "testing", "secret": "testing"}

    def run_night(name: str, fuzzy: dict[str, Any]) -> dict[str, Any]:
        config = {
            "input": {"paths": [f"s3://{bucket}/in/{name}/"]},
            "output": {"path": f"s3://{bucket}/{name}"},
            "stages": [{"op": "fuzzy_dedup", "verify_threshold": 0.8, **fuzzy}],
            "storage": settings,
        }
        return run_corpus(validate(config, CorpusConfig)).manifest

    first = run_night("night1", {})
    assert first["counts"]["dropped"] == 0 and fs.exists(f"{bucket}/night1/dedup_index/index.json")
    second = run_night("night2", {"index_from": f"s3://{bucket}/night1/dedup_index"})
    assert second["counts"]["dropped"] == second["fuzzy_dedup"]["duplicates"] == 5
    index = json.loads(fs.cat_file(f"{bucket}/night2/dedup_index/index.json"))
    assert index["parts"] == [f"s3://{bucket}/night1/dedup_index", "."]  # the old index by reference, not copied
    assert len(index["shards"]) == 2 and fs.glob(f"{bucket}/night2/dedup_index/nodes/*.parquet")
    assert not fs.exists(f"{bucket}/night2/_staging")
