"""The writer: parquet partitioned by language, staged, checked, committed; then ``manifest.json``.

Layout of an output::

    OUTPUT/manifest.json                 written last: an output is complete if and only if it exists
    OUTPUT/corpus/lang=xxx_Scri/*.parquet    kept documents
    OUTPUT/removed/lang=xxx_Scri/*.parquet   documents a stage dropped, with drop_reason
    OUTPUT/quarantine/*.parquet          records that never became documents: source, reason, raw bytes
    OUTPUT/_staging/<fingerprint>/       a run in progress (same tree, plus shards/ and stats/)

Write tasks put data files under staging, named by (shard, first line), so a retried task overwrites
rather than duplicates, and then a stats file listing what they wrote. Read tasks leave one marker per
shard with its row count. A shard is finished when the rows its files hold add up to its marker, so a
rerun after a crash keeps finished shards and redoes the rest; the commit checks every shard again,
moves the files into place and writes the manifest. Nothing outside ``_staging`` exists before that.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field
from ray.data import Datasink

from shardflow.config import StrictModel
from shardflow.errors import OutputStateError
from shardflow.operators.readers import Shard, shard_key
from shardflow.schema import (
    BOOKKEEPING,
    DROP_REASON,
    LANG,
    QUARANTINE_COLUMNS,
    QUARANTINE_REASON,
    RAW,
    SECONDS_PREFIX,
    SOURCE,
    split_source,
)
from shardflow.storage import StorageConfig, filesystem, join, parquet_encodings, put_bytes, write_atomic

CORPUS, REMOVED, QUARANTINE = "corpus", "removed", "quarantine"
KINDS = (CORPUS, REMOVED, QUARANTINE)
MANIFEST = "manifest.json"
DEDUP_INDEX = "dedup_index"  # fuzzy dedup's band index, kept with the corpus for incremental runs
EXACT_INDEX = "exact_index"  # exact dedup's keys, kept for the same reason
DENSE_INDEX = "index"  # the FAISS index over the corpus's embeddings
ARTIFACTS = (DEDUP_INDEX, EXACT_INDEX, DENSE_INDEX)  # folders built in staging beside the corpus, moved at commit
COMMIT_PLAN = "COMMIT.json"
NO_LANG = "und_Zyyy"


class WriterConfig(StrictModel):
    """The ``output`` section."""

    path: str = Field(description="Output directory, local or s3://.")
    if_exists: Literal["resume", "overwrite", "error"] = Field(
        "resume",
        description="resume: finish an interrupted run of the same config (a finished one is left as is); "
        "overwrite: replace whatever is there; error: refuse if anything is there.",
    )
    compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd"


@dataclass(frozen=True)
class OutputLayout:
    """Every path of one output, for one config fingerprint."""

    root: str
    fingerprint: str
    storage: StorageConfig

    @property
    def staging(self) -> str:
        return join(self.root, "_staging", self.fingerprint)

    @property
    def markers(self) -> str:
        return join(self.staging, "shards")

    @property
    def stats(self) -> str:
        return join(self.staging, "stats")

    def fs(self, uri: str) -> tuple[Any, str]:
        return filesystem(uri, self.storage)


# ---------------------------------------------------------------- the sink (write tasks)


class CorpusSink(Datasink):
    """Writes each block's rows to corpus/, removed/ or quarantine/ under staging, per shard and language."""

    def __init__(self, layout: OutputLayout, compression: str) -> None:
        self.layout = layout
        self.compression = None if compression == "none" else compression

    def get_name(self) -> str:
        return "WriteCorpus"

    def write(self, blocks: Iterable[pa.Table], ctx: Any) -> list[dict[str, Any]]:
        written = [self._write_group(*group) for block in blocks for group in split_block(block)]
        if written:
            put_bytes(join(self.layout.stats, f"{uuid.uuid4().hex}.json"), orjson.dumps(written), self.layout.storage)
        return written

    def _write_group(self, kind: str, uri: str, lang: str, first_line: int, rows: pa.Table) -> dict[str, Any]:
        started = time.perf_counter()
        name = f"{shard_key(uri)}-{first_line:010d}.parquet"
        relative = f"{QUARANTINE}/{name}" if kind == QUARANTINE else f"{kind}/lang={lang}/{name}"
        seconds = {
            column.removeprefix(SECONDS_PREFIX): pc.sum(rows[column]).as_py() or 0.0
            for column in rows.column_names
            if column.startswith(SECONDS_PREFIX)
        }
        table = _columns_for(kind, rows.drop_columns([c for c in rows.column_names if c.startswith(SECONDS_PREFIX)]))
        fs, path = self.layout.fs(join(self.layout.staging, relative))
        options = parquet_encodings(table.schema)
        write_atomic(fs, path, lambda f: pq.write_table(table, f, compression=self.compression, **options))
        seconds["write"] = time.perf_counter() - started
        return {
            "path": relative,
            "kind": kind,
            "lang": lang,
            "shard": uri,
            "rows": rows.num_rows,
            "reasons": _reason_counts(kind, rows),
            "seconds": seconds,
        }


def split_block(block: pa.Table) -> Iterable[tuple[str, str, str, int, pa.Table]]:
    """``(kind, shard uri, lang, first line, rows)`` for each group of rows that share a file."""
    if block.num_rows == 0:
        return
    uris, lines = split_source(block[SOURCE])
    quarantined = pc.is_valid(block[QUARANTINE_REASON]).to_pylist()
    dropped = pc.is_valid(block[DROP_REASON]).to_pylist()
    langs = block[LANG].to_pylist() if LANG in block.column_names else [None] * block.num_rows
    groups: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for row, (uri, is_q, is_d, lang) in enumerate(zip(uris, quarantined, dropped, langs, strict=True)):
        kind = QUARANTINE if is_q else REMOVED if is_d else CORPUS
        groups[(kind, uri, lang or NO_LANG)].append(row)
    for (kind, uri, lang), rows in groups.items():
        yield kind, uri, lang, lines[rows[0]], block.take(pa.array(rows, pa.int64()))


def _columns_for(kind: str, rows: pa.Table) -> pa.Table:
    if kind == QUARANTINE:
        return rows.select(list(QUARANTINE_COLUMNS))
    dropped = BOOKKEEPING if kind == CORPUS else (QUARANTINE_REASON, RAW)
    return rows.drop_columns([name for name in dropped if name in rows.column_names])


def _reason_counts(kind: str, rows: pa.Table) -> dict[str, int]:
    if kind == CORPUS:
        return {}
    if kind == REMOVED:
        return dict(Counter(rows[DROP_REASON].to_pylist()))
    return dict(Counter(reason.split(":", 1)[0] for reason in rows[QUARANTINE_REASON].to_pylist()))


# ---------------------------------------------------------------- before a run (driver)

RunState = Literal["done", "fresh", "resume"]


def prepare(layout: OutputLayout, if_exists: str) -> RunState:
    """Decide, from what the output holds, whether this run is done already, starts fresh or resumes."""
    fs, root = layout.fs(layout.root)
    manifest = _read_json(fs, join(root, MANIFEST))
    staged = sorted(fs.ls(join(root, "_staging"), detail=False)) if fs.isdir(join(root, "_staging")) else []
    ours = [path for path in staged if path.rstrip("/").endswith(layout.fingerprint)]
    if if_exists == "overwrite":
        for name in (MANIFEST, "_staging", *ARTIFACTS, *KINDS):
            if fs.exists(join(root, name)):
                fs.rm(join(root, name), recursive=True)
        return "fresh"
    if manifest is not None:
        if manifest.get("fingerprint") == layout.fingerprint and if_exists == "resume":
            return "done"
        raise OutputStateError(
            f"{layout.root} already holds a finished corpus"
            + ("" if manifest.get("fingerprint") == layout.fingerprint else " made with a different config")
            + "; choose another output.path or --set output.if_exists=overwrite to replace it"
        )
    if len(staged) > len(ours):
        raise OutputStateError(
            f"{layout.root} holds an unfinished run of a different config (under _staging/); "
            "choose another output.path or --set output.if_exists=overwrite to discard it"
        )
    if any(fs.exists(join(root, kind)) for kind in KINDS) and not ours:
        raise OutputStateError(f"{layout.root} holds corpus files but no manifest.json; refusing to mix runs")
    if ours and if_exists == "error":
        raise OutputStateError(f"{layout.root} holds an unfinished run; output.if_exists=error forbids resuming it")
    return "resume" if ours else "fresh"


def resume(layout: OutputLayout, shards: list[Shard]) -> list[Shard]:
    """Keep what an earlier attempt finished; clear the rest; return the shards still to read."""
    fs, staging = layout.fs(layout.staging)
    plan = _read_json(fs, join(staging, COMMIT_PLAN))
    if plan is not None:
        return []  # the earlier attempt was committing: only the commit is left to finish
    entries = _staged_entries(layout)
    markers = _markers(layout)
    finished = _finished_shards(shards, entries, markers)
    keep = {path: entry for path, entry in entries.items() if entry["shard"] in finished}
    for kind in KINDS:
        for path in fs.find(join(staging, kind)) if fs.isdir(join(staging, kind)) else []:
            if path.removeprefix(staging).lstrip("/") not in keep:
                fs.rm(path)
    for uri, marker in markers.items():
        if uri not in finished:
            fs.rm(marker["path"])
    if fs.isdir(join(staging, "stats")):
        fs.rm(join(staging, "stats"), recursive=True)
    if keep:
        put_bytes(join(layout.stats, "resumed.json"), orjson.dumps(list(keep.values())), layout.storage)
    return [shard for shard in shards if shard.uri not in finished]


def _staged_entries(layout: OutputLayout) -> dict[str, dict[str, Any]]:
    """What write tasks reported, by file; a retried task reports the same file twice, counted once."""
    fs, stats = layout.fs(layout.stats)
    entries: dict[str, dict[str, Any]] = {}
    for path in fs.find(stats) if fs.isdir(stats) else []:
        for entry in orjson.loads(fs.cat_file(path)):
            entries[entry["path"]] = entry
    return entries


def _markers(layout: OutputLayout) -> dict[str, dict[str, Any]]:
    """Shard URI -> its marker (rows read, and the marker's own ``path``), for shards a read task finished."""
    fs, markers = layout.fs(layout.markers)
    found = {}
    for path in fs.find(markers) if fs.isdir(markers) else []:
        marker = orjson.loads(fs.cat_file(path))
        found[marker["uri"]] = {**marker, "path": path}
    return found


def _finished_shards(
    shards: list[Shard], entries: dict[str, dict[str, Any]], markers: dict[str, dict[str, Any]]
) -> set[str]:
    """Shards whose written rows add up exactly to the rows their read task counted."""
    written = _rows_by_shard(entries)
    return {
        shard.uri
        for shard in shards
        if shard.uri in markers and written.get(shard.uri, 0) == markers[shard.uri]["rows"]
    }


def _rows_by_shard(entries: dict[str, dict[str, Any]]) -> dict[str, int]:
    written: Counter[str] = Counter()
    for entry in entries.values():
        written[entry["shard"]] += entry["rows"]
    return dict(written)


def _read_json(fs: Any, path: str) -> Any:
    try:
        return json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None


# ---------------------------------------------------------------- commit (driver)


def commit(layout: OutputLayout, shards: list[Shard], stage_names: list[str], extra: dict[str, Any]) -> dict[str, Any]:
    """Check that every shard is whole, move staged files into place, write the manifest, clear staging.

    The manifest is first saved as the commit plan inside staging, so a crash while moving files is
    finished by the next run instead of leaving a corpus that is half moved.
    """
    fs, staging = layout.fs(layout.staging)
    manifest = _read_json(fs, join(staging, COMMIT_PLAN))
    if manifest is None:
        current = {shard.uri for shard in shards}
        entries = {path: e for path, e in _staged_entries(layout).items() if e["shard"] in current}
        markers = _markers(layout)
        unfinished = current - _finished_shards(shards, entries, markers)
        if unfinished:
            raise OutputStateError(
                f"{len(unfinished)} shard(s) were not completely written (e.g. {min(unfinished)}); "
                "run the same command again: finished shards are kept and the rest redone"
            )
        manifest = build_manifest(entries, shards, markers, stage_names, layout.fingerprint) | extra
        put_bytes(join(layout.staging, COMMIT_PLAN), json.dumps(manifest).encode(), layout.storage)
    _, root = layout.fs(layout.root)
    artifacts = [{"path": path} for name in ARTIFACTS for path in manifest.get(name, {}).get("files", [])]
    for entry in manifest["files"] + artifacts:
        source, target = join(staging, entry["path"]), join(root, entry["path"])
        if fs.exists(source):
            fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            fs.mv(source, target)
    put_bytes(join(layout.root, MANIFEST), json.dumps(manifest, indent=2).encode(), layout.storage)
    fs.rm(staging, recursive=True)
    parent = join(root, "_staging")
    if fs.exists(parent) and not fs.ls(parent):  # object stores have no empty folders to remove
        fs.rm(parent, recursive=True)
    return manifest


def staged_artifact_files(layout: OutputLayout, name: str) -> list[str]:
    """The files of artifact folder ``name`` this run built, relative to the output root (they move there at
    commit); step markers (``_DONE.json``) stay behind in staging."""
    fs, staging = layout.fs(layout.staging)
    folder = join(staging, name)
    found = fs.find(folder) if fs.isdir(folder) else []
    return sorted(path[len(staging.rstrip("/")) + 1 :] for path in found if not path.endswith("/_DONE.json"))


def staged_corpus_files(layout: OutputLayout) -> list[dict[str, Any]]:
    """The corpus files written so far (path relative to staging, rows), in path order."""
    entries = _staged_entries(layout).values()
    return sorted(
        ({"path": e["path"], "rows": e["rows"]} for e in entries if e["kind"] == CORPUS), key=lambda e: e["path"]
    )


def read_manifest(layout: OutputLayout) -> dict[str, Any]:
    fs, root = layout.fs(layout.root)
    return _read_json(fs, join(root, MANIFEST))


def build_manifest(
    entries: dict[str, dict[str, Any]],
    shards: list[Shard],
    markers: dict[str, dict[str, Any]],
    stage_names: list[str],
    fingerprint: str,
) -> dict[str, Any]:
    """Counts per stage, language and reason, the inputs and the files; read = kept + dropped + quarantined."""
    by_kind: Counter[str] = Counter()
    quarantine_reasons: Counter[str] = Counter()
    drop_reasons: Counter[str] = Counter()
    languages: dict[str, Counter[str]] = defaultdict(Counter)
    busy: Counter[str] = Counter()
    for entry in entries.values():
        busy.update(entry.get("seconds", {}))
        by_kind[entry["kind"]] += entry["rows"]
        if entry["kind"] == QUARANTINE:
            quarantine_reasons.update(entry["reasons"])
        else:
            languages[entry["lang"]][entry["kind"]] += entry["rows"]
            drop_reasons.update(entry["reasons"])
            languages[entry["lang"]].update({f"{REMOVED}:{r}": n for r, n in entry["reasons"].items()})
    read = sum(markers[shard.uri]["rows"] for shard in shards)
    if read != by_kind[CORPUS] + by_kind[REMOVED] + by_kind[QUARANTINE]:
        raise OutputStateError(f"counts do not reconcile: read {read} != written {dict(by_kind)}; rerun to redo")
    stages = _stage_counts(read, by_kind[QUARANTINE], quarantine_reasons, drop_reasons, stage_names)
    return {
        "format": "shardflow-corpus/1",
        "fingerprint": fingerprint,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "counts": {
            "read": read,
            "kept": by_kind[CORPUS],
            "dropped": by_kind[REMOVED],
            "quarantined": by_kind[QUARANTINE],
        },
        "stages": stages,
        "timing": _timing(stages, busy, read),
        "languages": {lang: _language_counts(counts) for lang, counts in sorted(languages.items())},
        "inputs": [
            {"uri": s.uri, "size": s.size, "version": s.version, "rows": markers[s.uri]["rows"]} for s in shards
        ],
        "files": sorted(
            ({k: e[k] for k in ("path", "kind", "lang", "rows")} for e in entries.values()), key=lambda e: e["path"]
        ),
    }


def _stage_counts(
    read: int, quarantined: int, quarantine_reasons: Counter[str], drop_reasons: Counter[str], stage_names: list[str]
) -> list[dict[str, Any]]:
    stages = [
        {
            "name": "read",
            "in": read,
            "out": read - quarantined,
            "dropped": 0,
            "quarantined": quarantined,
            "reasons": dict(quarantine_reasons),
        }
    ]
    flowing = read - quarantined
    for name in stage_names:
        reasons = {r: n for r, n in drop_reasons.items() if r.split(":", 1)[0] == name}
        dropped = sum(reasons.values())
        stages.append(
            {
                "name": name,
                "in": flowing,
                "out": flowing - dropped,
                "dropped": dropped,
                "quarantined": 0,
                "reasons": reasons,
            }
        )
        flowing -= dropped
    return stages


def _timing(stages: list[dict[str, Any]], busy: Counter[str], read: int) -> dict[str, dict[str, float]]:
    """Worker seconds each stage spent (summed over its tasks or actors) and documents per such second.

    Stages overlap in a streaming run, so these add up to more than the wall time; they say where the
    work went. A resumed run counts the finished shards' time from their first attempt.
    """
    docs = {stage["name"]: stage["in"] for stage in stages} | {"write": read}
    return {
        name: {
            "busy_seconds": round(seconds, 3),
            "docs": docs.get(name, 0),
            "docs_per_busy_second": round(docs.get(name, 0) / seconds, 1) if seconds > 0 else 0.0,
        }
        for name, seconds in busy.items()
    }


def _language_counts(counts: Counter[str]) -> dict[str, Any]:
    return {
        "kept": counts[CORPUS],
        "dropped": counts[REMOVED],
        "drop_reasons": {k.split(":", 1)[1]: n for k, n in counts.items() if k.startswith(f"{REMOVED}:")},
    }
