"""The document score (``quality.score``, 0-10, higher = better): how likely people find a document fine.

HPLT's releases keep every document with a score and let users choose; FineWeb-2's rules, tuned on whole
English-like pages, drop most of a multilingual crawl whatever its quality (docs/quality.md measures both
against people). The score is a logistic model over signals the fast engine measures for every document
anyway (``quality_fast.measure``) plus the language ID's confidence: each signal is standardised, weighted
and summed, and ``10 / (1 + exp(-sum))`` is the score. Its numbers (means, scales, weights, the intercept,
the default ``min_score`` and the rules that separate) are data, fitted by ``bench/quality_score.py`` on
people's judgements, in ``quality_score.yaml`` with their provenance; a user's own file can replace them.

A signal that a document cannot have (no words, no lines; no stop word list for its language; no language
ID; words counted by characters where a script's segmenter is missing) counts as the average document: it
moves the score neither way. No signal counts more than ``CLIP`` scales from its mean, so one signal on a
scale the judged documents never showed (a script written with its own word separator, say) cannot decide.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import Field, field_validator

from shardflow.config import StrictModel, validate
from shardflow.operators.quality_fast import Measures

__all__ = [
    "SIGNALS",
    "WORD_SIGNALS",
    "ScoreModel",
    "document_scores",
    "load_score_model",
    "signal_values",
    "standardised",
]


def _ratio(numerator: str, denominator: str) -> Callable[[Measures], np.ndarray]:
    return lambda m: m[numerator] / m[denominator]


# Each signal: what it says about a document, from the engine's per-document measures.
SIGNALS: dict[str, Callable[[Measures], np.ndarray]] = {
    "nonword_chunks": _ratio("nonword_chunks", "chunks"),  # separators, bullets, lone symbols: menus
    "title_chunks": _ratio("title_chunks", "chunks"),  # Capitalised Keyword Lists And Titles
    "colons": _ratio("colons", "chunks"),  # "Year: 2014 Genre: Drama" listings
    "letters": _ratio("letters", "nonspace"),
    "capitals": _ratio("capitals", "letters"),
    "numbers": _ratio("numbers", "nonspace"),
    "punctuation": _ratio("punctuation", "nonspace"),
    "symbols": _ratio("symbols", "nonspace"),
    "alpha_words": _ratio("alpha_words", "words"),  # Gopher's alphabetic-word ratio
    "distinct_words": _ratio("distinct_words", "words"),
    "sentences_per_word": _ratio("sentences", "words"),  # C4's sentences: running text has many
    "punct_lines": _ratio("fw_punct_lines", "fw_lines"),  # FineWeb's lines ending in terminal punctuation
    "top_2gram_chars": _ratio("top_2", "chars"),  # Gopher's repetition, as fractions of the characters
    "dup_5gram_chars": _ratio("dup_5", "chars"),
    "stop_words": lambda m: m["stop_words"],  # distinct stop words (FineWeb-2's lists), NaN without a list
    "log_words": lambda m: np.log1p(m["content_words"]),
}
# The signals counted in words: unknown where the engine does not have a document's words as its language's
# tokenizer counts them (a script without its segmenter, counted by characters; Thai, left to datatrove).
WORD_SIGNALS = frozenset(
    {
        "alpha_words",
        "distinct_words",
        "sentences_per_word",
        "top_2gram_chars",
        "dup_5gram_chars",
        "stop_words",
        "log_words",
    }
)
CLIP = 3.0  # a standardised signal counts at most this many scales from its mean: no one signal decides
# The n-gram sizes the signals read, whatever the thresholds test.
TOP_N, DUP_N = 2, 5
KNOWN = frozenset(SIGNALS) | {"lang_score"}  # the language ID's confidence comes with the documents


class Signal(StrictModel):
    """One signal's place in the score: ``weight * (value - mean) / scale``."""

    mean: float
    scale: float = Field(gt=0)
    weight: float


class ScoreModel(StrictModel):
    """The score's fitted numbers and the defaults chosen from them (``quality_score.yaml``)."""

    signals: dict[str, Signal]
    intercept: float
    min_score: float = Field(ge=0, le=10, description="filter mode's default: drop documents scoring lower.")
    separating_checks: list[str] = Field(
        description="The rules (filter.check) that drop far more of what people flag than of what they "
        "find fine; the only ones `rules: default` applies."
    )
    provenance: dict[str, Any] = Field(default_factory=dict)

    @field_validator("signals")
    @classmethod
    def _known(cls, signals: dict[str, Signal]) -> dict[str, Signal]:
        unknown = sorted(set(signals) - KNOWN)
        if unknown:
            raise ValueError(f"unknown signals {unknown}; known: {sorted(KNOWN)}")
        return signals


def load_score_model(path: Path | None = None) -> ScoreModel:
    """The user's score file, else ours (read each time: a file changed since is not answered from memory)."""
    source = path if path is not None else files("shardflow.operators").joinpath("quality_score.yaml")
    return _parsed(source.read_text(encoding="utf-8"))


@cache
def _parsed(text: str) -> ScoreModel:
    return validate(yaml.safe_load(text) or {}, ScoreModel)


def signal_values(
    m: Measures, lang_scores: np.ndarray, has_stop_words: np.ndarray, has_words: np.ndarray
) -> dict[str, np.ndarray]:
    """Every signal of every document of a batch (NaN where a document cannot have it)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        values = {name: np.asarray(signal(m), dtype=np.float64) for name, signal in SIGNALS.items()}
    for name in WORD_SIGNALS:
        values[name] = np.where(has_words, values[name], np.nan)
    values["stop_words"] = np.where(has_stop_words, values["stop_words"], np.nan)
    values["lang_score"] = np.asarray(lang_scores, dtype=np.float64)
    return {name: np.where(np.isfinite(value), value, np.nan) for name, value in values.items()}


def document_scores(values: dict[str, np.ndarray], model: ScoreModel) -> np.ndarray:
    """The score of each document: ``10 * sigmoid(intercept + sum of weighted standardised signals)``."""
    total = np.full(len(next(iter(values.values()))), model.intercept)
    for name, signal in model.signals.items():
        total += signal.weight * standardised(values[name], signal.mean, signal.scale)
    return 10.0 / (1.0 + np.exp(-total))


def standardised(values: np.ndarray, mean: float, scale: float) -> np.ndarray:
    """``(values - mean) / scale``, within +-CLIP; 0 (the mean) where a value is unknown."""
    return np.clip(np.nan_to_num((values - mean) / scale, nan=0.0), -CLIP, CLIP)
