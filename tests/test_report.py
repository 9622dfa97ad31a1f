"""The run report: self-contained HTML with every chart, and JSON whose numbers equal the manifest's."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from shardflow.config import validate
from shardflow.errors import InputError
from shardflow.pipelines.corpus import CorpusConfig, run_corpus
from shardflow.report import CHARTS, write_report
from shardflow.storage import Location
from support import SAMPLE, write_shard


@pytest.fixture(scope="module")
def finished_output(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("report")
    spam = b"".join(b'{"id": "s%d", "text": "spam spam spam\\n"}\n' % i for i in range(3))
    write_shard(folder / "in" / "bad.jsonl", b'{"text": "<script>alert(1)</script>\n{"id": 3}\n' + spam)
    paths = [str(folder / "in")] + [str(SAMPLE / lang) for lang in ("fin_Latn", "eng_Latn", "jpn_Jpan")]
    config = validate(
        {
            "input": {"paths": paths},
            "output": {"path": str(folder / "out")},
            "stages": [{"op": "langid", "keep": ["fin_Latn", "jpn_Jpan", "eng_Latn"]}, {"op": "quality"}],
        },
        CorpusConfig,
    )
    run_corpus(config)
    return folder / "out"


def test_report_renders_every_chart_offline(finished_output: Path) -> None:
    html_uri, json_uri = write_report(Location(str(finished_output)))
    page = Path(html_uri).read_text()
    for chart in CHARTS:
        assert f'id="chart-{chart}"' in page
    assert page.count("<svg") >= 4 and "<script" not in page and not re.search(r"(src|href)=\"https?://", page)
    manifest = json.loads((finished_output / "manifest.json").read_text())
    counts = manifest["counts"]
    assert f"read {counts['read']:,}</b> = kept {counts['kept']:,} + dropped {counts['dropped']:,}" in page


def test_report_numbers_equal_the_manifest(finished_output: Path) -> None:
    _, json_uri = write_report(Location(str(finished_output)))
    numbers = json.loads(Path(json_uri).read_text())
    manifest = json.loads((finished_output / "manifest.json").read_text())
    assert numbers["counts"] == manifest["counts"] and numbers["stages"] == manifest["stages"]
    assert numbers["quarantine_reasons"] == {"invalid_json": 1, "missing_text": 1}
    for lang, counts in manifest["languages"].items():
        mine = numbers["languages"][lang]
        assert mine["kept"] == counts["kept"] and mine["after"]["quality"] == counts["kept"]
        assert mine["identified"] == counts["kept"] + counts["dropped"]
        assert sum(mine["score_histogram"]) == mine["after"]["langid"]  # every document quality saw, scored
    assert sum(n["identified"] for n in numbers["languages"].values()) == manifest["stages"][1]["in"]
    assert set(numbers["timing"]) == {"read", "duplicate_ids", "langid", "quality", "write"}  # the id pass's lookup too
    assert all(t["busy_seconds"] > 0 for t in numbers["timing"].values())


def test_report_links_every_reason_to_a_few_escaped_examples(finished_output: Path) -> None:
    html_uri, json_uri = write_report(Location(str(finished_output)))
    page = Path(html_uri).read_text()
    examples = json.loads(Path(json_uri).read_text())["examples"]
    manifest = json.loads((finished_output / "manifest.json").read_text())
    reasons = {reason: n for stage in manifest["stages"] for reason, n in stage["reasons"].items()}
    removed = {
        row["doc_id"]: row
        for entry in manifest["files"]
        if entry["kind"] == "removed"
        for row in pq.read_table(finished_output / entry["path"]).to_pylist()
    }
    shown = {
        html.unescape(reason): (anchor, int(count), body)
        for anchor, reason, count, body in re.findall(
            r'<details id="(reason-[^"]+)"><summary>(.*?): (\d+) of [\d,]+ records</summary>(.*?)</details>', page, re.S
        )
    }
    assert set(shown) == set(examples) == set(reasons) and len(reasons) >= 3
    for reason, n in reasons.items():
        anchor, count, body = shown[reason]
        assert count == len(examples[reason]) == min(3, n) and f'<a href="#{anchor}">' in page
        for example in examples[reason]:
            assert example["reason"] == reason and html.escape(example["source"]) in body
            if example["kind"] == "removed":
                assert removed[example["doc_id"]]["drop_reason"] == reason
                assert example["excerpt"] == removed[example["doc_id"]]["text"][:300]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in shown["invalid_json"][2]  # the record as read, escaped


def test_a_folder_without_manifest_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no manifest.json"):
        write_report(Location(str(tmp_path)))
