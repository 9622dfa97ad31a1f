"""HPLT's own layout as a corpus output (``output.format: hplt``): kept documents as
``corpus/<lang_Script>/<n>.jsonl.zst``, one JSON record per line with HPLT's field names, so that HPLT's users
read a shardflow corpus with the tools they read HPLT's releases with.

A record holds, in HPLT's order:

- the document: ``id`` (``doc_id``), ``u`` (``url``), ``ts`` (``crawl_ts``), ``text``;
- the language: ``lang`` and ``prob`` (the langid stage's top-k, else what the input said), ``seg_langs``;
- every field of the input record that shardflow keeps in ``meta`` (``f, o, s, rs, c, collection, filter,
  pii, doc_scores, robots...``), renamed between v2 and v3 where HPLT renamed it (``collection`` /
  ``crawl_id``, ``robots`` / ``robotstxt``);
- ``shardflow``: an object with every column a stage added (``lang_score``, ``lang_mix``, ``seg_scores``,
  ``dup_cluster``, ``quality``, ``embedding``...) and where the record came from (``source``,
  ``source_lang``); under ``shardflow.input``, the input's own value of a field shardflow replaced (its
  ``lang``, ``prob`` or ``seg_langs``; a v1.2 line number ``id``).

Files are staged as ``<shard key>-<first line>.jsonl.zst`` (a retried write overwrites its own file) and
numbered 1, 2, ... per language when the run commits (``number_shards``). Removed documents and the quarantine
stay parquet: they are shardflow's account of what it left out, not part of the release.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import orjson
import pyarrow as pa
import zstandard

__all__ = ["ANNOTATIONS", "HpltVersion", "hplt_record", "hplt_shard", "number_shards"]

HpltVersion = Literal["v2", "v3"]
ANNOTATIONS = "shardflow"
SUFFIX = ".jsonl.zst"
ORDER: dict[str, tuple[str, ...]] = {
    "v2": ("f", "o", "s", "rs", "u", "c", "ts", "collection", "lang", "prob", "text", "seg_langs", "id", "filter",
           "pii", "doc_scores", "robots"),
    "v3": ("f", "o", "s", "rs", "u", "c", "ts", "crawl_id", "lang", "prob", "text", "seg_langs", "id", "filter",
           "pii", "doc_scores", "robotstxt", "de", "xml", "html_lang", "cluster_size", "web-register"),
}  # fmt: skip
RENAMED: dict[str, dict[str, str]] = {
    "v2": {"crawl_id": "collection", "robotstxt": "robots"},
    "v3": {"collection": "crawl_id", "robots": "robotstxt"},
}
DOCUMENT = {"doc_id": "id", "url": "u", "crawl_ts": "ts", "text": "text", "seg_langs": "seg_langs"}
LEFT_OUT = ("meta", "lang", "lang_topk")  # spread into the record; lang is lang[0]; lang_topk is lang and prob
NUMBERED = re.compile(r"^(corpus/[^/]+)/[^/]+\.jsonl\.zst$")


def hplt_shard(rows: pa.Table, version: HpltVersion, level: int = 3) -> bytes:
    """``rows`` (kept documents) as one zstd-compressed JSON-lines shard."""
    lines = b"".join(_json_line(hplt_record(row, version)) for row in rows.to_pylist())
    return zstandard.ZstdCompressor(level=level).compress(lines)


def _json_line(record: dict[str, Any]) -> bytes:
    """One record as a line. An input field nested as deep as JSON may be (orjson writes 254 levels) sits two
    levels deeper under ``shardflow.input``: there it is kept as its JSON text, so no record fails a shard."""
    try:
        return orjson.dumps(record) + b"\n"
    except TypeError:
        notes = record[ANNOTATIONS]
        notes["input"] = orjson.dumps(notes.get("input")).decode()
        return orjson.dumps(record) + b"\n"


def hplt_record(row: dict[str, Any], version: HpltVersion) -> dict[str, Any]:
    """One document row as an HPLT record (see the module's docstring)."""
    fields = {RENAMED[version].get(name, name): value for name, value in _meta(row.get("meta")).items()}
    ours = {field: row[column] for column, field in DOCUMENT.items() if row.get(column) is not None}
    ours |= _languages(row)
    annotations = {
        column: value
        for column, value in row.items()
        if value is not None and column not in DOCUMENT and column not in LEFT_OUT
    }
    replaced = {name: fields.pop(name) for name in [*ours, ANNOTATIONS] if name in fields}
    replaced = {name: value for name, value in replaced.items() if ours.get(name) != value}
    if replaced:
        annotations["input"] = replaced
    merged = fields | ours
    record = {name: merged.pop(name) for name in ORDER[version] if name in merged}
    return record | merged | {ANNOTATIONS: annotations}


def _meta(meta: str | None) -> dict[str, Any]:
    value = orjson.loads(meta) if meta else {}
    return value if isinstance(value, dict) else {}


def _languages(row: dict[str, Any]) -> dict[str, Any]:
    """``lang`` and ``prob``: the langid stage's top-k where it ran, else the input's own labels."""
    if row.get("lang_topk"):
        return {"lang": [t["lang"] for t in row["lang_topk"]], "prob": [round(t["score"], 4) for t in row["lang_topk"]]}
    found: dict[str, Any] = {}
    if row.get("source_lang") is not None:
        found["lang"] = row["source_lang"]
    if row.get("source_prob") is not None:
        found["prob"] = [round(p, 4) for p in row["source_prob"]]
    return found


def number_shards(files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The manifest's file entries with each language's staged HPLT shards named ``1.jsonl.zst``, ``2...`` in the
    order of their staged names (shard, then first line); ``staged`` keeps where each one lies until the commit
    moves it. Other files are left as they are."""
    counters: dict[str, int] = {}
    numbered = []
    for entry in sorted(files, key=lambda e: e["path"]):
        match = NUMBERED.match(entry["path"])
        if match is None:
            numbered.append(entry)
            continue
        folder = match.group(1)
        counters[folder] = counters.get(folder, 0) + 1
        numbered.append({**entry, "path": f"{folder}/{counters[folder]}{SUFFIX}", "staged": entry["path"]})
    return sorted(numbered, key=lambda e: e["path"])
