"""The operator contract's bookkeeping: rows out of play, drop and quarantine reasons, and a record that makes a
stage raise, which is quarantined instead of failing the batch."""

from __future__ import annotations

import json

import pyarrow as pa

from shardflow.operators.base import Annotations, Operator
from shardflow.schema import READ_SCHEMA


class Fragile(Operator):
    """Counts characters; drops short texts; raises on any batch that holds the word "boom"."""

    name = "fragile"
    added_fields = [pa.field("n", pa.int64())]

    def annotate(self, docs: pa.Table) -> Annotations:
        texts = docs["text"].to_pylist()
        if any("boom" in text for text in texts):
            raise ValueError("boom in\nthe text")
        return Annotations(
            {"n": pa.array([len(text) for text in texts], pa.int64())},
            drop_reasons=["short" if len(text) < 3 else None for text in texts],
        )


def batch(texts: list[str], quarantined: list[str | None] | None = None) -> pa.Table:
    reasons = quarantined or [None] * len(texts)
    rows = [
        {"doc_id": f"d{i}", "text": text, "source": f"s.jsonl:{i + 1}", "quarantine_reason": reason}
        for i, (text, reason) in enumerate(zip(texts, reasons, strict=True))
    ]
    return pa.Table.from_pylist(rows, schema=READ_SCHEMA)


def test_a_record_that_makes_a_stage_raise_is_quarantined_and_the_others_annotated() -> None:
    out = Fragile()(batch(["fine text", "boom", "no", "boom boom", "x"], [None, None, None, None, "invalid_json: x"]))
    assert out["quarantine_reason"].to_pylist() == [
        None,
        "stage_error:fragile:ValueError: boom in the text",
        None,
        "stage_error:fragile:ValueError: boom in the text",
        "invalid_json: x",  # out of play before: untouched
    ]
    assert out["n"].to_pylist() == [9, None, 2, None, None]
    assert out["drop_reason"].to_pylist() == [None, None, "fragile:short", None, None]
    record = json.loads(out["raw"][1].as_py())
    assert record["text"] == "boom" and record["doc_id"] == "d1" and "source" not in record
    assert out.num_rows == 5 and out["_seconds_fragile"].to_pylist()[0] > 0


def test_a_batch_without_trouble_is_annotated_in_one_call() -> None:
    calls = []

    class Counted(Fragile):
        def annotate(self, docs: pa.Table) -> Annotations:
            calls.append(docs.num_rows)
            return super().annotate(docs)

    out = Counted()(batch(["one", "two", "three"]))
    assert calls == [3] and out["quarantine_reason"].null_count == 3
