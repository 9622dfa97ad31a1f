"""Config loading: safe YAML, --set overrides, one-line errors that name the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shardflow.config import apply_override, load_config
from shardflow.errors import ConfigError
from shardflow.pipelines.corpus import CorpusConfig
from support import REPO

MINIMAL = "input: {paths: [a.jsonl]}\noutput: {path: out}\nstages: [{op: langid}]\n"


def load(tmp_path: Path, text: str, overrides: list[str] | None = None) -> CorpusConfig:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_config(path, CorpusConfig, overrides)


def test_the_bundled_sample_config_is_valid() -> None:
    config = load_config(REPO / "configs" / "sample.yaml", CorpusConfig)
    assert [stage.op for stage in config.stages] == ["langid", "exact_dedup", "fuzzy_dedup", "quality", "embed"]
    assert config.output.if_exists == "resume"


@pytest.mark.parametrize(
    "text,message",
    [
        (MINIMAL.replace("stages:", "stagez:"), r"^config error: stagez: unknown key$"),
        (
            MINIMAL.replace("{op: langid}", "{op: langid, min_score: high}"),
            r"^config error: stages\.0\.min_score: .*'high'",
        ),
        (MINIMAL.replace("{op: langid}", "{op: langidd}"), r"^config error: stages\.0\.op: unknown operator 'langidd'"),
        (
            MINIMAL.replace("{op: langid}", "{op: langid, resources: {num_cpus: -2}}"),
            r"^config error: stages\.0\.resources\.num_cpus: .*greater than or equal to 0",
        ),
        (MINIMAL.replace("output: {path: out}\n", ""), r"^config error: output: required key is missing$"),
        (MINIMAL.replace("[a.jsonl]", "[]"), r"^config error: input\.paths: "),
        (
            MINIMAL.replace("[{op: langid}]", "[{op: fuzzy_dedup}, {op: fuzzy_dedup}]"),
            r"^config error: stages: .*fuzzy_dedup may appear once",
        ),
        (
            MINIMAL.replace("{op: langid}", "{op: fuzzy_dedup, verify_threshold: 1.5}"),
            r"^config error: stages\.0\.verify_threshold: .*less than or equal to 1",
        ),
        ("input: [1, 2", r"not valid YAML"),
        ("- a\n- b\n", r"top level must be a mapping"),
        ("!!python/object/apply:os.system [echo hacked]\n", r"not valid YAML"),
    ],
)
def test_bad_configs_give_one_line_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, text)
    assert "\n" not in str(raised.value)
    assert re.search(message, str(raised.value)), str(raised.value)


def test_overrides_set_nested_values_lists_and_new_sections(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        MINIMAL,
        [
            "output.path=s3://b/x",
            "stages.0.keep=[fin_Latn, eng_Latn]",
            "stages.0.min_score=0.5",
            "storage.endpoint_url=http://127.0.0.1:9",
        ],
    )
    assert config.output.path == "s3://b/x" and config.stages[0].keep == ["fin_Latn", "eng_Latn"]
    assert config.stages[0].min_score == 0.5 and config.storage.endpoint_url == "http://127.0.0.1:9"


@pytest.mark.parametrize(
    "override,message",
    [
        ("output.path", "expected KEY=VALUE"),
        ("stages.3.keep=[]", "not an index"),
        ("output.path.deeper=1", "is a value, not a section"),
    ],
)
def test_bad_overrides_are_explained(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        apply_override({"output": {"path": "x"}, "stages": [{}]}, override)


def test_fingerprint_ignores_where_it_runs_and_credentials_but_not_what_it_does(tmp_path: Path) -> None:
    base = load(tmp_path, MINIMAL)
    assert (
        base.fingerprint()
        == load(tmp_path, MINIMAL, ["ray.address=auto", "storage.key=AKIA", "output.if_exists=error"]).fingerprint()
    )
    assert base.fingerprint() != load(tmp_path, MINIMAL, ["stages.0.keep=[fin_Latn]"]).fingerprint()


def test_credentials_are_masked_in_what_is_written(tmp_path: Path) -> None:
    config = load(tmp_path, MINIMAL, ["storage.key=AKIASECRET", "storage.secret=hunter2"])
    assert "AKIASECRET" not in str(config.redacted()) and "hunter2" not in repr(config)
    assert config.storage.options_for("s3")["secret"] == "hunter2"


def test_an_invalid_credential_is_never_echoed_back(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        load(tmp_path, MINIMAL, ["storage.secret=123456", "stages.0.min_score=high"])
    message = str(refused.value)
    assert "storage.secret" in message and "123456" not in message  # named, not shown
    assert "'high'" in message  # other values are still shown
