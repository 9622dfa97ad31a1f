"""The retrieval file formats users bring and take away: queries (TSV or JSONL) and TREC runs.

A run line is ``qid Q0 docid rank score tag``, whitespace separated, ranks from 1 per query.
Queries are ``qid<TAB>text`` lines, or JSON lines with the id under ``qid``/``query_id``/``_id``/``id`` and
the text under ``text``/``query``. A malformed line is an error that names the file and the line: a
query silently skipped is a hole in the evaluation that nobody sees.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson

from shardflow.errors import InputError
from shardflow.storage import Location

QID_KEYS = ("qid", "query_id", "_id", "id")
TEXT_KEYS = ("text", "query")


def read_queries(where: Location) -> list[tuple[str, str]]:
    """``(qid, text)`` in file order; a repeated qid or an empty text is an error."""
    uri = where.uri
    try:
        raw = where.read_bytes()
    except FileNotFoundError:
        raise InputError(f"queries file not found: {uri}") from None
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise InputError(f"{uri}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    jsonl = uri.endswith((".jsonl", ".json")) or next((line for line in lines if line.strip()), "").startswith("{")
    parse = _json_query if jsonl else _tsv_query
    queries, seen = [], set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        qid, text = parse(line, f"{uri}:{number}")
        if qid in seen:
            raise InputError(f"{uri}:{number}: query id {qid!r} appears twice")
        seen.add(qid)
        queries.append((qid, text))
    if not queries:
        raise InputError(f"{uri}: no queries")
    return queries


def _tsv_query(line: str, where: str) -> tuple[str, str]:
    qid, tab, text = line.partition("\t")
    if not tab or not qid.strip() or not text.strip():
        raise InputError(f"{where}: expected `qid<TAB>text`, got {line[:80]!r}")
    return _checked_qid(qid.strip(), where), text.strip()


def _checked_qid(qid: str, where: str) -> str:
    """A query id as a run file can hold it: one field, no white space."""
    if not qid or any(char.isspace() for char in qid):
        raise InputError(f"{where}: the query id {qid[:80]!r} holds white space; a TREC run line could not hold it")
    return qid


def _json_query(line: str, where: str) -> tuple[str, str]:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as err:
        raise InputError(f"{where}: invalid JSON ({err})") from None
    qid = next((record[key] for key in QID_KEYS if isinstance(record, dict) and key in record), None)
    text = next((record[key] for key in TEXT_KEYS if isinstance(record, dict) and key in record), None)
    if qid is None or not isinstance(text, str) or not text.strip():
        raise InputError(f"{where}: expected an object with one of {QID_KEYS} and a non-empty one of {TEXT_KEYS}")
    return _checked_qid(str(qid), where), text.strip()


def run_lines(qid: str, docids: Iterable[str], scores: Iterable[float], tag: str) -> list[str]:
    """One query's ranking as TREC run lines (ranks from 1, in the order given)."""
    return [
        f"{qid} Q0 {docid} {rank} {score:.6f} {tag}\n"
        for rank, (docid, score) in enumerate(zip(docids, scores, strict=True), 1)
    ]
