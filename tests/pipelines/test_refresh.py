"""The nightly refresh: nights of shards with duplicates across nights, versions published atomically, the
result equal to a from-scratch run, idempotent, and resumable after a crash at any step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shardflow.cli import main
from shardflow.config import validate
from shardflow.errors import ConfigError, OutputStateError
from shardflow.pipelines import refresh as refresh_module
from shardflow.pipelines.corpus import CorpusConfig, run_corpus
from shardflow.pipelines.refresh import RefreshConfig, current_version, refresh
from shardflow.storage import Location, StorageConfig
from support import sample_records, write_tiny_encoder

pytestmark = pytest.mark.usefixtures("ray_local")

LANGS = ("eng_Latn", "fra_Latn", "deu_Latn", "spa_Latn", "rus_Cyrl")


def documents() -> list[str]:
    """Web-page-sized texts: three consecutive UDHR articles of one language each (50 of them)."""
    by_lang: dict[str, list[str]] = {}
    for record in sample_records():
        if record["lang"][0] in LANGS:
            by_lang.setdefault(record["lang"][0], []).append(record["text"])
    return ["\n".join(texts[i : i + 3]) for _, texts in sorted(by_lang.items()) for i in range(0, len(texts) - 2, 3)]


def edit(text: str, rng: np.random.Generator) -> str:
    """One word in a hundred replaced: a near-duplicate (Jaccard of 5-grams about 0.9)."""
    words = text.split()
    for position in rng.choice(len(words), size=max(1, len(words) // 100), replace=False):
        words[position] = f"w{rng.integers(1 << 40):x}"
    return " ".join(words)


def nights() -> list[dict[str, list[dict[str, str]]]]:
    """Three nights of shards (shard name -> records); later nights repeat earlier ones exactly (other case
    and spacing) and nearly, repeat themselves, and reuse an earlier night's id."""
    docs, rng = documents(), np.random.default_rng(7)
    assert len(docs) >= 37
    one = [{"id": f"n1-{i}", "text": docs[i]} for i in range(12)] + [{"id": "n1-copy", "text": docs[0]}]
    two = [{"id": f"n2-{i}", "text": docs[i]} for i in range(12, 22)]
    two += [{"id": "n2-exact", "text": docs[1].upper()}, {"id": "n2-space", "text": "  " + docs[2] + "\n"}]
    two += [{"id": f"n2-near-{i}", "text": edit(docs[i], rng)} for i in (3, 4, 13)]
    two += [{"id": "n1-5", "text": docs[36]}]  # a night-1 id with another text: a repeated id, not a document
    three_a = [{"id": f"n3-{i}", "text": docs[i]} for i in range(22, 30)] + [{"id": "n3-exact", "text": docs[12]}]
    three_b = [{"id": f"n3-{i}", "text": docs[i]} for i in range(30, 36)]
    three_b += [{"id": f"n3-near-{i}", "text": edit(docs[i], rng)} for i in (5, 14, 23)]
    return [
        {"2026-11-01/a.jsonl": one},
        {"2026-11-02/a.jsonl": two[::2], "2026-11-02/b.jsonl": two[1::2]},
        {"2026-11-03/a.jsonl": three_a, "2026-11-03/b.jsonl": three_b},
    ]


def stages(model: Path) -> list[dict[str, Any]]:
    return [
        {"op": "exact_dedup", "partitions": 2},
        {"op": "fuzzy_dedup", "partitions": 2},
        {"op": "embed", "model": str(model), "token_budget": 512},
    ]


def put(storage: StorageConfig, uri: str, records: list[dict[str, str]]) -> None:
    Location(uri, storage).put_bytes("".join(json.dumps(record) + "\n" for record in records).encode())


def corpus_rows(root: str, files: list[dict[str, Any]], storage: StorageConfig) -> dict[str, tuple[bool, str]]:
    """doc_id -> (kept, dup_cluster) over a corpus's corpus and removed files."""
    return {
        doc: (entry["kind"] == "corpus", cluster)
        for entry in files
        if entry["kind"] != "quarantine"
        for doc, cluster in zip(
            *Location(root, storage).join(entry["path"]).read_table(["doc_id", "dup_cluster"]).to_pydict().values(),
            strict=True,
        )
    }


def index_contents(folder: Location) -> dict[str, np.ndarray]:
    """doc_id -> its vector, read back from a built index."""
    import faiss

    index = faiss.deserialize_index(np.frombuffer(folder.join("index.faiss").read_bytes(), dtype=np.uint8))
    ids = folder.join("ids.parquet").read_table().to_pydict()
    assert len(set(ids["doc_id"])) == len(ids["doc_id"]) == index.ntotal
    return {doc: index.reconstruct(int(i)) for i, doc in zip(ids["id"], ids["doc_id"], strict=True)}


def assert_equal_to_from_scratch(root: str, inputs: str, scratch: str, model: Path, settings: dict[str, Any]) -> None:
    """The published corpus == one run over every input: same verdict for every document, same index."""
    storage = StorageConfig(**settings)
    record = current_version(Location(root, storage))
    config = {"input": {"paths": [inputs]}, "output": {"path": scratch}, "stages": stages(model), "index": {}}
    manifest = run_corpus(validate(config | {"storage": settings}, CorpusConfig)).manifest
    verdicts = corpus_rows(root, record["files"], storage)
    assert verdicts == corpus_rows(scratch, manifest["files"], storage)
    assert record["counts"] == manifest["counts"]
    published = index_contents(Location(root, storage).join(record["index"]["path"]))
    built = index_contents(Location(scratch, storage).join("index"))
    assert sorted(published) == sorted(built) == sorted(doc for doc, (kept, _) in verdicts.items() if kept)
    assert all(np.allclose(published[doc], built[doc], atol=2e-3) for doc in built)


def test_three_nights_on_s3_equal_a_run_over_all_shards(s3_storage, tmp_path: Path) -> None:
    storage, bucket = s3_storage
    model = write_tiny_encoder(tmp_path / "model", "bert", documents())
    settings = storage.model_dump(mode="json") | {"key": "testing", "secret": "testing"}
    root = f"s3://{bucket}/corpus"
    config = validate(
        {
            "input": {"paths": [f"s3://{bucket}/in/"]},
            "output": {"path": root, "keep_versions": 2},
            "stages": stages(model),
            "index": {},
            "storage": settings,
        },
        RefreshConfig,
    )
    fs, _ = Location(root, storage).filesystem()
    records = []
    for number, night in enumerate(nights(), 1):
        for name, rows in night.items():
            put(storage, f"s3://{bucket}/in/{name}", rows)
        result = refresh(config)
        assert result.published and result.version == number
        records.append(result.record)
        earlier = records[-2] if number > 1 else None
        if earlier:  # the version before is still whole: its readers are not disturbed
            assert all(fs.exists(f"{bucket}/corpus/{entry['path']}") for entry in earlier["files"])
            assert result.record["mode"] == "incremental" and result.record["index"]["extended"]
    one, two, three = records
    assert two["this_version"]["counts"]["dropped"] == 5  # two exact, three near copies of night 1
    assert two["this_version"]["counts"]["quarantined"] == 1  # the id night 1 had, checked against its id_index
    assert three["this_version"]["counts"]["dropped"] == 4
    assert three["counts"]["read"] == sum(len(rows) for night in nights() for rows in night.values())
    assert [entry["uri"].rsplit("/in/", 1)[1] for entry in three["inputs"]] == [
        name for night in nights() for name in night
    ]
    assert not fs.exists(f"{bucket}/corpus/versions/v000001")  # keep_versions: 2
    assert fs.exists(f"{bucket}/corpus/segments/s000001")  # still part of versions 2 and 3

    again = refresh(config)  # nothing new: nothing published
    assert not again.published and again.version == 3
    assert json.loads(fs.cat_file(f"{bucket}/corpus/CURRENT.json"))["version"] == 3

    assert_equal_to_from_scratch(root, f"s3://{bucket}/in/", f"s3://{bucket}/scratch", model, settings)


class Crash(RuntimeError):
    pass


def crash_after(monkeypatch: pytest.MonkeyPatch, name: str, suffix: str = "") -> None:
    """Make ``refresh_module.name`` raise right after it has done its work (once; for a call whose first
    argument ends with ``suffix``)."""
    real = getattr(refresh_module, name)

    def crashing(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        if str(args[0]).endswith(suffix):
            monkeypatch.setattr(refresh_module, name, real)
            raise Crash(name)

    monkeypatch.setattr(refresh_module, name, crashing)


def test_a_refresh_that_crashes_at_any_step_publishes_on_rerun_what_an_uninterrupted_one_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = write_tiny_encoder(tmp_path / "model", "bert", documents())
    inputs = tmp_path / "in"
    config_path = tmp_path / "refresh.yaml"
    config_path.write_text(
        json.dumps(
            {
                "input": {"paths": [str(inputs)]},
                "output": {"path": str(tmp_path / "corpus")},
                "stages": stages(model),
                "index": {},
                "ray": {"progress": False},
            }
        )
    )
    config = validate(json.loads(config_path.read_text()), RefreshConfig)
    storage = StorageConfig()
    one, two, three = nights()
    for name, rows in one.items():
        put(storage, str(inputs / name), rows)
    assert main(["refresh", str(config_path)]) == 0

    for name, rows in two.items():
        put(storage, str(inputs / name), rows)
    for step, suffix in (("run_corpus", ""), ("ensure_version_index", ""), ("write_version_record", "")):
        crash_after(monkeypatch, step, suffix)  # after: the segment, the index, version.json (not yet current)
        with pytest.raises(Crash):
            refresh(config)
        assert current_version(Location(config.output.path, storage))["version"] == 1
    for name, rows in three.items():  # new shards arrive before the rerun: the attempt starts over with them
        put(storage, str(inputs / name), rows)
    result = refresh(config)
    assert result.published and result.version == 2 and result.record["this_version"]["shards"] == 4
    assert not refresh(config).published
    assert_equal_to_from_scratch(config.output.path, str(inputs), str(tmp_path / "scratch"), model, {})
    (tmp_path / "queries.tsv").write_text("q1\t" + " ".join(documents()[20].split()) + "\n")
    assert (
        main(["search", config.output.path, "--queries", str(tmp_path / "queries.tsv"), "--out", str(tmp_path / "run")])
        == 0
    )
    assert (tmp_path / "run").read_text().split()[2] == "n2-20"  # the current version's index, via CURRENT.json

    (inputs / "2026-11-01" / "a.jsonl").write_text(json.dumps({"id": "changed", "text": documents()[40]}) + "\n")
    rebuilt = refresh(config)
    assert rebuilt.record["mode"] == "full" and "changed since published" in rebuilt.record["reason"]
    assert rebuilt.record["segments"] == ["segments/s000003"] and not rebuilt.record["index"]["extended"]
    assert_equal_to_from_scratch(config.output.path, str(inputs), str(tmp_path / "scratch2"), model, {})

    (inputs / "2026-11-02" / "b.jsonl").unlink()  # a published shard leaves the inputs (retention)
    assert not refresh(config).published  # its documents stay published
    with pytest.raises(OutputStateError, match="1 published shard.s. are no longer in the inputs"):
        refresh(config, rebuild=True)  # a full rebuild would drop them: only with drop_missing


def test_a_refresh_manages_its_own_dedup_indexes() -> None:
    with pytest.raises(ConfigError, match="stages.0.index_from: .*a refresh dedups against its own"):
        validate(
            {
                "input": {"paths": ["in"]},
                "output": {"path": "out"},
                "stages": [{"op": "fuzzy_dedup", "index_from": "elsewhere/dedup_index"}],
            },
            RefreshConfig,
        )


def test_only_settings_that_change_the_corpus_force_a_full_rebuild() -> None:
    def fingerprint(**changes: Any) -> str:
        stages = [{"op": "exact_dedup"}, {"op": "fuzzy_dedup"}, {"op": "embed", "model": "m"}]
        for position, change in changes.items():
            stages[int(position[1:])] |= change
        config = {"input": {"paths": ["in"]}, "output": {"path": "out"}, "stages": stages}
        return validate(config, RefreshConfig).corpus_fingerprint()

    same = fingerprint()
    assert fingerprint(s0={"partitions": 3}, s1={"resources": {"num_cpus": 4}}, s2={"token_budget": 64}) == same
    assert fingerprint(s1={"bands": 20}) != same and fingerprint(s2={"max_length": 128}) != same


def test_the_pointer_flips_only_from_the_version_it_was_built_on(tmp_path: Path) -> None:
    root = Location(str(tmp_path))
    refresh_module.publish(root, 1, None)
    with pytest.raises(OutputStateError, match="changed while this refresh built version 2"):
        refresh_module.publish(root, 2, None)  # another writer published version 1 meanwhile
    _, pointed = root.join(refresh_module.CURRENT).read_versioned()
    refresh_module.publish(root, 2, pointed)
    with pytest.raises(OutputStateError, match="another writer published"):
        refresh_module.publish(root, 3, pointed)  # built on version 1's pointer, which version 2 replaced
    assert root.join(refresh_module.CURRENT).read_json()["version"] == 2
