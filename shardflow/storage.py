"""One place that turns a URI (local path, glob, ``s3://``) into an fsspec filesystem.

Credentials come from the ``storage`` config section or, when it leaves them unset, from the usual AWS
environment variables and files that s3fs/botocore read themselves. They are held as ``SecretStr`` so that
they never show up in a repr, a log line or a manifest.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from pyarrow.fs import FSSpecHandler, PyFileSystem
from pydantic import BaseModel, ConfigDict, Field, SecretStr


class StorageConfig(BaseModel):
    """Object-store settings, applied to ``s3://`` URIs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint_url: str | None = None
    region: str | None = None
    key: SecretStr | None = None
    secret: SecretStr | None = None
    token: SecretStr | None = None
    anon: bool = False
    max_attempts: int = Field(
        12,
        ge=1,
        description="Attempts per S3 request (botocore's standard retry mode: exponential backoff with jitter, "
        "at most 20 s apart), so that a store that fails for a minute or so costs time, not the run.",
    )

    def options_for(self, protocol: str) -> dict[str, Any]:
        """fsspec keyword arguments for a filesystem of ``protocol``; empty for local files."""
        if protocol not in ("s3", "s3a"):
            return {}
        options: dict[str, Any] = {
            "anon": self.anon,
            "config_kwargs": {"retries": {"mode": "standard", "max_attempts": self.max_attempts}},
        }
        client_kwargs: dict[str, Any] = {}
        if self.endpoint_url:
            client_kwargs["endpoint_url"] = self.endpoint_url
        if self.region:
            client_kwargs["region_name"] = self.region
        if client_kwargs:
            options["client_kwargs"] = client_kwargs
        for name in ("key", "secret", "token"):
            value = getattr(self, name)
            if value is not None:
                options[name] = value.get_secret_value()
        return options


def protocol_of(uri: str) -> str:
    """``s3`` for ``s3://bucket/key``, ``file`` for a plain path."""
    return uri.split("://", 1)[0] if "://" in uri else "file"


def filesystem(uri: str, storage: StorageConfig) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem that serves ``uri`` and the path inside it."""
    fs, path = url_to_fs(uri, **storage.options_for(protocol_of(uri)))
    return fs, path


def join(base: str, *parts: str) -> str:
    """Join URI parts with ``/`` whatever the protocol (``os.path.join`` would break ``s3://``)."""
    return posixpath.join(base.rstrip("/"), *parts)


def to_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A path returned by ``fs`` (``bucket/key``) as a full URI (``s3://bucket/key``); local paths stay plain."""
    if isinstance(fs, LocalFileSystem):
        return path
    return fs.unstrip_protocol(path)


class _Handler(FSSpecHandler):
    """fsspec under pyarrow's filesystem API, where deleting a folder that an object store never had
    (it has no empty folders) is not an error: Ray Data deletes the folder of a write that wrote nothing."""

    def delete_dir(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            super().delete_dir(path)


def arrow_filesystem(fs: fsspec.AbstractFileSystem) -> PyFileSystem:
    """``fs`` for Ray Data's parquet reader and writer."""
    return PyFileSystem(_Handler(fs))


def cache_dir() -> Path:
    """Where remote model files are copied to: ``$SHARDFLOW_CACHE`` or ``~/.cache/shardflow``."""
    return Path(os.environ.get("SHARDFLOW_CACHE") or Path.home() / ".cache" / "shardflow")


def local_copy(uri: str, storage: StorageConfig) -> Path:
    """A local path for ``uri``: the path itself if local, else a cached copy (downloaded once, atomically)."""
    if protocol_of(uri) == "file":
        return Path(uri.removeprefix("file://"))
    target = cache_dir() / "files" / xxhash.xxh64_hexdigest(uri.encode()) / posixpath.basename(uri)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        fs, path = filesystem(uri, storage)
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        fs.get_file(path, str(partial))
        partial.replace(target)
    return target


def exists(uri: str, storage: StorageConfig) -> bool:
    fs, path = filesystem(uri, storage)
    return fs.exists(path)


def write_atomic(fs: fsspec.AbstractFileSystem, path: str, write: Callable[[Any], Any]) -> None:
    """Write through ``write(file)`` so that ``path`` is never seen half-written.

    Object stores publish an object only when its upload completes; a local file goes to a temporary
    name first and is renamed.
    """
    if not isinstance(fs, LocalFileSystem):
        with fs.open(path, "wb") as handle:
            write(handle)
        return
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    temporary = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    with fs.open(temporary, "wb") as handle:
        write(handle)
    fs.mv(temporary, path)


def put_bytes(uri: str, data: bytes, storage: StorageConfig) -> None:
    """Write a small file (marker, stats, manifest) atomically."""
    fs, path = filesystem(uri, storage)
    write_atomic(fs, path, lambda handle: handle.write(data))


def read_json(uri: str, storage: StorageConfig) -> Any:
    """A small JSON file (pointer, lease, plan), or None where there is none."""
    fs, path = filesystem(uri, storage)
    try:
        return orjson.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None


def read_table(uri: str, storage: StorageConfig, columns: list[str] | None = None) -> pa.Table:
    """A parquet file at ``uri`` (local or s3://), whole or some ``columns``."""
    fs, path = filesystem(uri, storage)
    with fs.open(path, "rb") as handle:
        return pq.read_table(handle, columns=columns)


def write_table(table: pa.Table, uri: str, storage: StorageConfig) -> None:
    """``table`` as a zstd parquet file at ``uri``, never seen half-written."""
    fs, path = filesystem(uri, storage)
    options = parquet_encodings(table.schema)
    write_atomic(fs, path, lambda handle: pq.write_table(table, handle, compression="zstd", **options))


def parquet_encodings(schema: pa.Schema) -> dict[str, Any]:
    """Float columns (embeddings: fixed-size lists of float16) without dictionary encoding, which never pays
    for them and makes reading a 384-float column 3.5x slower, and byte-stream-split, which groups the
    exponent bytes so that zstd finds something to compress."""
    floats = {field.name: _float_leaf(field) for field in schema}
    return {
        "use_dictionary": [name for name, leaf in floats.items() if leaf is None],
        "column_encoding": {leaf: "BYTE_STREAM_SPLIT" for leaf in floats.values() if leaf is not None},
    }


def _float_leaf(field: pa.Field) -> str | None:
    """The parquet leaf path of a float column or a list of floats; None for anything else."""
    if pa.types.is_floating(field.type):
        return field.name
    if pa.types.is_list(field.type) or pa.types.is_fixed_size_list(field.type):
        if pa.types.is_floating(field.type.value_type):
            return f"{field.name}.list.element"
    return None
