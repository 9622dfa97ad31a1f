"""A corpus output: parquet partitioned by language, staged, checked, committed; then ``manifest.json``.

Layout of an output::

    OUTPUT/manifest.json                 written last: an output is complete if and only if it exists
    OUTPUT/corpus/lang=xxx_Scri/*.parquet    kept documents (output.format: parquet)
    OUTPUT/corpus/xxx_Scri/<n>.jsonl.zst     kept documents (output.format: hplt; see ``hplt.py``)
    OUTPUT/removed/lang=xxx_Scri/*.parquet   documents a stage dropped, with drop_reason
    OUTPUT/quarantine/*.parquet          records that never became documents: source, reason, raw bytes
    OUTPUT/<artifact>/                   what stages build beside the corpus (dedup indexes, the dense index)
    OUTPUT/_staging/<fingerprint>/       a run in progress (the same tree, plus the ledger's books and the
                                         stages' own steps)

The staging folder is a ``ShardLedger``: a rerun after a crash keeps the shards it holds whole and redoes
the rest; the commit checks every shard again, moves the files into place and writes the manifest. Nothing
outside ``_staging`` exists before that.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from shardflow.config import StrictModel
from shardflow.errors import OutputStateError
from shardflow.output.hplt import SUFFIX as HPLT_SUFFIX
from shardflow.output.hplt import HpltVersion, hplt_shard, number_shards
from shardflow.output.ledger import LedgerSink, ShardLedger, file_name, grouped
from shardflow.output.manifest import CORPUS, KINDS, QUARANTINE, REMOVED, artifact_names, build_manifest, stage_errors
from shardflow.schema import (
    BOOKKEEPING,
    DROP_REASON,
    LANG,
    QUARANTINE_COLUMNS,
    QUARANTINE_REASON,
    RAW,
    SECONDS_PREFIX,
    SOURCE,
    STAGE_ERROR,
    safe_label,
    split_source,
)
from shardflow.shards import Shard
from shardflow.steps import DONE
from shardflow.storage import Location

__all__ = ["CorpusSink", "OutputLayout", "RunState", "WriterConfig", "reason_kind"]

MANIFEST = "manifest.json"
STAGING = "_staging"
COMMIT_PLAN = "COMMIT.json"
NO_LANG = "und_Zyyy"
SCORE_BINS = 10  # the score histogram's bins over 0-10

RunState = Literal["done", "fresh", "resume"]


class WriterConfig(StrictModel):
    """The ``output`` section."""

    path: str = Field(description="Output directory, local or s3://.")
    if_exists: Literal["resume", "overwrite", "error"] = Field(
        "resume",
        description="resume: finish an interrupted run of the same config (a finished one is left as is); "
        "overwrite: replace whatever is there; error: refuse if anything is there.",
    )
    compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd"
    format: Literal["parquet", "hplt"] = Field(
        "parquet",
        description="parquet: corpus/lang=xxx_Scri/*.parquet; hplt: HPLT's corpus/xxx_Scri/<n>.jsonl.zst with HPLT's "
        "field names (removed/ and quarantine/ stay parquet).",
    )
    hplt_version: HpltVersion = Field("v2", description="Field names of format: hplt: v2 or v3 (crawl_id, robotstxt).")


@dataclass(frozen=True)
class OutputLayout:
    """One output, for one config fingerprint: its paths and its lifecycle (prepare, resume, commit)."""

    root: Location
    fingerprint: str

    @property
    def staging(self) -> Location:
        return self.root.join(STAGING, self.fingerprint)

    @property
    def ledger(self) -> ShardLedger:
        return ShardLedger(self.staging, KINDS)

    def manifest(self) -> dict[str, Any] | None:
        return self.root.join(MANIFEST).read_json()

    # ------------------------------------------------------------ before a run (driver)

    def prepare(self, if_exists: str) -> RunState:
        """Decide (``state``) whether this run is done already, starts fresh or resumes; under overwrite, first
        remove whatever the output holds."""
        if if_exists == "overwrite":
            self._clear()
        return self.state(if_exists)

    def state(self, if_exists: str) -> RunState:
        """What a run with ``if_exists`` would do with what the output holds, read only (``shardflow validate``
        asks too): ``done``, ``resume`` or ``fresh`` (always, under overwrite: ``prepare`` clears the output
        first); an output the run must not touch is an ``OutputStateError``."""
        if if_exists == "overwrite":
            return "fresh"
        manifest = self.manifest()
        staged = self.root.join(STAGING).children()
        ours = [entry for entry in staged if entry.name == self.fingerprint]
        if manifest is not None:
            if manifest.get("fingerprint") == self.fingerprint and if_exists == "resume":
                return "done"
            raise OutputStateError(
                f"{self.root} already holds a finished corpus"
                + ("" if manifest.get("fingerprint") == self.fingerprint else " made with a different config")
                + "; choose another output.path or --set output.if_exists=overwrite to replace it"
            )
        if len(staged) > len(ours):
            raise OutputStateError(
                f"{self.root} holds an unfinished run of a different config (under _staging/); "
                "choose another output.path or --set output.if_exists=overwrite to discard it"
            )
        if any(self.root.join(kind).exists() for kind in KINDS) and not ours:
            raise OutputStateError(f"{self.root} holds corpus files but no manifest.json; refusing to mix runs")
        if ours and if_exists == "error":
            raise OutputStateError(f"{self.root} holds an unfinished run; output.if_exists=error forbids resuming it")
        return "resume" if ours else "fresh"

    def _clear(self) -> None:
        """Remove the manifest, every staged run and what commits moved into place (a commit cut short too)."""
        staged = self.root.join(STAGING).children()
        plans = [entry.join(COMMIT_PLAN).read_json() or {} for entry in staged]
        older = {name for found in [self.manifest() or {}, *plans] for name in artifact_names(found)}
        for name in (MANIFEST, STAGING, *sorted(older), *KINDS):
            self.root.join(name).remove()

    def resume(self, shards: list[Shard]) -> list[Shard]:
        """Keep what an earlier attempt finished; clear the rest; return the shards still to read (none when
        the earlier attempt was committing: only the commit is left to finish)."""
        if self.staging.join(COMMIT_PLAN).exists():
            return []
        return self.ledger.keep_finished(shards)

    # ------------------------------------------------------------ commit (driver)

    def commit(
        self, shards: list[Shard], stage_names: list[str], extra: dict[str, Any], max_error_fraction: float = 1.0
    ) -> dict[str, Any]:
        """Check that every shard is whole and that no more than ``max_error_fraction`` of the records made a
        stage raise, move staged files into place, write the manifest, clear staging.

        The manifest is first saved as the commit plan inside staging, so a crash while moving files is
        finished by the next run instead of leaving a corpus that is half moved. ``extra`` adds to the
        manifest; its entries that list ``files`` (artifacts staged beside the corpus) move too.
        """
        manifest = self.staging.join(COMMIT_PLAN).read_json()
        if manifest is None:
            ledger = self.ledger
            current = {shard.uri for shard in shards}
            entries = {path: e for path, e in ledger.entries().items() if e["shard"] in current}
            marked = ledger.marked()
            unfinished = current - ledger.finished(shards, entries, marked)
            if unfinished:
                raise OutputStateError(
                    f"{len(unfinished)} shard(s) were not completely written (e.g. {min(unfinished)}); "
                    "run the same command again: finished shards are kept and the rest redone"
                )
            manifest = build_manifest(entries, shards, marked, stage_names, self.fingerprint) | extra
            manifest["files"] = number_shards(manifest["files"])
            self._check_errors(manifest, entries, max_error_fraction)
            self.staging.join(COMMIT_PLAN).put_bytes(json.dumps(manifest).encode())
        artifacts = [path for name in artifact_names(manifest) for path in manifest[name]["files"]]
        moves = [(entry.get("staged", entry["path"]), entry["path"]) for entry in manifest["files"]]
        for staged, path in moves + [(path, path) for path in artifacts]:
            source = self.staging.join(staged)
            if source.exists():
                source.move_to(self.root.join(path))
        self.root.join(MANIFEST).put_bytes(json.dumps(manifest, indent=2).encode())
        self.staging.remove()
        parent = self.root.join(STAGING)
        if parent.exists() and not parent.children():  # object stores have no empty folders to remove
            parent.remove()
        return manifest

    def _check_errors(self, manifest: dict[str, Any], entries: dict[str, Any], max_error_fraction: float) -> None:
        """Refuse to commit a run in which more records made a stage raise than the budget allows: the cause is
        then more likely a bug or a broken node than hostile records. The message names the first few."""
        failed = sum(stage_errors(entry["reasons"]) for entry in entries.values() if entry["kind"] == QUARANTINE)
        read = manifest["counts"]["read"]
        if failed <= max_error_fraction * read:
            return
        examples = []
        for entry in sorted(entries.values(), key=lambda e: e["path"]):
            if entry["kind"] == QUARANTINE and stage_errors(entry["reasons"]):
                rows = self.staging.join(entry["path"]).read_table([SOURCE, QUARANTINE_REASON]).to_pylist()
                examples += [
                    f"{row[SOURCE]}: {row[QUARANTINE_REASON]}"
                    for row in rows
                    if row[QUARANTINE_REASON].startswith(STAGE_ERROR)
                ]
            if len(examples) >= 3:
                break
        raise OutputStateError(
            f"{failed:,} of {read:,} records made a stage raise, more than max_error_fraction {max_error_fraction:g} "
            f"allows; the first: {'; '.join(examples[:3])}. They are in the staged quarantine; fix the cause, or raise "
            "max_error_fraction and run again (finished shards are kept)"
        )

    def artifact_files(self, name: str) -> list[str]:
        """The files of artifact folder ``name`` this run built, relative to the output root (they move there at
        commit); step markers (``_DONE.json``) stay behind in staging."""
        return [f"{name}/{path}" for path in self.staging.join(name).relative_files() if not path.endswith(DONE)]

    def corpus_files(self) -> list[dict[str, Any]]:
        """The corpus files written so far (path relative to staging, rows), in path order."""
        entries = self.ledger.entries().values()
        return sorted(
            ({"path": e["path"], "rows": e["rows"]} for e in entries if e["kind"] == CORPUS), key=lambda e: e["path"]
        )


class CorpusSink(LedgerSink):
    """Writes each block's rows to corpus/, removed/ or quarantine/ under staging, per shard and language; the
    corpus as parquet or as HPLT's JSON lines."""

    def __init__(self, ledger: ShardLedger, config: WriterConfig) -> None:
        super().__init__(ledger, config.compression)
        self.hplt_version: HpltVersion | None = config.hplt_version if config.format == "hplt" else None

    def get_name(self) -> str:
        return "WriteCorpus"

    def write_file(self, where: Location, table: pa.Table) -> None:
        if self.hplt_version and where.name.endswith(HPLT_SUFFIX):
            where.put_bytes(hplt_shard(table, self.hplt_version))
        else:
            super().write_file(where, table)

    def files(self, block: pa.Table) -> Iterable[tuple[str, pa.Table, dict[str, Any]]]:
        uris, lines = split_source(block[SOURCE])
        quarantined = pc.is_valid(block[QUARANTINE_REASON]).to_pylist()
        dropped = pc.is_valid(block[DROP_REASON]).to_pylist()
        langs = block[LANG].to_pylist() if LANG in block.column_names else [None] * block.num_rows
        labels = [
            (QUARANTINE if is_q else REMOVED if is_d else CORPUS, uri, safe_label(lang) if lang else NO_LANG)
            for uri, is_q, is_d, lang in zip(uris, quarantined, dropped, langs, strict=True)
        ]
        for (kind, uri, lang), first_line, rows in grouped(block, labels, lines):
            if kind == CORPUS and self.hplt_version:
                path = f"{CORPUS}/{lang}/{file_name(uri, first_line, HPLT_SUFFIX)}"
            elif kind == QUARANTINE:
                path = f"{QUARANTINE}/{file_name(uri, first_line)}"
            else:
                path = f"{kind}/lang={lang}/{file_name(uri, first_line)}"
            facts = {
                "kind": kind,
                "lang": lang,
                "shard": uri,
                "rows": rows.num_rows,
                "reasons": _reason_counts(kind, rows),
                "seconds": _seconds(rows),
                "scores": score_histogram(rows),
            }
            yield path, _columns_for(kind, rows), facts


def _seconds(rows: pa.Table) -> dict[str, float]:
    """Each stage's share of the time spent on these rows, from the ``_seconds_<stage>`` columns."""
    return {
        column.removeprefix(SECONDS_PREFIX): pc.sum(rows[column]).as_py() or 0.0
        for column in rows.column_names
        if column.startswith(SECONDS_PREFIX)
    }


def score_histogram(rows: pa.Table) -> list[int]:
    """How many of these rows a quality stage scored 0-1, 1-2, ..., 9-10 (empty without one)."""
    if "quality" not in rows.column_names or rows.num_rows == 0:
        return []
    quality = rows["quality"].combine_chunks()
    if "score" not in {field.name for field in quality.type}:
        return []
    scores = pc.struct_field(quality, "score").to_numpy(zero_copy_only=False).astype(np.float64)
    return np.histogram(scores[np.isfinite(scores)], bins=SCORE_BINS, range=(0, 10))[0].tolist()


def _columns_for(kind: str, rows: pa.Table) -> pa.Table:
    rows = rows.drop_columns([c for c in rows.column_names if c.startswith(SECONDS_PREFIX)])
    if kind == QUARANTINE:
        return rows.select(list(QUARANTINE_COLUMNS))
    dropped = BOOKKEEPING if kind == CORPUS else (QUARANTINE_REASON, RAW)
    return rows.drop_columns([name for name in dropped if name in rows.column_names])


def _reason_counts(kind: str, rows: pa.Table) -> dict[str, int]:
    if kind == CORPUS:
        return {}
    if kind == REMOVED:
        return dict(Counter(rows[DROP_REASON].to_pylist()))
    return dict(Counter(reason_kind(reason) for reason in rows[QUARANTINE_REASON].to_pylist()))


def reason_kind(reason: str) -> str:
    """A quarantine reason without its details: ``invalid_json``, or ``stage_error:<stage>``."""
    parts = reason.split(":", 2)
    return ":".join(parts[:2]) if parts[0] == STAGE_ERROR else parts[0]
