"""Per-language quality thresholds: FineWeb-2 style YAML files, one per ``lang_Script``.

Both quality engines read their numbers from here (``quality_thresholds/``, each file citing its
source, with ``default.yaml`` for languages that have none; a folder of the user's files can override
them).
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from pathlib import Path

import yaml
from pydantic import Field

from shardflow.config import StrictModel
from shardflow.schema import safe_label

__all__ = ["Thresholds", "load_thresholds"]


class Thresholds(StrictModel):
    """One language's numbers, as FineWeb-2 publishes them (plus the C4 line rule for unspaced scripts)."""

    language_score: float = 0.0
    dup_line_frac: float = 0.3
    top_n_grams: list[tuple[int, float]] = [(2, 0.2), (3, 0.18), (4, 0.16)]
    dup_n_grams: list[tuple[int, float]] = [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.1)]
    line_punct_thr: float = 0.12
    new_line_ratio: float = 0.3
    char_duplicates_ratio: float = 0.1
    min_avg_word_length: float | None = 3
    max_avg_word_length: float | None = 10
    max_non_alpha_words_ratio: float = 0.8
    min_doc_words: int = 50
    stopwords: list[str] = Field(default_factory=list)
    min_stop_words: int = 2
    short_line_thr: float = Field(1.0, description="FineWeb's short-line rule; 1.0 turns it off, as FineWeb-2 did.")


@cache
def load_thresholds(lang: str, override: Path | None) -> Thresholds:
    """The user's file for ``lang``, else ours, else ``default.yaml`` (also for a label that could not name a
    file: ``lang`` comes from a model)."""
    bundled = files("shardflow.operators").joinpath("quality_thresholds")
    for folder in ([override] if override else []) + [bundled] if safe_label(lang) == lang else []:
        candidate = folder.joinpath(f"{lang}.yaml")
        if candidate.is_file():
            return Thresholds.model_validate(yaml.safe_load(candidate.read_text(encoding="utf-8")) or {})
    return Thresholds.model_validate(yaml.safe_load(bundled.joinpath("default.yaml").read_text(encoding="utf-8")))
