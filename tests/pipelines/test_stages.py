"""Stages as contracts: the example stage of docs/operators.md runs through a real pipeline, and a model stage
before a global stage runs once per document (its output is materialised for the global pass)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardflow.config import validate
from shardflow.errors import OutputStateError
from shardflow.operators.base import Annotations
from shardflow.operators.langid import LanguageId
from shardflow.operators.length import LengthFilter
from shardflow.operators.registry import STAGES
from shardflow.pipelines.corpus import CorpusConfig, run_corpus
from support import SAMPLE, sample_records

pytestmark = pytest.mark.usefixtures("ray_local")


def test_the_example_length_stage_runs_through_a_real_pipeline(tmp_path: Path) -> None:
    config = {
        "input": {"paths": [str(SAMPLE)], "duplicate_ids": "allow"},  # every record reaches the stage
        "output": {"path": str(tmp_path / "out")},
        "stages": [{"op": "length", "min_chars": 100, "max_chars": 600}],
        "ray": {"progress": False},
    }
    manifest = run_corpus(validate(config, CorpusConfig)).manifest
    lengths = [len(record["text"]) for record in sample_records(recrawl=True)]
    short, long = sum(n < 100 for n in lengths), sum(n > 600 for n in lengths)
    assert short and long  # the bounds cut on both sides: the test can fail
    assert manifest["counts"]["read"] == len(lengths) and manifest["counts"]["dropped"] == short + long
    assert manifest["stages"][1]["reasons"] == {"length:too_short": short, "length:too_long": long}
    rows = [
        (entry["kind"], row)
        for entry in manifest["files"]
        for row in pq.read_table(tmp_path / "out" / entry["path"], columns=["text", "chars"]).to_pylist()
    ]
    assert len(rows) == len(lengths) and all(row["chars"] == len(row["text"]) for _, row in rows)
    assert all((kind == "corpus") == (100 <= row["chars"] <= 600) for kind, row in rows)


def test_a_model_stage_before_fuzzy_dedup_runs_once_per_document(tmp_path: Path) -> None:
    record = tmp_path / "annotated.txt"

    class Probe(LanguageId):  # defined here: it travels to the actors by value, with ``record``
        def annotate(self, docs: pa.Table) -> Annotations:
            with open(record, "a") as out:
                out.write(f"{docs.num_rows}\n")
            return super().annotate(docs)

    config = {
        "input": {"paths": [str(SAMPLE)]},
        "output": {"path": str(tmp_path / "out")},
        "stages": [{"op": "langid"}, {"op": "exact_dedup"}, {"op": "fuzzy_dedup"}],
        "ray": {"progress": False},
    }
    with STAGES.using("langid", Probe):
        manifest = run_corpus(validate(config, CorpusConfig)).manifest
    annotated = sum(int(line) for line in record.read_text().split())
    assert annotated == manifest["stages"][1]["in"] > 0  # every document once: not again for the fuzzy pass
    assert manifest["stages"][2]["dropped"] > 0 and json.dumps(manifest["fuzzy_dedup"])  # the passes ran
    assert not (tmp_path / "out" / "_staging").exists()  # the materialised documents went with the staging


def test_records_that_make_a_stage_raise_are_quarantined_and_counted_within_a_budget(tmp_path: Path) -> None:
    class Exploding(LengthFilter):  # defined here: it travels to the task workers by value
        def annotate(self, docs: pa.Table) -> Annotations:
            if any(len(text) % 7 == 0 for text in docs["text"].to_pylist()):
                raise ZeroDivisionError("a length of a multiple of seven")
            return super().annotate(docs)

    config = {
        "input": {"paths": [str(SAMPLE)], "duplicate_ids": "allow"},
        "output": {"path": str(tmp_path / "out")},
        "stages": [{"op": "length"}],
        "ray": {"progress": False},
    }
    failing = sum(len(record["text"]) % 7 == 0 for record in sample_records(recrawl=True))
    with STAGES.using("length", Exploding):
        with pytest.raises(OutputStateError, match=rf"{failing} of .* records made a stage raise.*stage_error:length"):
            run_corpus(validate(config, CorpusConfig))  # the default budget: 0.1%
        manifest = run_corpus(validate(config | {"max_error_fraction": 0.5}, CorpusConfig)).manifest  # resumes
    assert manifest["shards_this_attempt"] == 0  # the budget is not part of the run's identity
    length = manifest["stages"][1]
    assert length["quarantined"] == failing > 0 and length["out"] == length["in"] - failing
    assert length["reasons"] == {"stage_error:length": failing}
    counts = manifest["counts"]
    assert counts["read"] == counts["kept"] + counts["dropped"] + counts["quarantined"]
