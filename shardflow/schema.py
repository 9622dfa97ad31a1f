"""Arrow schemas of the document table (see DESIGN.md) and of the rows that travel with it.

Every row read from a shard flows through the whole DAG, good or bad, so that counts always reconcile:
a row is *quarantined* (``quarantine_reason`` set by the reader: it never became a document), *dropped*
(``drop_reason`` set by a stage, ``"<stage>:<reason>"``) or *kept*. The writer routes each to its own output.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

DOC_ID = "doc_id"
TEXT = "text"
SOURCE = "source"
LANG = "lang"
DROP_REASON = "drop_reason"
QUARANTINE_REASON = "quarantine_reason"
RAW = "raw"
SECONDS_PREFIX = "_seconds_"  # per-row share of the time a stage spent on the row's batch

READ_SCHEMA = pa.schema(
    [
        pa.field(DOC_ID, pa.string()),
        pa.field(TEXT, pa.large_string()),
        pa.field("url", pa.string()),
        pa.field("crawl_ts", pa.string()),
        pa.field(SOURCE, pa.string(), nullable=False),
        pa.field("source_lang", pa.list_(pa.string())),
        pa.field("source_prob", pa.list_(pa.float32())),
        pa.field("meta", pa.large_string()),
        pa.field(DROP_REASON, pa.string()),
        pa.field(QUARANTINE_REASON, pa.string()),
        pa.field(RAW, pa.large_binary()),
        pa.field(f"{SECONDS_PREFIX}read", pa.float64()),
    ]
)

LANG_TOPK_TYPE = pa.list_(pa.struct([pa.field("lang", pa.string()), pa.field("score", pa.float32())]))

SEG_LANGS_TYPE = pa.list_(pa.string())
SEG_SCORES_TYPE = pa.list_(pa.float32())

LANGID_FIELDS = [
    pa.field(LANG, pa.string()),
    pa.field("lang_score", pa.float32()),
    pa.field("lang_topk", LANG_TOPK_TYPE),
    pa.field("lang_mix", pa.float32()),  # share of the confident lines' letters in other languages
    pa.field("seg_langs", SEG_LANGS_TYPE),  # one label per line of text (split at \n), as HPLT's seg_langs
    pa.field("seg_scores", SEG_SCORES_TYPE),
]

# Columns that exist only while rows are in flight; the writer keeps each where it explains the row.
BOOKKEEPING = (DROP_REASON, QUARANTINE_REASON, RAW)
QUARANTINE_COLUMNS = (SOURCE, QUARANTINE_REASON, RAW)


STAGE_ERROR = "stage_error"
SAFE_LABEL = re.compile(r"[A-Za-z0-9]+(?:[_-][A-Za-z0-9]+)*")
MAX_LABEL = 32


def safe_label(label: str) -> str:
    """A language label as it may stand in a path (``lang=<label>/``, ``<label>.yaml``): ``xxx_Scri`` and the like
    as they are; anything else (a model's ``../../tmp``, ``[/x]``, empty, very long) as ``esc_`` and its bytes
    in hex, so that no model can name a file outside the output."""
    if SAFE_LABEL.fullmatch(label) and len(label) <= MAX_LABEL:
        return label
    return "esc_" + label.encode("utf-8", "surrogatepass").hex()[: MAX_LABEL * 2]


def stage_error(stage: str, err: BaseException) -> str:
    """The quarantine reason of a record that made ``stage`` raise: ``stage_error:<stage>:<Type>: message``. One
    such record is kept out of the corpus instead of failing the run (``max_error_fraction`` bounds them)."""
    message = " ".join(str(err).split())[:300]
    return f"{STAGE_ERROR}:{stage}:{type(err).__name__}: {message}"


def with_seconds(batch: pa.Table, stage: str, seconds: float) -> pa.Table:
    """``batch`` with ``_seconds_<stage>`` set: each row's share of ``seconds``, for the manifest's timing."""
    share = pa.array(np.full(batch.num_rows, seconds / max(batch.num_rows, 1)), pa.float64())
    name = f"{SECONDS_PREFIX}{stage}"
    index = batch.schema.get_field_index(name)
    return batch.set_column(index, name, share) if index >= 0 else batch.append_column(name, share)


DEDUP_FIELDS = [pa.field("dup_cluster", pa.string()), pa.field("dup_rep", pa.bool_())]


def split_source(sources: pa.ChunkedArray) -> tuple[list[str], list[int]]:
    """``source`` values (``URI:line``) -> their URIs and line numbers."""
    parts = pc.extract_regex(sources.combine_chunks(), r"^(?P<uri>.*):(?P<line>\d+)$")
    return parts.field("uri").to_pylist(), pc.cast(parts.field("line"), pa.int64()).to_pylist()
