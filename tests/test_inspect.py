"""``shardflow inspect``: counts, examples of each reason, where a document went; and the report's examples.
One real run (langid, exact dedup, length) on a small input whose every drop and quarantine is known."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from shardflow.cli import main
from shardflow.config import validate
from shardflow.pipelines.corpus import CorpusConfig, run_corpus
from shardflow.report import write_report
from shardflow.storage import Location
from support import jsonl_bytes, sample_records, write_shard

XSS = "<script>alert('x')</script>"


def articles(lang: str) -> list[dict[str, Any]]:
    """Eight UDHR articles of ``lang`` long enough to pass the length stage."""
    found = [r for r in sample_records() if r["lang"][0] == lang and len(r["text"]) >= 80]
    return [{"id": r["id"], "text": r["text"], "url": r["u"]} for r in found[:8]]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``a.jsonl``: 8 English and 8 Finnish articles. ``b.jsonl``: 3 copies of the first English one and 1 of the
    first Finnish one (exact duplicates), two short texts (one a script tag, one with a terminal escape), a record
    that repeats an English id, and a line that is not JSON."""
    folder = tmp_path_factory.mktemp("inspect-in")
    eng, fin = articles("eng_Latn"), articles("fin_Latn")
    write_shard(folder / "a.jsonl", eng + fin)
    copies = [{"id": f"dupe-eng-{i}", "text": eng[0]["text"]} for i in range(3)]
    copies.append({"id": "dupe-fin-0", "text": fin[0]["text"]})
    short = [
        {"id": "xss", "text": XSS, "url": "https://x.example/?q=<b>"},
        {"id": "ctl", "text": "red \x1b[31m [bold]x[/bold]"},
    ]
    repeated = {"id": eng[1]["id"], "text": "Another text under an id that an earlier record has, long enough."}
    write_shard(folder / "b.jsonl", jsonl_bytes(copies + short + [repeated]) + b'{"text": \n')
    return {"folder": folder, "eng": eng, "fin": fin}


def run(inputs: dict[str, Any], output: Path, **settings: Any) -> Path:
    raw = {
        "input": {"paths": [str(inputs["folder"])]},
        "output": {"path": str(output), **settings},
        "stages": [{"op": "langid"}, {"op": "exact_dedup", "partitions": 2}, {"op": "length", "min_chars": 40}],
        "ray": {"progress": False},
    }
    run_corpus(validate(raw, CorpusConfig))
    return output


@pytest.fixture(scope="module")
def output(ray_local: None, inputs: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run(inputs, tmp_path_factory.mktemp("inspect") / "out")


def inspect(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["inspect", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def blocks(out: str) -> list[str]:
    """The printed records, one string each (a record starts with ``-- ``)."""
    return ["-- " + part for part in re.split(r"^-- ", out, flags=re.M)[1:]]


def test_the_run_holds_what_the_tests_expect(output: Path) -> None:
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["counts"] == {"read": 24, "kept": 16, "dropped": 6, "quarantined": 2}
    assert manifest["languages"]["eng_Latn"]["drop_reasons"]["exact_dedup:duplicate"] == 3


def test_counts_per_stage_and_language(output: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = inspect(capsys, str(output))
    assert status == 0
    assert "read 24 = kept 16 + dropped 6 + quarantined 2" in out
    assert re.search(r"exact_dedup\s+│\s+22\s+│\s+18\s+│\s+4\s+│\s+0", out)  # in, out, dropped, quarantined
    assert re.search(r"fin_Latn\s+│\s+8\s+│\s+1\s+│\s+exact_dedup:duplicate=1", out)
    assert "invalid_json=1" in out and "duplicate_id=1" in out


def test_examples_of_a_reason_in_a_language(
    output: Path, inputs: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = inspect(capsys, str(output), "--reason", "exact_dedup:duplicate", "--lang", "eng_Latn", "-n", "2")
    assert status == 0
    found = blocks(out)
    assert len(found) == 2 and all(block.startswith("-- dropped: exact_dedup:duplicate") for block in found)
    b = inputs["folder"] / "b.jsonl"
    for line, block in enumerate(found, start=1):
        assert f"doc_id      dupe-eng-{line - 1}" in block and "lang        eng_Latn" in block
        assert f"source      {b}:{line}" in block
        assert f"dup_cluster {inputs['eng'][0]['id']}" in block  # the document kept in its place
        first_lines = inputs["eng"][0]["text"].split("\n")[:2]
        assert "".join(f"  | {line}\n" for line in first_lines) in block


def test_examples_of_a_quarantine_reason_show_the_record_as_read(
    output: Path, inputs: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = inspect(capsys, str(output), "--reason", "invalid_json")
    assert status == 0
    [block] = blocks(out)
    assert block.startswith("-- quarantined: invalid_json") and f"source      {inputs['folder'] / 'b.jsonl'}:8" in block
    assert '  | {"text": ' in block


def test_examples_of_any_drop_in_a_language(output: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = inspect(capsys, str(output), "--lang", "fin_Latn")
    assert status == 0
    [block] = blocks(out)
    assert "doc_id      dupe-fin-0" in block


def test_an_unknown_reason_lists_the_known_ones(output: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = inspect(capsys, str(output), "--reason", "quality:c4.too_few_sentences")
    assert status == 2 and out == ""
    assert "'quality:c4.too_few_sentences'" in err
    for known in ("exact_dedup:duplicate (4)", "length:too_short (2)", "invalid_json (1)", "duplicate_id (1)"):
        assert known in err


def test_a_reason_the_language_lacks_and_a_language_for_quarantine_are_errors(
    output: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = inspect(capsys, str(output), "--reason", "exact_dedup:duplicate", "--lang", "zho_Hans")
    assert status == 2 and "languages it dropped: eng_Latn, fin_Latn" in err
    status, _, err = inspect(capsys, str(output), "--reason", "duplicate_id", "--lang", "eng_Latn")
    assert status == 2 and "quarantined records have no language" in err


def test_a_dropped_duplicate_shows_its_cluster(
    output: Path, inputs: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = inspect(capsys, str(output), "--doc", "dupe-eng-1")
    assert status == 0
    representative = inputs["eng"][0]["id"]
    assert out.startswith("-- dropped: exact_dedup:duplicate\n") and "/removed/lang=eng_Latn/" in out
    assert f"duplicate cluster {representative} (the id of the document kept for it), 4 member(s)" in out
    members = re.findall(r"^  (\S+)  (corpus|removed) ", out, flags=re.M)
    assert sorted(members) == sorted([(representative, "corpus")] + [(f"dupe-eng-{i}", "removed") for i in range(3)])


def test_a_kept_document_and_its_quarantined_namesake(
    output: Path, inputs: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    doc_id = inputs["eng"][1]["id"]
    status, out, _ = inspect(capsys, str(output), "--doc", doc_id)
    assert status == 0
    kept, quarantined = blocks(out)
    assert kept.startswith("-- kept") and "/corpus/lang=eng_Latn/" in kept and "lang        eng_Latn" in kept
    assert quarantined.startswith(f"-- quarantined: duplicate_id: {doc_id} was first read at ")
    assert "Another text under an id" in quarantined
    assert "1 member(s)" in out  # a document without duplicates is its own cluster


def test_control_characters_and_markup_in_a_document_are_printed_as_they_are(
    output: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = inspect(capsys, str(output), "--doc", "ctl")
    assert status == 0 and "\x1b" not in out
    assert "  | red \\x1b[31m [bold]x[/bold]" in out  # the escape visible, the brackets not read as markup


def test_an_unknown_document_is_an_error(output: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = inspect(capsys, str(output), "--doc", "no-such-id")
    assert status == 2 and out == "" and "has no document 'no-such-id'" in err


def test_the_report_links_each_reason_to_escaped_examples(output: Path) -> None:
    html_uri, json_uri = write_report(Location(str(output)))
    page = Path(html_uri).read_text()
    assert "<script" not in page
    details = dict(re.findall(r'<details id="(reason-[^"]+)">(.*?)</details>', page, flags=re.S))
    assert set(details) == {
        "reason-exact_dedup-duplicate",
        "reason-length-too_short",
        "reason-invalid_json",
        "reason-duplicate_id",
    }
    assert all(f'href="#{anchor}"' in page for anchor in details)
    short = details["reason-length-too_short"]
    assert "2 of 2 records" in short and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in short
    assert "https://x.example/?q=&lt;b&gt;" in short and "red \\x1b[31m" in short
    assert details["reason-exact_dedup-duplicate"].count("<pre>") == 3  # at most three per reason
    examples = json.loads(Path(json_uri).read_text())["examples"]
    assert {e["doc_id"] for e in examples["length:too_short"]} == {"xss", "ctl"}
    assert [e["reason"] for e in examples["duplicate_id"]] == ["duplicate_id"]


def test_an_hplt_corpus_finds_kept_documents_and_clusters(
    ray_local: None, inputs: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = run(inputs, tmp_path / "hplt", format="hplt")
    representative = inputs["eng"][0]["id"]
    status, out, _ = inspect(capsys, str(output), "--doc", "dupe-eng-2")
    assert status == 0 and out.startswith("-- dropped: exact_dedup:duplicate")
    assert re.search(rf"^  {re.escape(representative)}  corpus eng_Latn$", out, flags=re.M)
    status, out, _ = inspect(capsys, str(output), "--doc", representative)
    assert status == 0 and out.startswith("-- kept") and "/corpus/eng_Latn/1.jsonl.zst" in out


def test_an_output_on_s3(output: Path, tmp_path: Path, s3_storage, capsys: pytest.CaptureFixture[str]) -> None:
    storage, bucket = s3_storage
    remote = Location(f"s3://{bucket}/out", storage)
    for path in output.rglob("*"):
        if path.is_file():
            remote.join(str(path.relative_to(output))).put_bytes(path.read_bytes())
    settings = {"endpoint_url": storage.endpoint_url, "region": "us-east-1", "key": "testing", "secret": "testing"}
    config = tmp_path / "s3.yaml"
    config.write_text(
        yaml.safe_dump({"input": {"paths": [str(output)]}, "output": {"path": remote.uri}, "storage": settings})
    )
    status, out, _ = inspect(capsys, remote.uri, "--config", str(config), "--reason", "length:too_short")
    assert status == 0 and len(blocks(out)) == 2 and f"s3://{bucket}/out/removed/lang=" in out
    status, out, _ = inspect(capsys, remote.uri, "--config", str(config), "--doc", "dupe-fin-0")
    assert status == 0 and "2 member(s)" in out
