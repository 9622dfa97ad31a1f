"""Document length: the smallest complete stage, and the example ``docs/operators.md`` walks through.

Adds ``chars`` (characters of the text) and drops documents shorter than ``min_chars`` or longer than
``max_chars``, one Arrow compute call per batch. It holds no model, so it runs in the read tasks.
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from shardflow.config import Resources, StrictModel
from shardflow.operators.base import Annotations, Operator
from shardflow.schema import TEXT
from shardflow.storage import StorageConfig

__all__ = ["LengthConfig", "LengthFilter"]


class LengthConfig(StrictModel):
    """A ``length`` stage."""

    op: Literal["length"] = "length"
    min_chars: int = Field(0, ge=0, description="Drop documents with fewer characters (too_short).")
    max_chars: int | None = Field(None, ge=1, description="Drop documents with more characters (too_long).")
    resources: Resources = Resources()


class LengthFilter(Operator):
    """Adds ``chars``; drops documents outside ``[min_chars, max_chars]``."""

    name = "length"
    added_fields = [pa.field("chars", pa.int64())]
    stateless = True

    def __init__(self, config: LengthConfig, storage: StorageConfig) -> None:
        self.config = config

    def annotate(self, docs: pa.Table) -> Annotations:
        chars = pc.cast(pc.utf8_length(docs[TEXT]), pa.int64()).combine_chunks()
        short = pc.less(chars, self.config.min_chars)
        long = pc.greater(chars, self.config.max_chars if self.config.max_chars is not None else chars)
        reasons = pc.if_else(short, "too_short", pc.if_else(long, "too_long", pa.scalar(None, pa.string())))
        return Annotations({"chars": chars}, drop_reasons=reasons.to_pylist())
