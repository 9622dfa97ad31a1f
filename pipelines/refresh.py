"""The nightly corpus refresh: process only the shards that are new, publish a new version atomically.

Layout of a refreshed corpus (``output.path``, local or s3://)::

    ROOT/CURRENT.json                       the pointer: {"version": N, "manifest": "versions/v00000N/version.json"}
    ROOT/versions/v00000N/version.json      version N: its segments, every corpus file, inputs, counts, indexes
    ROOT/versions/v00000N/index/            the dense index over every kept document of version N
    ROOT/segments/s00000N/                  a corpus output (``shardflow run``) over the shards new in version N

Version N+1 = version N's segments + one new segment. The segment is an ordinary corpus run over the new
shards whose dedup stages take the published corpus's dedup indexes as ``index_from``: a new document that
repeats (exactly or nearly) a published one is dropped in favour of it, and new documents are deduplicated
among themselves. The dense index of N+1 is N's index with the new vectors added (same training), or a
fresh build over every segment when ``index.factory: auto`` would now pick another kind of index.

A shard whose size or etag changed since it was published, a change of the stages, or ``--rebuild`` makes
version N+1 a full rebuild: one segment over every input. Shards that disappeared from the inputs stay in
the corpus (a refresh only adds) and are listed in the version; a full rebuild would drop them, so it is
refused while any are missing, unless ``--drop-missing`` says that is meant.

Publishing: everything of N+1 is written under new names first; then ``CURRENT.json`` is replaced, one
small object (atomic on S3, a rename locally). Readers that resolved N keep reading N's files, which are
never modified; ``keep_versions`` versions stay, older ones and the segments only they used are deleted.
An attempt writes ``plan.json`` into its version folder first: a rerun after a crash with the same plan
resumes (the segment run and the index step are restartable), one whose inputs changed meanwhile starts
the version over. A refresh with nothing new publishes nothing. One refresh at a time per output: each
holds a lease (``_refresh.lease``, ``shardflow/lease.py``) while it works.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pydantic import Field, model_validator
from rich.console import Console

from shardflow.cluster.runtime import ray_session
from shardflow.config import StrictModel
from shardflow.errors import OutputStateError
from shardflow.lease import Lease, lease
from shardflow.operators.index import build_index, choose_factory, mergeable, read_index_card, write_index_card
from shardflow.operators.registry import STAGES
from shardflow.output.corpus import WriterConfig
from shardflow.output.manifest import CORPUS
from shardflow.pipelines.corpus import CorpusConfig, run_corpus
from shardflow.progress import watching
from shardflow.shards import Shard, list_shards
from shardflow.steps import finished, mark_finished
from shardflow.storage import ConditionalWritesUnsupported, Location, join

__all__ = ["RefreshConfig", "RefreshResult", "current_version", "refresh"]

CURRENT = "CURRENT.json"
VERSION_FILE = "version.json"
PLAN_FILE = "plan.json"
LEASE_FILE = "_refresh.lease"  # one refresh at a time per output
log = logging.getLogger(__name__)
VERSION_FORMAT = "shardflow-corpus-version/1"
TUNING = ("resources", "partitions", "token_budget")  # stage settings that change speed, not the corpus
READING = ("paths", "batch_rows", "batch_bytes", "task_bytes", "id_index_from")  # input settings, likewise
INDEX_BUILD = ("factory", "metric", "memory_budget_mb", "train_vectors")  # index settings that change its contents


class RefreshOutputConfig(StrictModel):
    """The ``output`` section of a refresh: the published corpus's root and how many versions it keeps."""

    path: str = Field(description="Root of the published corpus, local or s3://.")
    keep_versions: int = Field(3, ge=1, description="Published versions kept (readers of older ones may break).")
    compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd"


class RefreshConfig(CorpusConfig):
    """A corpus config whose output is a versioned, refreshed corpus (``input.paths``: where shards land)."""

    output: RefreshOutputConfig

    @model_validator(mode="after")
    def _indexes_are_managed(self) -> RefreshConfig:
        if self.input.id_index_from is not None:
            raise ValueError("input.id_index_from: a refresh checks ids against its own published corpus; remove it")
        for position, stage in enumerate(self.stages):
            if STAGES.index_of(stage) and stage.index_from is not None:
                raise ValueError(
                    f"stages.{position}.index_from: a refresh dedups against its own published corpus; remove it"
                )
        return self

    def corpus_fingerprint(self) -> str:
        """What makes published documents comparable with new ones: the stages' settings that decide what
        they keep and write, and how inputs are read (not how many workers or partitions do the work)."""
        identity = {
            "stages": [stage.model_dump(mode="json", exclude=set(TUNING)) for stage in self.stages],
            "input": self.input.model_dump(mode="json", exclude=set(READING)),
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class RefreshResult:
    version: int | None  # the current version after this refresh (None: nothing ever published)
    published: bool
    record: dict[str, Any] | None  # version.json of the current version
    seconds: float


def refresh(
    config: RefreshConfig, rebuild: bool = False, drop_missing: bool = False, console: Console | None = None
) -> RefreshResult:
    """Publish version N+1 if the inputs hold anything new (or ``rebuild``); else leave version N as it is.
    ``drop_missing`` lets a full rebuild leave out published shards that are no longer in the inputs. The
    build's progress is shown on ``console``, if given."""
    started = time.monotonic()
    with lease(_root_of(config).join(LEASE_FILE), f"a refresh of {config.output.path}") as held:
        version, published, record = _refresh_once(config, held, rebuild, drop_missing, console)
    return RefreshResult(version, published, record, time.monotonic() - started)


def _refresh_once(
    config: RefreshConfig, held: Lease, rebuild: bool, drop_missing: bool, console: Console | None
) -> tuple[int | None, bool, dict[str, Any] | None]:
    """The refresh under the lease: (current version, whether this call published it, its record)."""
    root = _root_of(config)
    current, pointed = root.join(CURRENT).read_versioned()
    published = root.join(current["manifest"]).read_json() if current else None
    shards = list_shards([Location(path, config.storage) for path in config.input.paths])
    plan = _plan_version(config, published, shards, rebuild, drop_missing)
    if plan is None:
        _collect_garbage(config, current["version"] if current else 0)
        return (current and current["version"]), False, published
    shown = console if config.ray.progress else None
    with (
        ray_session(config.ray.address, config.ray.num_cpus, config.ray.verbose),
        watching(shown, config.ray.progress_interval),
    ):
        record = _build_version(config, plan, published, held)
    held.check()
    write_version_record(root, plan["version"], record)
    held.check()
    publish(root, plan["version"], pointed)
    _collect_garbage(config, plan["version"])
    return plan["version"], True, record


def write_version_record(root: Location, version: int, record: dict[str, Any]) -> None:
    """``version.json`` of a version: written before the version is published, never changed after."""
    root.join(_version_folder(version), VERSION_FILE).put_bytes(dumps(record))


def publish(root: Location, version: int, pointed: str | None) -> None:
    """Replace ``CURRENT.json``: the moment version N+1 is published (one small object, atomic), only if it
    is still the pointer (``pointed``: its version when read; None: there was none) this version was built
    on. Where the store has no conditional writes, the lease alone keeps writers apart."""
    pointer = {"version": version, "manifest": join(_version_folder(version), VERSION_FILE)}
    where = root.join(CURRENT)
    try:
        flipped = where.create_json(pointer) if pointed is None else where.replace_json(pointer, pointed)
    except ConditionalWritesUnsupported:
        log.warning("%s has no conditional writes: %s is replaced unconditionally", root, CURRENT)
        where.put_bytes(dumps(pointer))
        return
    if flipped is None:
        raise OutputStateError(
            f"{where} changed while this refresh built version {version} (another writer published); "
            f"version {version} was not published: run the refresh again"
        )


def _plan_version(
    config: RefreshConfig, published: dict[str, Any] | None, shards: list[Shard], rebuild: bool, drop_missing: bool
) -> dict[str, Any] | None:
    """What version N+1 processes and why, or None when the inputs hold nothing new."""
    known = {entry["uri"]: entry for entry in published["inputs"]} if published else {}
    missing = sorted(set(known) - {shard.uri for shard in shards})
    new = [shard for shard in shards if shard.uri not in known]
    reason = _full_rebuild_reason(config, published, known, shards, rebuild)
    if reason is None and not new:
        return None
    full = reason is not None
    if full and missing and not drop_missing:
        raise OutputStateError(
            f"version {published['version'] + 1} must be a full rebuild ({reason}), but {len(missing)} published "
            f"shard(s) are no longer in the inputs (e.g. {missing[0]}): a rebuild would drop their documents. "
            "Restore them, or run with --drop-missing"
        )
    plan = {
        "version": (published["version"] if published else 0) + 1,
        "parent": published["version"] if published else None,
        "mode": "full" if full else "incremental",
        "reason": reason or f"{len(new)} new shard(s)",
        "shards": [[shard.uri, shard.size, shard.version] for shard in (shards if full else new)],
        "missing": missing,
        "corpus_fingerprint": config.corpus_fingerprint(),
        "index": config.index.model_dump(mode="json") if config.index else None,
    }
    segment = _segment_config(config, plan, None if full else published)
    return plan | {"segment_fingerprint": segment.fingerprint()}  # any other setting that changes the segment


def _full_rebuild_reason(
    config: RefreshConfig,
    published: dict[str, Any] | None,
    known: dict[str, dict[str, Any]],
    shards: list[Shard],
    rebuild: bool,
) -> str | None:
    """Why version N+1 must be built from every input, or None when it can add to version N."""
    if published is None:
        return "first version"
    if rebuild:
        return "--rebuild"
    changed = [
        shard.uri
        for shard in shards
        if shard.uri in known and (shard.size, shard.version) != (known[shard.uri]["size"], known[shard.uri]["version"])
    ]
    if changed:
        return f"{len(changed)} shard(s) changed since published, e.g. {changed[0]}"
    if published["corpus_fingerprint"] != config.corpus_fingerprint():
        return "the stages changed"
    return None


def _build_version(
    config: RefreshConfig, plan: dict[str, Any], published: dict[str, Any] | None, held: Lease
) -> dict[str, Any]:
    """Run the new segment and the index of version N+1; return its ``version.json`` (not yet published)."""
    parent = published if plan["mode"] == "incremental" else None
    held.check()
    _start_attempt(config, plan)
    segment = _segment_folder(plan["version"])
    manifest = run_corpus(_segment_config(config, plan, parent)).manifest
    files = (parent["files"] if parent else []) + [
        {**entry, "path": join(segment, entry["path"])} for entry in manifest["files"]
    ]
    inputs = (parent["inputs"] if parent else []) + [{**entry, "segment": segment} for entry in manifest["inputs"]]
    record = {
        "format": VERSION_FORMAT,
        "version": plan["version"],
        "parent": plan["parent"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "mode": plan["mode"],
        "reason": plan["reason"],
        "corpus_fingerprint": plan["corpus_fingerprint"],
        "segments": (parent["segments"] if parent else []) + [segment],
        "counts": _add_counts(parent["counts"] if parent else {}, manifest["counts"]),
        "this_version": {"segment": segment, "shards": len(manifest["inputs"]), "counts": manifest["counts"]},
        "inputs": inputs,
        "missing_inputs": plan["missing"] if parent else [],
        "files": files,
        **{name: join(segment, name) for name in _dedup_indexes(config)},
    }
    if config.index is not None:
        record["index"] = ensure_version_index(config, plan, files, parent)
    return record


def _start_attempt(config: RefreshConfig, plan: dict[str, Any]) -> None:
    """Resume an attempt at this version with the same plan; clear one with another plan (its inputs
    changed meanwhile: nothing of it was published)."""
    root = _root_of(config)
    plan_file = root.join(_version_folder(plan["version"]), PLAN_FILE)
    if plan_file.read_json() == plan:
        return
    for folder in (_version_folder(plan["version"]), _segment_folder(plan["version"])):
        root.join(folder).remove()
    plan_file.put_bytes(dumps(plan))


def _segment_config(config: RefreshConfig, plan: dict[str, Any], parent: dict[str, Any] | None) -> CorpusConfig:
    """The corpus run of the new shards; with a parent, the stages that leave an index continue the parent's."""
    stages = [
        stage.model_copy(update={"index_from": join(config.output.path, parent[STAGES.index_of(stage)])})
        if parent is not None and STAGES.index_of(stage)
        else stage
        for stage in config.stages
    ]
    ids_from = parent.get(STAGES.id_index(config.input)) if parent is not None else None
    paths = [shard[0] for shard in plan["shards"]]
    return CorpusConfig(
        input=config.input.model_copy(
            update={"paths": paths, "id_index_from": join(config.output.path, ids_from) if ids_from else None}
        ),
        output=WriterConfig(
            path=join(config.output.path, _segment_folder(plan["version"])),
            if_exists="resume",
            compression=config.output.compression,
        ),
        stages=stages,
        storage=config.storage,
        ray=config.ray,
        max_error_fraction=config.max_error_fraction,
    )


def _dedup_indexes(config: RefreshConfig) -> list[str]:
    """The indexes the stages (and the input's own id pass) leave beside each segment, by folder name."""
    indexes = [STAGES.id_index(config.input), *map(STAGES.index_of, config.stages)]
    return [index for index in indexes if index]


def _root_of(config: RefreshConfig) -> Location:
    return Location(config.output.path, config.storage)


def ensure_version_index(
    config: RefreshConfig, plan: dict[str, Any], files: list[dict[str, Any]], parent: dict[str, Any] | None
) -> dict[str, Any]:
    """The dense index of every kept document: the parent's with the new segment's vectors added, or built
    anew (first or full version, a changed index config, or ``auto`` choosing another kind of index)."""
    root = _root_of(config)
    folder = join(_version_folder(plan["version"]), "index")
    corpus = [entry for entry in files if entry["kind"] == CORPUS and entry["rows"]]
    base = root.join(parent["index"]["path"]) if parent and parent.get("index") else None
    if base and not _extends(config, parent, corpus):
        base = None
    added = [entry for entry in corpus if not base or entry["path"].startswith(_segment_folder(plan["version"]) + "/")]
    index = root.join(folder)
    if not finished(index, [entry["path"] for entry in added]):
        staged = [root.join(entry["path"]) for entry in added]
        facts = build_index(staged, index, config.index, base) if staged or base else {"vectors": 0}
        write_index_card(index, facts, config.index, config.encoder)
        mark_finished(index, [entry["path"] for entry in added], **facts, extended=bool(base))
    card = read_index_card(index)
    return {
        "path": folder,
        "factory": card.get("factory"),
        "vectors": card["vectors"],
        "extended": bool(base),
        "config": config.index.model_dump(mode="json"),
    }


def _extends(config: RefreshConfig, parent: dict[str, Any], corpus: list[dict[str, Any]]) -> bool:
    """Whether the parent's index can take the new vectors: same index config, and the factory that
    ``auto`` would choose for the grown corpus is the one it has."""
    index = parent["index"]
    factory = index.get("factory")  # None: the parent kept no documents to index
    built_as = {key: (index.get("config") or {}).get(key) for key in INDEX_BUILD}
    if factory is None or not mergeable(factory) or built_as != config.index.model_dump(include=set(INDEX_BUILD)):
        return False
    if config.index.factory != "auto":
        return True
    card = read_index_card(_root_of(config).join(index["path"]))
    total = sum(entry["rows"] for entry in corpus)
    return choose_factory(total, int(card["dim"]), config.index.memory_budget_mb << 20) == card["factory"]


def _add_counts(before: dict[str, int], night: dict[str, int]) -> dict[str, int]:
    return {key: before.get(key, 0) + night[key] for key in ("read", "kept", "dropped", "quarantined")}


def _collect_garbage(config: RefreshConfig, current: int) -> list[str]:
    """Delete versions older than the ``keep_versions`` newest published ones, and the segments that only
    they used; an attempt at a version not yet published is left alone."""
    root = _root_of(config)
    kept = range(max(1, current - config.output.keep_versions + 1), current + 1)
    used = set()
    for number in kept:
        record = root.join(_version_folder(number), VERSION_FILE).read_json()
        used |= set(record["segments"]) if record else set()
    removed = []
    for kind, name in (("versions", _version_folder), ("segments", _segment_folder)):
        for entry in root.join(kind).children():
            number = _folder_number(entry.name)
            if number is not None and number < kept.start and name(number) not in used:
                entry.remove()
                removed.append(name(number))
    return removed


def _version_folder(number: int) -> str:
    return f"versions/v{number:06d}"


def _segment_folder(number: int) -> str:
    return f"segments/s{number:06d}"


def _folder_number(name: str) -> int | None:
    return int(name[1:]) if name[1:].isdigit() else None


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2)


def current_version(root: Location) -> dict[str, Any] | None:
    """The published version's record (``version.json``), for readers; None if ``root`` is no refreshed corpus."""
    pointer = root.join(CURRENT).read_json()
    return root.join(pointer["manifest"]).read_json() if pointer else None
