"""``shardflow validate``: the run's checks and plans, without the run. Each test reads the checklist the command
prints and checks that the output folder is left exactly as it was."""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml

from shardflow.cli import main
from shardflow.cluster.pools import block_rows
from shardflow.config import Resources, load_config
from shardflow.errors import ConfigError
from shardflow.operators.langid import LangIdConfig, LanguageId
from shardflow.operators.length import LengthConfig
from shardflow.operators.quality import QualityConfig
from shardflow.operators.registry import PlannedStage
from shardflow.pipelines.corpus import CorpusConfig, run_corpus
from shardflow.pipelines.validate import Cluster, _pools, _rate
from support import PLAIN, REPO, free_port, jsonl_bytes, sample_records, write_shard


def config_file(folder: Path, **sections: Any) -> str:
    """A corpus config over ``folder/in`` into ``folder/out``, no stages unless given, ids allowed to repeat."""
    raw = {
        "input": {"paths": [str(folder / "in")], "duplicate_ids": "allow"},
        "output": {"path": str(folder / "out")},
        "ray": {"progress": False},
    } | sections
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def validate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    status = main(["validate", *args])
    return status, capsys.readouterr().out.splitlines()


def found(lines: list[str], status: str, topic: str, *parts: str) -> list[str]:
    """The checklist's lines of ``status`` and ``topic`` that hold every one of ``parts``."""
    return [line for line in lines if line.startswith(f"{status:<4}  {topic:<7}") and all(p in line for p in parts)]


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder below ``folder`` with its size and modification time: what validate must not change."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_the_sample_passes_and_says_what_a_run_would_find_and_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)  # the sample names its shards relative to the repository
    output = tmp_path / "out"
    status, lines = validate(capsys, "configs/sample.yaml", "--set", f"output.path={output}")
    assert status == 0, lines
    assert not [line for line in lines if line.startswith("FAIL")]
    assert found(
        lines, "OK", "config", "configs/sample.yaml: valid", "langid, exact_dedup, fuzzy_dedup, quality, embed"
    )
    assert found(lines, "OK", "inputs", "57 shard(s)", "mya_Mymr/1.jsonl.zst")
    assert found(
        lines, "OK", "formats", "20 of 57 shard(s) sniffed", "zstd 20", "record layouts of their first lines: v2"
    )
    records = int(re.search(r"about ([\d,]+) records", found(lines, "OK", "records")[0])[1].replace(",", ""))
    assert 0.8 * len(sample_records(recrawl=True)) <= records <= 1.25 * len(sample_records(recrawl=True))
    assert found(lines, "OK", "stages", "stages.0 (langid): model", "lid.176.ftz")
    assert found(lines, "OK", "stages", "stages.4 (embed): model default")
    assert found(lines, "OK", "pools", "stages.0 (langid):", "blocks")
    # a pool of several actors gets blocks cut for every one of them (4 each, from the records estimated), a
    # pool of one takes them as they come; 16 CPUs where no Ray runs in this process (else: the running one's)
    _, wider = validate(capsys, "configs/sample.yaml", "--set", f"output.path={output}", "--set", "ray.num_cpus=16")
    langid = found(wider, "OK", "pools", "stages.0 (langid):")[0]
    actors = int(re.search(r"(\d+) actor\(s\)", langid)[1])
    rows = block_rows(records, actors, 1000)
    assert (f"blocks of {rows:,} rows" if rows else "blocks as they come") in langid
    assert found(lines, "WARN", "pools", "stages.4 (embed):", "asks for 1 GPU", "CPU actors") or found(
        lines, "OK", "pools", "stages.4 (embed):", "GPU"
    )  # on a machine with a GPU it gets one
    assert found(lines, "OK", "output", f"{output} is new: a run starts fresh")
    assert found(lines, "OK", "cost", "rough:", "core-hours", "no rate for input.duplicate_ids")
    assert not output.exists()


def test_a_config_error_is_the_runs_message_and_ends_the_checklist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config_file(tmp_path, stages=[{"op": "quality", "min_score": "high"}])
    with pytest.raises(ConfigError) as raised:
        load_config(path, CorpusConfig)
    status, lines = validate(capsys, path)
    assert status == 2
    assert lines == [f"FAIL  config   {raised.value}"]
    assert lines[0].startswith("FAIL  config   config error: stages.0.min_score: Input should be a valid number")


def test_a_missing_input_and_a_missing_model_fail_and_the_other_checks_still_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config_file(tmp_path, stages=[{"op": "langid", "model": str(tmp_path / "lid.ftz")}])
    status, lines = validate(capsys, path)
    assert status == 2
    assert found(lines, "FAIL", "inputs", f"input path does not exist: {tmp_path / 'in'}")
    assert found(lines, "FAIL", "stages", f"config error: stages.0.model: no such file: {tmp_path / 'lid.ftz'}")
    assert found(lines, "OK", "pools", "stages.0 (langid):") and found(lines, "OK", "output", "is new")
    assert not found(lines, "OK", "cost")  # nothing to price
    assert not (tmp_path / "out").exists()


def test_bad_shards_are_warnings_naming_the_shard_and_what_a_run_quarantines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = sample_records(40)
    write_shard(tmp_path / "in" / "good.jsonl.zst", records)
    write_shard(tmp_path / "in" / "lines.jsonl", jsonl_bytes([PLAIN, PLAIN]) + b"{not json\n[1, 2]\n")
    whole = write_shard(tmp_path / "in" / "cut.jsonl.zst", records).read_bytes()
    (tmp_path / "in" / "cut.jsonl.zst").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "in" / "corrupt.jsonl.gz").write_bytes(gzip.compress(b'{"text": "x"}\n')[:10] + b"garbage" * 20)
    status, lines = validate(capsys, config_file(tmp_path))
    assert status == 0, lines
    assert found(lines, "OK", "inputs", "4 shard(s)")
    assert found(lines, "OK", "formats", "4 of 4 shard(s) sniffed", "zstd 2", "gzip 1", "none 1", "v2 40", "plain 2")
    assert found(lines, "WARN", "formats", "lines.jsonl:", "2 of its first 4 lines are not records")
    assert found(lines, "WARN", "formats", "lines.jsonl:", "invalid_json 1", "not_an_object 1")
    assert found(lines, "WARN", "formats", "cut.jsonl.zst: no complete line in its first")
    assert found(lines, "WARN", "formats", "corrupt.jsonl.gz: its head cannot be read (corrupt_stream")
    assert not found(lines, "WARN", "formats", "good.jsonl.zst")
    assert found(lines, "OK", "pools", "planned on") and not found(lines, "OK", "pools", "stages.")  # no actors


def test_a_pool_plan_that_would_hang_fails_as_the_run_would(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_shard(tmp_path / "in" / "a.jsonl", [PLAIN])
    langid = {"op": "langid", "resources": {"num_cpus": 1, "concurrency": 512}}
    status, lines = validate(capsys, config_file(tmp_path, stages=[langid]))
    assert status == 2
    assert found(lines, "FAIL", "pools", "config error: stages.0.resources: the actor pools ask for 512 CPU")


def test_an_address_where_nothing_listens_fails_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a new process, whatever this session holds
    write_shard(tmp_path / "in" / "a.jsonl", [PLAIN])
    address = f"127.0.0.1:{free_port()}"
    status, lines = validate(capsys, config_file(tmp_path), "--address", address)
    assert status == 2
    assert found(lines, "FAIL", "pools", f"cannot reach the Ray cluster at {address}: ConnectionRefusedError")
    assert found(lines, "OK", "output", "is new")


def test_a_fixed_pool_whose_actors_no_node_holds_fails() -> None:
    stage = PlannedStage("stages.0", LangIdConfig(resources=Resources(num_cpus=3, concurrency=1)), LanguageId)
    nodes = [{"Alive": True, "Resources": {"CPU": 2.0}}, {"Alive": True, "Resources": {"CPU": 2.0}}]
    checks = list(_pools([stage], Cluster(4.0, 0.0, nodes, "two nodes of 2 CPUs"), None))
    assert [check.status for check in checks] == ["OK", "FAIL"]  # 3 of the 4 CPUs fit the plan, not a node
    assert "1 actor(s) of 3 CPU" in checks[1].sentence
    assert "the nodes hold only 0 such actor(s) at once" in checks[1].sentence


def test_a_stage_is_priced_by_its_op_and_the_setting_that_changes_its_rate() -> None:
    assert _rate(QualityConfig())["mb_per_core_second"] == 1.41  # engine: fast
    assert _rate(QualityConfig(engine="datatrove", rules="fineweb2"))["mb_per_core_second"] == 0.39
    assert _rate(LengthConfig()) is None  # left out of the estimate, and named


@pytest.fixture(scope="module")
def finished(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A config and the output a real run of it finished (one small shard, no stages)."""
    folder = tmp_path_factory.mktemp("validate-finished")
    write_shard(folder / "in" / "a.jsonl", sample_records(20))
    path = config_file(folder)
    run_corpus(load_config(path, CorpusConfig))
    return path, folder / "out"


def test_a_finished_output_is_recognised_on_the_cluster_given_and_left_as_it_was(
    finished: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path, output = finished
    before = tree(output)
    status, lines = validate(capsys, path, "--address", "auto")  # the session's Ray: joined, not shut down
    assert status == 0, lines
    assert found(lines, "OK", "output", f"{output} is finished for this config (manifest.json): a run would do nothing")
    assert found(lines, "OK", "pools", "planned on the Ray cluster at auto: 2 CPUs, 0 GPUs on 1 node(s)")
    assert found(lines, "OK", "records", "about 20 records,")
    assert ray.is_initialized()
    assert tree(output) == before


def test_an_output_of_another_config_fails_unless_overwrite_which_warns(
    finished: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path, output = finished
    before = tree(output)
    status, lines = validate(capsys, path, "--set", "input.batch_rows=10")
    assert status == 2
    assert found(lines, "FAIL", "output", "already holds a finished corpus made with a different config")
    status, lines = validate(capsys, path, "--set", "input.batch_rows=10", "--set", "output.if_exists=overwrite")
    assert status == 0, lines
    assert found(lines, "WARN", "output", "holds another config's corpus or staged run", "overwrite: a run removes it")
    assert tree(output) == before


def test_a_staged_run_of_this_config_is_resumable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_shard(tmp_path / "in" / "a.jsonl", [PLAIN])
    path = config_file(tmp_path)
    staged = tmp_path / "out" / "_staging" / load_config(path, CorpusConfig).fingerprint()
    staged.mkdir(parents=True)  # a run killed as it began
    status, lines = validate(capsys, path)
    assert status == 0, lines
    assert found(lines, "OK", "output", "holds an unfinished run of this config: a run resumes it (0 of 1 shards")
    status, lines = validate(capsys, path, "--set", "output.if_exists=error")
    assert status == 2
    assert found(lines, "FAIL", "output", "holds an unfinished run; output.if_exists=error forbids resuming it")
    assert [p.name for p in (tmp_path / "out").rglob("*")] == ["_staging", staged.name]
