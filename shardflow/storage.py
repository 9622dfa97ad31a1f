"""Where data lives: a ``Location`` is a URI (local path, ``s3://``) bound to the settings of the store that
holds it, and the one place that turns it into an fsspec filesystem.

Functions take a location, never a URI and its credentials apart (datatrove's ``DataFolder`` does the same).
Credentials come from the ``storage`` config section or, when it leaves them unset, from the usual AWS
environment variables and files that s3fs/botocore read themselves. They are held as ``SecretStr`` so that
they never show up in a repr, a log line or a manifest.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import posixpath
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash
from fsspec.asyn import sync
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


def _protocol_of(uri: str) -> str:
    """``s3`` for ``s3://bucket/key``, ``file`` for a plain path."""
    return uri.split("://", 1)[0] if "://" in uri else "file"


def join(base: str, *parts: str) -> str:
    """Join URI parts with ``/`` whatever the protocol (``os.path.join`` would break ``s3://``)."""
    return posixpath.join(base.rstrip("/"), *parts)


@dataclass(frozen=True)
class Location:
    """A URI and the settings that reach it: a file or a folder, local or in an object store."""

    uri: str
    storage: StorageConfig = StorageConfig()

    def __str__(self) -> str:
        return self.uri

    def join(self, *parts: str) -> Location:
        return Location(join(self.uri, *parts), self.storage)

    def at(self, uri: str) -> Location:
        """Another URI reached with the same settings."""
        return Location(uri, self.storage)

    @property
    def name(self) -> str:
        return posixpath.basename(self.uri.rstrip("/"))

    def filesystem(self) -> tuple[fsspec.AbstractFileSystem, str]:
        """The filesystem that serves this location and the path inside it."""
        return url_to_fs(self.uri, **self.storage.options_for(_protocol_of(self.uri)))

    def exists(self) -> bool:
        fs, path = self.filesystem()
        return fs.exists(path)

    def is_folder(self) -> bool:
        fs, path = self.filesystem()
        return fs.isdir(path)

    def files(self, suffix: str = "") -> list[Location]:
        """Every file below this folder whose name ends with ``suffix``, sorted; none when there is no folder
        (an object store has no empty folders)."""
        fs, path = self.filesystem()
        found = fs.find(path) if fs.exists(path) else []
        return [self.at(to_uri(fs, name)) for name in sorted(found) if name.endswith(suffix)]

    def relative_files(self) -> list[str]:
        """Every file below this folder, as a path relative to it (``a/b.parquet``), sorted; none when there is
        no folder. Relative to the path the store resolves, so a relative local folder works too."""
        fs, path = self.filesystem()
        root = path.rstrip("/") + "/"
        return [name[len(root) :] for name in sorted(fs.find(path))] if fs.exists(path) else []

    def children(self) -> list[Location]:
        """The entries directly inside this folder, sorted; none when there is none."""
        fs, path = self.filesystem()
        return [self.at(to_uri(fs, name)) for name in sorted(fs.ls(path, detail=False))] if fs.isdir(path) else []

    def remove(self) -> None:
        """Delete this file or folder (with everything in it), if it is there."""
        fs, path = self.filesystem()
        if fs.exists(path):
            fs.rm(path, recursive=True)

    def move_to(self, target: Location) -> None:
        fs, path = self.filesystem()
        _, destination = target.filesystem()
        fs.makedirs(destination.rsplit("/", 1)[0], exist_ok=True)
        fs.mv(path, destination)

    def read_bytes(self) -> bytes:
        fs, path = self.filesystem()
        return fs.cat_file(path)

    def read_json(self) -> Any:
        """A small JSON file (marker, pointer, lease, plan), or None where there is none."""
        try:
            return orjson.loads(self.read_bytes())
        except FileNotFoundError:
            return None

    def read_versioned(self) -> tuple[Any, str | None]:
        """A small JSON file and its version (S3: the ETag; local: a hash of the bytes), or (None, None)
        where there is none: what ``replace_json`` compares against."""
        fs, path = self.filesystem()
        try:
            data, version = sync(fs.loop, _s3_get, fs, path) if _is_s3(fs) else (fs.cat_file(path), None)
        except FileNotFoundError:
            return None, None
        return orjson.loads(data), version or _local_version(data)

    def create_json(self, value: Any) -> str | None:
        """Write ``value`` only if no file is here (S3 ``If-None-Match: *``; local: a hard link, which fails
        on an existing name); the new version, or None when another writer got there first. Raises
        ``ConditionalWritesUnsupported`` on a store that has no such write."""
        data = orjson.dumps(value)
        fs, path = self.filesystem()
        if _is_s3(fs):
            return _s3_conditional_put(fs, path, data, IfNoneMatch="*")
        _require_local(fs, self)
        temporary = _durable_temporary(fs, path, data)
        try:
            os.link(temporary, path)
        except FileExistsError:
            return None
        finally:
            os.unlink(temporary)
        _sync_folder(path)
        return _local_version(data)

    def replace_json(self, value: Any, version: str) -> str | None:
        """Write ``value`` only if the file here is still at ``version`` (S3 ``If-Match``; local: compare and
        rename under an exclusive lock); the new version, or None when it changed since it was read."""
        data = orjson.dumps(value)
        fs, path = self.filesystem()
        if _is_s3(fs):
            return _s3_conditional_put(fs, path, data, IfMatch=version)
        _require_local(fs, self)
        with open(f"{path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if _local_version(fs.cat_file(path)) != version:
                    return None
            except FileNotFoundError:
                return None
            os.replace(_durable_temporary(fs, path, data), path)
            _sync_folder(path)
        return _local_version(data)

    def put_bytes(self, data: bytes) -> None:
        """Write a small file (marker, stats, manifest) atomically."""
        self.write_atomic(lambda handle: handle.write(data))

    def write_atomic(self, write: Callable[[Any], Any]) -> None:
        """Write through ``write(file)`` so that the file is never seen half-written.

        Object stores publish an object only when its upload completes; a local file goes to a temporary
        name first and is renamed.
        """
        fs, path = self.filesystem()
        if not isinstance(fs, LocalFileSystem):
            with fs.open(path, "wb") as handle:
                write(handle)
            return
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        temporary = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
        with fs.open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())  # the bytes reach the disk before the name does: a crash leaves old or new
        fs.mv(temporary, path)
        _sync_folder(path)

    def read_table(self, columns: list[str] | None = None) -> pa.Table:
        """The parquet file here, whole or some ``columns``."""
        fs, path = self.filesystem()
        with fs.open(path, "rb") as handle:
            return pq.read_table(handle, columns=columns)

    def parquet_rows(self) -> int:
        """Rows of the parquet file here, from its footer."""
        fs, path = self.filesystem()
        with fs.open(path, "rb") as handle:
            return pq.ParquetFile(handle).metadata.num_rows

    def write_table(self, table: pa.Table, compression: str | None = "zstd") -> None:
        """``table`` as a parquet file here, never seen half-written."""
        options = _parquet_encodings(table.schema)
        self.write_atomic(lambda handle: pq.write_table(table, handle, compression=compression, **options))

    def arrow_filesystem(self) -> tuple[PyFileSystem, str]:
        """This location for Ray Data's parquet reader and writer: pyarrow's filesystem and the path in it."""
        fs, path = self.filesystem()
        return PyFileSystem(_Handler(fs)), path

    def local_copy(self) -> Path:
        """A local path for this file: the path itself if local, else a cached copy (downloaded once,
        atomically)."""
        if _protocol_of(self.uri) == "file":
            return Path(self.uri.removeprefix("file://"))
        target = cache_dir() / "files" / xxhash.xxh64_hexdigest(self.uri.encode()) / self.name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            fs, path = self.filesystem()
            partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
            fs.get_file(path, str(partial))
            partial.replace(target)
        return target


class ConditionalWritesUnsupported(Exception):
    """The store has no create-if-absent / replace-if-unchanged write (not S3, not a local disk)."""


def _is_s3(fs: fsspec.AbstractFileSystem) -> bool:
    return "s3" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def _require_local(fs: fsspec.AbstractFileSystem, where: Location) -> None:
    if not isinstance(fs, LocalFileSystem):
        raise ConditionalWritesUnsupported(f"{where}: this store has no conditional writes")


def _local_version(data: bytes) -> str:
    return xxhash.xxh64_hexdigest(data)


async def _s3_get(fs: Any, path: str) -> tuple[bytes, str]:
    """An object's bytes and the ETag of those very bytes (one GET: no window between the two)."""
    bucket, key, _ = fs.split_path(path)
    answer = await fs._call_s3("get_object", Bucket=bucket, Key=key)
    async with answer["Body"] as body:
        return await body.read(), answer["ETag"]


def _s3_conditional_put(fs: Any, path: str, data: bytes, **condition: str) -> str | None:
    """``put_object`` with an ``If-None-Match`` / ``If-Match`` condition: the new ETag, or None when the
    condition did not hold (412, or 409 when a concurrent conditional write won)."""
    bucket, key, _ = fs.split_path(path)
    try:
        return fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **condition)["ETag"]
    except (FileExistsError, FileNotFoundError):
        return None
    except OSError as err:
        code = (getattr(err.__cause__, "response", None) or {}).get("Error", {}).get("Code")
        if code in ("PreconditionFailed", "ConditionalRequestConflict"):
            return None
        if code in ("NotImplemented", "InvalidArgument", "InvalidRequest"):
            raise ConditionalWritesUnsupported(f"s3://{bucket}/{key}: the store refused a conditional write") from err
        raise


def _durable_temporary(fs: Any, path: str, data: bytes) -> str:
    """``data`` in a new file beside ``path``, synced to disk: ready to be linked or renamed into place."""
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    temporary = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return temporary


def _sync_folder(path: str) -> None:
    """Make a rename or link in ``path``'s folder durable (POSIX: fsync the directory)."""
    folder = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


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


def cache_dir() -> Path:
    """Where remote model files are copied to: ``$SHARDFLOW_CACHE`` or ``~/.cache/shardflow``."""
    return Path(os.environ.get("SHARDFLOW_CACHE") or Path.home() / ".cache" / "shardflow")


def _parquet_encodings(schema: pa.Schema) -> dict[str, Any]:
    """Float columns (embeddings: fixed-size lists of float16) without dictionary encoding, which never pays
    for them and makes reading a 384-float column 3.5x slower; float32 and float64 with byte-stream-split,
    which groups the exponent bytes so that zstd finds something to compress. Not float16: duckdb reads
    byte-stream-split float16 as an error, and a plain float16 embedding column is only 8% larger."""
    floats = {field.name: _float_leaf(field) for field in schema}
    return {
        "use_dictionary": [name for name, (leaf, _) in floats.items() if leaf is None],
        "column_encoding": {
            leaf: "BYTE_STREAM_SPLIT" for leaf, kind in floats.values() if leaf is not None and kind != pa.float16()
        },
    }


def _float_leaf(field: pa.Field) -> tuple[str | None, pa.DataType | None]:
    """The parquet leaf path of a float column or a list of floats, and its float type; (None, None) else."""
    if pa.types.is_floating(field.type):
        return field.name, field.type
    if pa.types.is_list(field.type) or pa.types.is_fixed_size_list(field.type):
        if pa.types.is_floating(field.type.value_type):
            return f"{field.name}.list.element", field.type.value_type
    return None, None
