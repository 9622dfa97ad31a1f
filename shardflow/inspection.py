"""What a finished output holds, document by document: the counts of its manifest, examples of what each drop
or quarantine reason removed (so that a threshold can be judged by eye), and where one document went.

    shardflow inspect OUTPUT                                        # counts per stage and language
    shardflow inspect OUTPUT --reason quality:c4.too_few_sentences --lang fin_Latn -n 5
    shardflow inspect OUTPUT --doc ID                               # kept, dropped or quarantined; its cluster

An output can hold billions of documents, so nothing here loads a folder: the files come from the manifest
(never a listing), a search reads one small column of a row group first (``drop_reason``, ``doc_id``) and
the wide ones (``text``, ``raw``) only up to the last row it picked, and it stops once it has what it was
asked for. The run report takes its examples from here too (``reason_examples``).
"""

from __future__ import annotations

import io
import itertools
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import zstandard

from shardflow.errors import InputError
from shardflow.output.corpus import MANIFEST, reason_kind
from shardflow.output.hplt import ANNOTATIONS
from shardflow.output.hplt import SUFFIX as HPLT_SUFFIX
from shardflow.output.manifest import QUARANTINE, REMOVED
from shardflow.schema import DOC_ID, DROP_REASON, QUARANTINE_REASON, RAW, SOURCE, STAGE_ERROR, TEXT
from shardflow.storage import Location

__all__ = ["counts", "examples", "locate", "quarantine_reasons", "read_manifest", "reason_examples", "visible"]

EXCERPT_CHARS = 300
BATCH_ROWS = 256  # rows decoded at a time while looking for the picked ones: a batch of text, not a row group
READ_BUFFER = 1 << 20  # pages are read through a buffer of this size instead of whole column chunks
MAX_MEMBERS = 20  # a duplicate cluster's members listed by locate
DOCUMENT_COLUMNS = [DOC_ID, SOURCE, "url", DROP_REASON, "dup_cluster", "dup_rep", TEXT]
QUARANTINE_READ = [SOURCE, QUARANTINE_REASON, RAW]
HIDDEN = {"Cc", "Zl", "Zp", "Cs"}
BIDI_CONTROLS = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

Picker = Callable[[pa.Array], list[int]]  # a row group's key column -> the sorted positions of the rows to read


def read_manifest(output: Location) -> dict[str, Any]:
    """The manifest of a finished output: its counts, and the files to read (a listing could hold a run's
    leftovers)."""
    manifest = output.join(MANIFEST).read_json()
    if manifest is None:
        raise InputError(f"{output} has no manifest.json: it is not a finished shardflow output")
    return manifest


def drop_reasons(manifest: dict[str, Any]) -> dict[str, int]:
    """Every ``drop_reason`` in ``removed/`` and how many documents it dropped."""
    totals: dict[str, int] = defaultdict(int)
    for counts in manifest["languages"].values():
        for reason, n in counts["drop_reasons"].items():
            totals[reason] += n
    return dict(sorted(totals.items()))


def quarantine_reasons(manifest: dict[str, Any]) -> dict[str, int]:
    """Every quarantine reason without its details (``invalid_json``, ``stage_error:<stage>``): the read's, and
    the records that made a later stage raise."""
    return {
        reason: n
        for stage in manifest["stages"]
        for reason, n in stage["reasons"].items()
        if stage["name"] == "read" or reason.startswith(f"{STAGE_ERROR}:")
    }


def counts(output: Location) -> dict[str, Any]:
    """The manifest's counts, per stage and per language (largest first)."""
    manifest = read_manifest(output)
    languages = sorted(manifest["languages"].items(), key=lambda item: -(item[1]["kept"] + item[1]["dropped"]))
    return {"counts": manifest["counts"], "stages": manifest["stages"], "languages": dict(languages)}


def examples(output: Location, reason: str | None, lang: str | None, n: int) -> list[dict[str, Any]]:
    """Up to ``n`` records that ``reason`` removed (a drop reason or a quarantine reason), of ``lang`` if given;
    with no reason, any documents dropped (of ``lang``)."""
    manifest = read_manifest(output)
    dropped, quarantined = drop_reasons(manifest), quarantine_reasons(manifest)
    if reason is not None and reason not in dropped and reason not in quarantined:
        ranked = sorted({**dropped, **quarantined}.items(), key=lambda item: (-item[1], item[0]))
        known = ", ".join(f"{r} ({c:,})" for r, c in ranked) or "none"
        raise InputError(f"{output} has no records removed for {reason!r}; its reasons: {known}")
    if reason in quarantined:
        if lang is not None:
            raise InputError(f"{reason} is a quarantine reason: quarantined records have no language; leave out --lang")
        return list(itertools.islice(_examples(output, manifest, QUARANTINE, {reason: n}, None), n))
    if reason is not None and lang is not None:
        _require_reason_in(manifest, reason, lang)
    reasons = [reason] if reason else list(_language_reasons(manifest, lang) if lang else dropped)
    return list(itertools.islice(_examples(output, manifest, REMOVED, dict.fromkeys(reasons, n), lang), n))


def reason_examples(
    output: Location, manifest: dict[str, Any], per_reason: int = 3, max_files: int = 64
) -> dict[str, list[dict[str, Any]]]:
    """Up to ``per_reason`` examples of every drop and quarantine reason, for the run report. Files are taken
    one language after another (examples from several languages, and every reason found early) and at most
    ``max_files`` of each kind are read, so a report of a huge output stays cheap; a rare reason may then go
    without examples."""
    drops, quarantines = drop_reasons(manifest), quarantine_reasons(manifest)
    found: dict[str, list[dict[str, Any]]] = {reason: [] for reason in [*drops, *quarantines]}
    for kind, reasons in ((REMOVED, drops), (QUARANTINE, quarantines)):
        for example in _examples(output, manifest, kind, dict.fromkeys(reasons, per_reason), None, max_files):
            found[example["reason"]].append(example)
    return found


def locate(output: Location, doc_id: str) -> dict[str, Any]:
    """Where ``doc_id`` went (kept, dropped by which stage, quarantined; with ``input.duplicate_ids: allow``
    an id may be in several places) and the first members of its duplicate cluster."""
    manifest = read_manifest(output)
    documents = _documents_where(output, manifest, DOC_ID, doc_id)
    if manifest.get("config", {}).get("input", {}).get("duplicate_ids") == "quarantine":
        documents = itertools.islice(documents, 1)  # a repeated id never became a document: the first is the one
    places = [*documents, *_quarantined(output, manifest, doc_id)]
    if not places:
        raise InputError(f"{output} has no document {doc_id!r}: no kept, dropped or quarantined record has this id")
    cluster = next((place["dup_cluster"] for place in places if place.get("dup_cluster")), None)
    members = (
        list(itertools.islice(_documents_where(output, manifest, "dup_cluster", cluster), MAX_MEMBERS + 1))
        if cluster
        else []
    )
    return {"doc_id": doc_id, "places": places, "dup_cluster": cluster, "members": members}


def visible(text: str) -> str:
    """``text`` with control characters, line separators and bidi controls written as escapes (``\\x1b``,
    ``\\r``, ``\\u202e``), newlines kept: a terminal or a page shows what a document holds instead of obeying
    it."""
    return "".join(
        char.encode("unicode_escape").decode("ascii")
        if char != "\n" and (char in BIDI_CONTROLS or unicodedata.category(char) in HIDDEN)
        else char
        for char in text
    )


def _language_reasons(manifest: dict[str, Any], lang: str | None) -> dict[str, int]:
    """The drop reasons of ``lang``; an error naming the languages that have drops where it has none."""
    found = manifest["languages"].get(lang, {}).get("drop_reasons", {})
    if not found:
        dropped = ", ".join(name for name, c in manifest["languages"].items() if c["dropped"]) or "none"
        raise InputError(f"no documents of {lang!r} were dropped; languages with drops: {dropped}")
    return found


def _examples(
    output: Location,
    manifest: dict[str, Any],
    kind: str,
    wanted: dict[str, int],
    lang: str | None,
    max_files: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Records of ``kind`` (removed, quarantine) whose reason is one of ``wanted``, at most ``wanted[reason]`` of
    each, in file order; files of a language that has none of the reasons still wanted are not opened."""
    entries = _interleaved([e for e in manifest["files"] if e["kind"] == kind and lang in (None, e["lang"])])
    key, columns = (DROP_REASON, DOCUMENT_COLUMNS) if kind == REMOVED else (QUARANTINE_REASON, QUARANTINE_READ)
    opened = 0
    for entry in entries:
        if not any(wanted.values()) or opened == max_files:
            return
        reasons = manifest["languages"].get(entry["lang"], {}).get("drop_reasons", {}) if kind == REMOVED else wanted
        if not any(wanted.get(reason) for reason in reasons):
            continue
        opened += 1
        for row in _parquet_rows(output.join(entry["path"]), key, _by_reason(wanted, kind), columns):
            example = _record(row, entry, output)
            wanted[example["reason"]] -= 1
            yield example


def _require_reason_in(manifest: dict[str, Any], reason: str, lang: str) -> None:
    if manifest["languages"].get(lang, {}).get("drop_reasons", {}).get(reason):
        return
    having = ", ".join(name for name, c in manifest["languages"].items() if c["drop_reasons"].get(reason)) or "none"
    raise InputError(f"no documents of {lang!r} were dropped for {reason}; languages it dropped: {having}")


def _interleaved(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Files one language after another (first file of each, then second...), each language's in path order."""
    by_lang: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in entries:
        by_lang[entry["lang"]].append(entry)
    return [entry for turn in itertools.zip_longest(*by_lang.values()) for entry in turn if entry is not None]


def _by_reason(wanted: dict[str, int], kind: str) -> Picker:
    """Up to ``wanted[reason]`` rows of each reason still wanted: a drop reason as it is, a quarantine reason
    with or without its details (``duplicate_id: x was first read at ...``)."""

    def pick(reasons: pa.Array) -> list[int]:
        positions = []
        for reason, n in wanted.items():
            if n > 0:
                same = pc.equal(reasons, reason)
                if kind == QUARANTINE:
                    same = pc.or_(same, pc.starts_with(reasons, f"{reason}:"))
                positions += pc.indices_nonzero(same).to_pylist()[:n]
        return sorted(positions)

    return pick


def _equal_to(value: str) -> Picker:
    return lambda keys: pc.indices_nonzero(pc.equal(keys, value)).to_pylist()


def _documents_where(output: Location, manifest: dict[str, Any], column: str, value: str) -> Iterator[dict[str, Any]]:
    """Kept and dropped documents whose ``column`` (``doc_id``, ``dup_cluster``) is ``value``."""
    for entry in manifest["files"]:
        if entry["kind"] == QUARANTINE:
            continue
        file = output.join(entry["path"])
        if entry["path"].endswith(HPLT_SUFFIX):
            rows = _hplt_rows(file, column, value)
        else:
            rows = _parquet_rows(file, column, _equal_to(value), DOCUMENT_COLUMNS)
        yield from (_record(row, entry, output) for row in rows)


def _quarantined(output: Location, manifest: dict[str, Any], doc_id: str) -> Iterator[dict[str, Any]]:
    """Quarantined records that had ``doc_id``: a repeated id (its reason names it), or a document that made a
    stage raise (its record, kept as JSON, holds it; there are few of these)."""
    repeated, needle = f"duplicate_id: {doc_id} was first read at ", b'"doc_id":' + orjson.dumps(doc_id)

    def pick(reasons: pa.Array) -> list[int]:
        candidate = pc.or_(pc.starts_with(reasons, repeated), pc.starts_with(reasons, f"{STAGE_ERROR}:"))
        return pc.indices_nonzero(candidate).to_pylist()

    for entry in manifest["files"]:
        if entry["kind"] == QUARANTINE:
            for row in _parquet_rows(output.join(entry["path"]), QUARANTINE_REASON, pick, QUARANTINE_READ):
                if row[QUARANTINE_REASON].startswith(repeated) or needle in (row[RAW] or b""):
                    yield _record(row, entry, output)


def _parquet_rows(file: Location, key: str, pick: Picker, columns: list[str]) -> Iterator[dict[str, Any]]:
    """The rows of a parquet file that ``pick`` chooses from its ``key`` column, with those of ``columns`` it
    has. Each row group's key column is read first and the others only up to the last row picked."""
    fs, path = file.filesystem()
    with fs.open(path, "rb") as handle:
        parquet = pq.ParquetFile(handle, buffer_size=READ_BUFFER)
        names = parquet.schema_arrow.names
        if key not in names:
            return
        present = [name for name in columns if name in names]
        for group in range(parquet.num_row_groups):
            picked = pick(parquet.read_row_group(group, columns=[key]).column(0).combine_chunks())
            if picked:
                yield from _picked_rows(parquet, group, picked, present)


def _picked_rows(parquet: pq.ParquetFile, group: int, picked: list[int], columns: list[str]) -> Iterator[dict]:
    """The ``picked`` rows (sorted positions) of one row group, decoded a batch at a time and no further than the
    last of them."""
    start = 0
    for batch in parquet.iter_batches(BATCH_ROWS, row_groups=[group], columns=columns):
        inside = [position - start for position in picked if start <= position < start + batch.num_rows]
        if inside:
            yield from batch.take(pa.array(inside, pa.int64())).to_pylist()
        start += batch.num_rows
        if start > picked[-1]:
            return


def _hplt_rows(file: Location, column: str, value: str) -> Iterator[dict[str, Any]]:
    """The records of an HPLT shard (``corpus/<lang>/<n>.jsonl.zst``) whose ``column`` is ``value``, as document
    rows; only lines that hold the value's JSON are parsed."""
    needle = orjson.dumps(value)
    fs, path = file.filesystem()
    with fs.open(path, "rb") as handle:
        lines = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(handle, read_across_frames=True))
        for line in lines:
            if needle in line:
                record = orjson.loads(line)
                notes = record.get(ANNOTATIONS) or {}
                row = {DOC_ID: record.get("id"), "url": record.get("u"), TEXT: record.get("text")}
                row |= {name: notes.get(name) for name in (SOURCE, "dup_cluster", "dup_rep")}
                if row[column] == value:
                    yield row


def _record(row: dict[str, Any], entry: dict[str, Any], output: Location) -> dict[str, Any]:
    """One row found, as inspect and the report show it: where it is, why (a quarantine reason as the manifest
    counts it, and with its details), and the start of its text (of a quarantined record, its bytes as read)."""
    detail = row.get(QUARANTINE_REASON)
    if RAW in row:
        raw = row[RAW] or b""
        text = raw[: EXCERPT_CHARS * 4].decode("utf-8", "backslashreplace")
        truncated = len(raw) > EXCERPT_CHARS * 4 or len(text) > EXCERPT_CHARS
    else:
        text = row.get(TEXT) or ""
        truncated = len(text) > EXCERPT_CHARS
    return {
        "kind": entry["kind"],
        "reason": reason_kind(detail) if detail else row.get(DROP_REASON),
        "detail": detail,
        DOC_ID: row.get(DOC_ID),
        "lang": None if entry["kind"] == QUARANTINE else entry["lang"],
        SOURCE: row.get(SOURCE),
        "url": row.get("url"),
        "dup_cluster": row.get("dup_cluster"),
        "dup_rep": row.get("dup_rep"),
        "file": output.join(entry["path"]).uri,
        "excerpt": text[:EXCERPT_CHARS],
        "truncated": truncated,
    }
