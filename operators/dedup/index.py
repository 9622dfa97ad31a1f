"""A dedup index kept beside a corpus (``exact_index/``, ``dedup_index/``): what it covers, and the folders
that hold it, so that a later run dedups its new documents against the old ones without reading them again.

``index.json`` names the shards the index covers and its ``parts``: the index's own folder (``.``) and those
of the earlier runs it builds on (an incremental run adds its part and lists the old ones, copying nothing).
"""

from __future__ import annotations

from typing import Any

import orjson

from shardflow.errors import ConfigError
from shardflow.shards import Shard
from shardflow.storage import Location

__all__ = ["INDEX_FILE", "checked_index", "index_parts", "read_index_manifest", "write_index_manifest"]

INDEX_FILE = "index.json"


def read_index_manifest(index: Location) -> dict[str, Any]:
    return index.join(INDEX_FILE).read_json()


def write_index_manifest(index: Location, manifest: dict[str, Any]) -> None:
    index.join(INDEX_FILE).put_bytes(orjson.dumps(manifest))


def index_parts(index: Location, manifest: dict[str, Any]) -> list[Location]:
    """The folders that together hold the index at ``index``."""
    return [index if part == "." else index.at(part) for part in manifest.get("parts", ["."])]


def checked_index(index_from: Location, key: str, what: str, shards: list[Shard]) -> dict[str, Any]:
    """The manifest of the ``what`` index at ``index_from``, which must exist and must not cover the new
    ``shards`` (their documents would be compared with themselves and all dropped)."""
    manifest = read_index_manifest(index_from)
    if manifest is None:
        raise ConfigError(f"config error: {key}.index_from: no {what} index at {index_from} ({INDEX_FILE} missing)")
    again = sorted({entry["uri"] for entry in manifest["shards"]} & {shard.uri for shard in shards})
    if again:
        raise ConfigError(
            f"config error: {key}.index_from: {len(again)} input shard(s) are already in the index, e.g. {again[0]}"
        )
    return manifest
