"""Loading configs: safe YAML, ``--set`` overrides, pydantic validation, one-line errors naming the key.

The config models themselves live next to the code they configure (each operator owns its settings;
``pipelines/corpus.py`` composes them), so this module holds only what every config shares.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shardflow.errors import ConfigError

Model = TypeVar("Model", bound=BaseModel)
# Keys whose values are never echoed back (in an error) or sent on (in a submitted job).
CREDENTIAL = re.compile(r"(^|_)(key|secret|token|password|passwd|credentials?)$", re.IGNORECASE)


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, values are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(StrictModel):
    """What one worker of a stage asks Ray for, and how many workers the stage may run."""

    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    concurrency: int | None = Field(
        None, ge=1, description="Workers (actors) of the stage; None lets shardflow size the pool to the cluster."
    )
    batch_size: int = Field(1000, ge=1, description="Rows per batch handed to the operator.")


def load_config(path: str | Path, model: type[Model], overrides: list[str] | None = None) -> Model:
    """Read YAML at ``path``, apply ``key.sub=value`` overrides, validate against ``model``."""
    return validate(read_config(path, overrides), model)


def read_config(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """The YAML at ``path`` with ``key.sub=value`` overrides applied, not yet validated."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}".replace("\n", " ")) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(raw).__name__}")
    for override in overrides or []:
        apply_override(raw, override)
    return raw


def read_overrides(overrides: list[str]) -> dict[str, Any]:
    """``key.sub=value`` overrides alone, as the sections they set."""
    raw: dict[str, Any] = {}
    for override in overrides:
        apply_override(raw, override)
    return raw


def credentials_in(raw: Any, where: str = "") -> list[str]:
    """The keys of ``raw`` (at any depth) that hold a credential: a non-empty value under a name like ``key``,
    ``secret``, ``token``, ``password``."""
    if isinstance(raw, list):
        return [found for i, item in enumerate(raw) for found in credentials_in(item, f"{where}{i}.")]
    if not isinstance(raw, dict):
        return []
    found = []
    for key, value in raw.items():
        if CREDENTIAL.search(str(key)) and value not in (None, "", {}, []) and not isinstance(value, (dict, list)):
            found.append(f"{where}{key}")
        found += credentials_in(value, f"{where}{key}.")
    return found


def validate(raw: dict[str, Any], model: type[Model]) -> Model:
    """Validate a config dict; raise ``ConfigError`` with one line per problem, each naming its key."""
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise ConfigError("\n".join(_format_error(e, raw) for e in err.errors())) from None


def _format_error(error: dict[str, Any], raw: dict[str, Any]) -> str:
    """``config error: stages.0.min_score: Input should be a valid number (got 'abc')``."""
    key = ".".join(str(part) for part in _key_path(raw, error["loc"])) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"config error: {key}: unknown key"
    if error["type"] == "union_tag_invalid":
        context = error["ctx"]
        return (
            f"config error: {key}.op: unknown operator {context['tag']!r} (expected one of: {context['expected_tags']})"
        )
    if error["type"] == "missing":
        return f"config error: {key}: required key is missing"
    got = error.get("input")
    secret = CREDENTIAL.search(key.rsplit(".", 1)[-1]) is not None
    shown = "" if isinstance(got, (dict, list)) or secret else f" (got {got!r})"
    return f"config error: {key}: {error['msg']}{shown}"


def _key_path(raw: Any, loc: tuple[Any, ...]) -> list[Any]:
    """The error location as the user wrote it: pydantic adds the tag of a tagged union (``langid``)."""
    path, node = [], raw
    for part in loc:
        if isinstance(node, dict) and part not in node and node.get("op") == part:
            continue
        path.append(part)
        node = (
            node.get(part)
            if isinstance(node, dict)
            else node[part]
            if isinstance(node, list) and isinstance(part, int) and part < len(node)
            else None
        )
    return path


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply ``a.b.0.c=value`` to ``raw`` in place; the value is parsed as YAML (``[x, y]``, ``3``, ``true``)."""
    dotted, sep, text = override.partition("=")
    if not sep or not dotted:
        raise ConfigError(f"--set {override!r}: expected KEY=VALUE, e.g. output.path=/tmp/out")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    parts = dotted.split(".")
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        node = _child(node, part, ".".join(parts[: depth + 1]))
    last = parts[-1]
    if isinstance(node, list):
        node[_index(node, last, dotted)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"--set {dotted}: {'.'.join(parts[:-1])} is a value, not a section")


def _child(node: Any, part: str, where: str) -> Any:
    """The section ``part`` of ``node``; a missing mapping section is created so ``--set`` can add it."""
    if isinstance(node, list):
        return node[_index(node, part, where)]
    if isinstance(node, dict):
        if node.get(part) is None:
            node[part] = {}
        return node[part]
    raise ConfigError(f"--set {where}: the parent is a value, not a section")


def _index(node: list[Any], part: str, where: str) -> int:
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise ConfigError(f"--set {where}: {part!r} is not an index of a list of {len(node)} items")
    return int(part)
