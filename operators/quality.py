"""Quality: a score for every document, and datatrove's Gopher, C4 and FineWeb rules per language.

The score (``quality_score``, 0-10) comes from the fast engine's measures; the rules are computed by the
fast engine for a whole batch (``quality_fast``) or by datatrove's own filter classes document by document
(``engine: datatrove``, the reference). ``rules: default`` applies only the checks that separate what people
flag from what they find fine, plus ``min_score``; ``rules: fineweb2`` every check. This module chooses
thresholds and word tokenizers by the document's ``lang`` and turns verdicts into columns. Thresholds
are FineWeb-2 style YAML files, one per ``lang_Script`` (``quality_thresholds/``, each citing its source),
with ``default.yaml`` for languages that have none; a folder of the user's files can override them.

Scripts written without spaces (Chinese, Japanese, Thai...) get a real word tokenizer (jieba, SudachiPy,
PyThaiNLP through datatrove) when the ``tokenizers`` extra is installed, and otherwise a character
tokenizer, so that "too few words" never means "the tokenizer could not split this script".
"""

from __future__ import annotations

import hashlib
import logging
from contextlib import suppress
from functools import cache
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import yaml
from datatrove.data import Document
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.filters.base_filter import BaseFilter, get_filter_result
from datatrove.pipeline.filters.gopher_repetition_filter import find_duplicates
from datatrove.utils.text import PUNCTUATION_SET, TERMINAL_PUNCTUATION
from datatrove.utils.word_tokenizers import SpaCyTokenizer, WhitespaceTokenizer, WordTokenizer, load_word_tokenizer
from pydantic import Field, model_validator

from shardflow.config import Resources, StrictModel
from shardflow.errors import ConfigError
from shardflow.operators.base import Annotations, Operator, require_environment
from shardflow.operators.quality_fast import (
    CHARACTERS,
    RULES,
    SEGMENTED,
    Measures,
    Settings,
    Spans,
    measure,
    measured_scores,
    rule_failures,
)
from shardflow.operators.quality_rules import Thresholds, load_thresholds
from shardflow.operators.quality_score import DUP_N, TOP_N, ScoreModel, document_scores, load_score_model, signal_values
from shardflow.operators.quality_segmenters import WordSpans, segmenter_of
from shardflow.schema import LANG
from shardflow.storage import StorageConfig

__all__ = ["QualityConfig", "QualityFilter", "Thresholds", "filters_for", "load_thresholds", "word_tokenizer"]

FILTER_NAMES = ("language_score", "gopher_repetition", "gopher_quality", "c4", "fineweb")
SCORE_NAMES = ("words", "mean_word_length", "alpha_words_ratio", "dup_line_frac", "line_punct_ratio", "new_line_ratio")
QUALITY_TYPE = pa.struct(
    [pa.field(name, pa.bool_()) for name in FILTER_NAMES]
    + [pa.field("reason", pa.string()), pa.field("score", pa.float32())]
    + [pa.field(name, pa.float32()) for name in SCORE_NAMES]
)
# Our labels -> datatrove's tokenizer table, where they differ (it files Chinese under Mandarin, Hani).
TOKENIZER_ALIASES = {"zho_Hans": "cmn_Hani", "zho_Hant": "cmn_Hani", "yue_Hans": "yue_Hani", "yue_Hant": "yue_Hani"}
LINE_END = tuple(TERMINAL_PUNCTUATION)
# The packages datatrove's word tokenizers import (a language whose package is missing falls back to spaces
# or characters): the same set must import on the driver and on every worker.
TOKENIZER_PACKAGES = (
    "botok",
    "indicnlp",
    "jieba",
    "khmernltk",
    "kiwipiepy",
    "laonlp",
    "nltk",
    "pyidaungsu",
    "pythainlp",
    "pyvi",
    "spacy",
    "stanza",
)
SEGMENTING_SPACY = frozenset({"zh", "ja", "ko", "th", "vi"})  # spaCy languages that call a word segmenter
UNSPACED_SCRIPTS = frozenset({"Hani", "Hans", "Hant", "Jpan", "Thai", "Khmr", "Laoo", "Mymr", "Tibt"})


class QualityConfig(StrictModel):
    """A ``quality`` stage."""

    op: Literal["quality"] = "quality"
    mode: Literal["filter", "annotate"] = Field(
        "filter", description="filter: drop failing documents to removed/; annotate: keep all, record verdicts."
    )
    filters: list[Literal["language_score", "gopher_repetition", "gopher_quality", "c4", "fineweb"]] = Field(
        default_factory=lambda: list(FILTER_NAMES), description="Which rules run, in this order."
    )
    thresholds: str | None = Field(None, description="Folder of <lang_Script>.yaml files that override ours.")
    rules: Literal["default", "fineweb2"] = Field(
        "default",
        description="default: of each filter, only the checks that separate what people flag from what they "
        "find fine (quality_score.yaml), plus min_score; fineweb2: every check, exactly as FineWeb-2.",
    )
    min_score: float | None = Field(
        None,
        ge=0,
        le=10,
        description="filter mode: drop documents whose score is lower; null: the fitted default under rules: "
        "default, none under rules: fineweb2.",
    )
    score_model: str | None = Field(
        None, description="A score file (quality_score.yaml's fields) to use instead of ours."
    )
    engine: Literal["fast", "datatrove"] = Field(
        "fast",
        description="fast: the same rules computed for a whole batch at once (docs/quality.md: how closely it "
        "agrees); datatrove: datatrove's filters, document by document (the reference).",
    )
    resources: Resources = Resources()

    @model_validator(mode="after")
    def _datatrove_runs_every_check(self) -> QualityConfig:
        if self.engine == "datatrove" and self.rules != "fineweb2":
            raise ValueError("engine: datatrove runs datatrove's filters as they are: it needs rules: fineweb2")
        return self


class QualityFilter(Operator):
    """Adds ``quality`` (the score, each rule's verdict, the first failing reason); drops failures in filter
    mode."""

    name = "quality"
    added_fields = [pa.field("quality", QUALITY_TYPE)]

    def __init__(
        self, config: QualityConfig, storage: StorageConfig | None = None, environment: dict[str, Any] | None = None
    ) -> None:
        require_environment(QualityFilter, config, environment)
        self.config = config
        self.override = Path(config.thresholds) if config.thresholds else None
        self.score_model: ScoreModel = load_score_model(Path(config.score_model) if config.score_model else None)
        default = config.rules == "default"
        # the checks that count (None: all of them) and the score below which filter mode drops
        self.checks = frozenset(self.score_model.separating_checks) if default else None
        self.min_score = config.min_score if config.min_score is not None else self.score_model.min_score * default

    @staticmethod
    def environment(config: QualityConfig) -> dict[str, Any]:
        """The word tokenizers' packages that import here (datatrove falls back to splitting on spaces or
        characters without them), the thresholds folder's files (missing: ours would be used) and the
        score file's contents."""
        return {
            "tokenizer_packages": [name for name in TOKENIZER_PACKAGES if find_spec(name) is not None],
            "thresholds": _folder_digest(Path(config.thresholds)) if config.thresholds else None,
            "score_model": _file_digest(Path(config.score_model)) if config.score_model else None,
        }

    @staticmethod
    def preflight(config: QualityConfig, storage: StorageConfig, key: str) -> None:
        if config.thresholds and not Path(config.thresholds).is_dir():
            raise ConfigError(f"config error: {key}.thresholds: not a folder: {config.thresholds}")
        if config.score_model:
            try:
                load_score_model(Path(config.score_model))
            except (OSError, ConfigError, yaml.YAMLError) as error:
                detail = "; ".join(line.removeprefix("config error: ") for line in str(error).splitlines())
                raise ConfigError(f"config error: {key}.score_model: {config.score_model}: {detail}") from None

    def annotate(self, docs: pa.Table) -> Annotations:
        size = docs.num_rows
        langs = docs[LANG].to_pylist() if LANG in docs.column_names else [None] * size
        scores = docs["lang_score"].to_pylist() if "lang_score" in docs.column_names else [None] * size
        verdicts = self.judge_batch(docs["text"].combine_chunks(), [lang or "und_Zyyy" for lang in langs], scores)
        reasons = [verdict["reason"] if self.config.mode == "filter" else None for verdict in verdicts]
        return Annotations({"quality": pa.array(verdicts, QUALITY_TYPE)}, drop_reasons=reasons)

    def judge_batch(self, texts: pa.Array, langs: list[str], lang_scores: list[float | None]) -> list[dict[str, Any]]:
        """Each document's verdict: every configured rule's, the first failing reason and the score.

        The fast engine judges a whole batch at once (docs/quality.md: how closely it agrees with datatrove);
        datatrove's filters judge one document at a time where the engine is ``datatrove`` or the language
        is one the fast engine leaves to them. The score always comes from the fast engine's measures."""
        size = len(langs)
        measures, stop_listed = self.measure(texts, langs)
        confidence = np.array([np.nan if score is None else score for score in lang_scores], np.float64)
        has_words = np.array([words_counted(lang) for lang in langs], dtype=bool)
        values = signal_values(measures, confidence, stop_listed, has_words)
        scores = document_scores(values, self.score_model)
        failures = {name: np.full(size, "", dtype=object) for name in FILTER_NAMES}
        annotating = self.config.mode == "annotate"
        extra = {name: np.zeros(size) for name in SCORE_NAMES} if annotating else None
        fast_scores = measured_scores(measures) if annotating else None
        for lang, members in _by_language(langs).items():
            index = np.array(members)
            thresholds = self.thresholds(lang)
            if self.config.engine == "fast" and fast_language(lang):
                found = rule_failures(measures, thresholds, index, self.config.filters, self.checks)
                for name, reasons in found.items():
                    failures[name][index] = reasons
                for name, values in (fast_scores or {}).items():
                    extra[name][index] = values[index]
            else:
                for i in members:
                    text = texts[i].as_py() or ""
                    for name, why in self.datatrove_failures(text, lang).items():
                        failures[name][i] = why
                    if extra is not None:
                        for name, value in scores_of(text, _shared_tokens(lang)).items():
                            extra[name][i] = value
            low = [i for i in members if lang_scores[i] is not None and lang_scores[i] < thresholds.language_score]
            failures["language_score"][low] = "below_threshold"
        return [self._verdict(i, failures, scores, extra) for i in range(size)]

    def measure(self, texts: pa.Array, langs: list[str]) -> tuple[Measures, np.ndarray]:
        """The fast engine's measures of every document, and which documents' languages have stop words."""
        thresholds = {lang: self.thresholds(lang) for lang in set(langs)}
        stopwords: dict[tuple[str, ...], list[int]] = {}
        for i, lang in enumerate(langs):
            if thresholds[lang].stopwords:
                stopwords.setdefault(tuple(thresholds[lang].stopwords), []).append(i)
        sources = np.array([word_source(lang) for lang in langs], np.int8)
        settings = Settings(
            languages=np.array([fast_language(lang) or "xx" for lang in langs]),
            regex_sentences=np.array([isinstance(word_tokenizer(lang), WhitespaceTokenizer) for lang in langs]),
            min_words_per_line=np.array([0 if unspaced(lang) else 3 for lang in langs]),
            stopwords={words: np.array(members) for words, members in stopwords.items()},
            top_ns=tuple(sorted({TOP_N} | {n for t in thresholds.values() for n, _ in t.top_n_grams})),
            dup_ns=tuple(sorted({DUP_N} | {n for t in thresholds.values() for n, _ in t.dup_n_grams})),
            word_source=sources,
            given=segmented_words(texts, langs, sources),
        )
        stop_listed = np.zeros(len(langs), dtype=bool)
        for members in stopwords.values():
            stop_listed[members] = True
        return measure(texts, settings), stop_listed

    def datatrove_failures(self, text: str, lang: str) -> dict[str, str]:
        """datatrove's filters' reasons for one document ("" where a filter passes it); in filter mode up to
        the first failure. Under ``rules: default`` a filter counts only where its reason is a separating
        check (datatrove names its first failing check only: a later separating one goes unseen)."""
        found: dict[str, str] = {}
        for name in self.config.filters:
            if name == "language_score":
                continue
            passed, why = get_filter_result(self.filters(lang)[name].filter(Document(text=text, id="")))
            why = "" if passed else why or "rejected"
            found[name] = why if not why or self.checks is None or f"{name}.{why}" in self.checks else ""
            if found[name] and self.config.mode == "filter":
                break
        return found

    def _verdict(
        self, i: int, failures: dict[str, np.ndarray], scores: np.ndarray, extra: dict[str, np.ndarray] | None
    ) -> dict[str, Any]:
        verdict: dict[str, Any] = dict.fromkeys(FILTER_NAMES)
        verdict.update(reason=None, score=float(scores[i]))
        for name in self.config.filters:
            why = failures[name][i]
            verdict[name] = not why
            if why and verdict["reason"] is None:
                verdict["reason"] = f"{name}.{why}"
                if self.config.mode == "filter":
                    return verdict
        if verdict["reason"] is None and scores[i] < self.min_score:
            verdict["reason"] = "score.below_min_score"
        if extra is not None:
            verdict.update({key: float(values[i]) for key, values in extra.items()})
        return verdict

    def thresholds(self, lang: str) -> Thresholds:
        return load_thresholds(lang, self.override)

    def filters(self, lang: str) -> dict[str, BaseFilter]:
        return _build_filters(lang, self.override)


def _by_language(langs: list[str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, lang in enumerate(langs):
        groups.setdefault(lang, []).append(i)
    return groups


@cache
def _build_filters(lang: str, override: Path | None) -> dict[str, BaseFilter]:
    """datatrove's filter objects for one language, built once per actor and language.

    They share one tokenizer that remembers its last text: datatrove's filters each split the same text
    into words again, and tokenizing is most of their cost.
    """
    return filters_for(load_thresholds(lang, override), lang, _shared_tokens(lang))


@cache
def _shared_tokens(lang: str) -> SharedTokens:
    """One remembering tokenizer per language, shared by the filters and the scores."""
    return SharedTokens(word_tokenizer(lang))


def scores_of(text: str, words_of: WordTokenizer) -> dict[str, float]:
    """The quantities the rules test, as the Gopher and FineWeb papers define them, for annotate mode."""
    words = words_of.word_tokenize(text)
    content = [word for word in words if any(char not in PUNCTUATION_SET for char in word)]
    lines = [line for line in text.split("\n") if line.strip()]
    return {
        "words": float(len(content)),
        "mean_word_length": sum(map(len, content)) / len(content) if content else 0.0,
        "alpha_words_ratio": sum(any(c.isalpha() for c in w) for w in words) / len(words) if words else 0.0,
        "dup_line_frac": find_duplicates(lines)[0] / len(lines) if lines else 0.0,
        "line_punct_ratio": sum(line.endswith(LINE_END) for line in lines) / len(lines) if lines else 0.0,
        "new_line_ratio": text.count("\n") / len(words) if words else 0.0,
    }


def filters_for(t: Thresholds, lang: str, words: WordTokenizer) -> dict[str, BaseFilter]:
    """The four datatrove filters with ``t``'s numbers, splitting words with ``words``."""
    return {
        "gopher_repetition": GopherRepetitionFilter(
            dup_line_frac=t.dup_line_frac,
            top_n_grams=tuple(t.top_n_grams),
            dup_n_grams=tuple(t.dup_n_grams),
            language=words,
        ),
        "gopher_quality": GopherQualityFilter(
            min_doc_words=t.min_doc_words,
            min_avg_word_length=t.min_avg_word_length,
            max_avg_word_length=t.max_avg_word_length,
            max_non_alpha_words_ratio=t.max_non_alpha_words_ratio,
            stop_words=t.stopwords,
            min_stop_words=t.min_stop_words if t.stopwords else None,
            language=words,
        ),
        # C4 counts words per line by spaces, which unspaced scripts do not have: that one rule is off there
        "c4": C4QualityFilter(
            filter_no_terminal_punct=False, min_words_per_line=-1 if unspaced(lang) else 3, language=words
        ),
        "fineweb": FineWebQualityFilter(
            line_punct_thr=t.line_punct_thr,
            new_line_ratio=t.new_line_ratio,
            short_line_thr=t.short_line_thr,
            char_duplicates_ratio=t.char_duplicates_ratio,
            language=words,
        ),
    }


def _file_digest(path: Path) -> str:
    """A digest of a file's contents; ``missing`` where there is none."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else "missing"


def _folder_digest(folder: Path) -> str:
    """A digest of a thresholds folder's YAML files (names and contents); ``missing`` where there is none."""
    if not folder.is_dir():
        return "missing"
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.yaml")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@cache
def word_tokenizer(lang: str) -> WordTokenizer:
    """datatrove's tokenizer for ``lang`` if it and its package are available; else a fallback by script."""
    with suppress(ImportError):
        import jieba  # logs at DEBUG level on every actor otherwise

        jieba.setLogLevel(logging.WARNING)
    try:
        tokenizer = load_word_tokenizer(TOKENIZER_ALIASES.get(lang, lang))
        if type(tokenizer) is SpaCyTokenizer and tokenizer.language not in SEGMENTING_SPACY:
            # spaCy's rule-based tokenizers need spaCy's language data only; the pipeline itself (seconds for
            # languages with large exception lists) is built on first use, which the fast engine never makes
            from spacy.util import get_lang_class

            get_lang_class(tokenizer.language)
            return tokenizer
        tokenizer.word_tokenize("probe")  # the packages load on first use
        tokenizer.sent_tokenize("probe. probe.")
        return tokenizer
    except Exception:  # noqa: BLE001  (unknown language, missing package, spaCy without that language)
        return CharacterTokenizer() if unspaced(lang) else WhitespaceTokenizer()


class SharedTokens(WordTokenizer):
    """A tokenizer that answers a repeated question about the same text from memory."""

    def __init__(self, inner: WordTokenizer) -> None:
        super().__init__(inner.language)
        self.inner = inner
        self.last: dict[str, tuple[str, list[Any]]] = {}

    def _remembered(self, method: str, text: str) -> list[Any]:
        found = self.last.get(method)
        if found is None or found[0] is not text and found[0] != text:
            found = (text, getattr(self.inner, method)(text))
            self.last[method] = found
        return found[1]

    def word_tokenize(self, text: str) -> list[str]:
        return self._remembered("word_tokenize", text)

    def sent_tokenize(self, text: str) -> list[str]:
        return self._remembered("sent_tokenize", text)

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return self._remembered("span_tokenize", text)


def segmented_words(texts: pa.Array, langs: list[str], sources: np.ndarray) -> Spans:
    """The word spans of the documents whose words come from a segmenter, one call per document."""
    found = [(i, *segmenter(langs[i])(texts[int(i)].as_py() or "")) for i in np.flatnonzero(sources == SEGMENTED)]
    if not found:
        return Spans(*(np.zeros(0, np.int64),) * 3)
    owner = np.concatenate([np.full(len(start), i, np.int64) for i, start, _ in found])
    return Spans(np.concatenate([start for _, start, _ in found]), np.concatenate([end for *_, end in found]), owner)


@cache
def segmenter(lang: str) -> WordSpans | None:
    """The word spans of ``lang``'s segmenter, called without spaCy (jieba, SudachiPy), if it has one."""
    return segmenter_of(word_tokenizer(lang))


@cache
def word_source(lang: str) -> int:
    """Where the fast engine takes ``lang``'s words from (``quality_fast.RULES`` and its neighbours)."""
    if type(word_tokenizer(lang)) is CharacterTokenizer:
        return CHARACTERS
    return SEGMENTED if segmenter(lang) is not None else RULES


@cache
def fast_language(lang: str) -> str | None:
    """The spaCy language whose rules the fast engine follows for ``lang`` (``xx``: the generic ones, which
    datatrove's whitespace tokenizer uses, and the language-independent character classes where the words
    come from elsewhere: a segmenter, or the character fallback), or None where its tokenizer is not spaCy's
    rule-based one and has no segmenter the engine calls (Thai: PyThaiNLP's words and its sentence model;
    Vietnamese: pyvi; Korean: MeCab)."""
    tokenizer = word_tokenizer(lang)
    if type(tokenizer) in (WhitespaceTokenizer, CharacterTokenizer) or word_source(lang) != RULES:
        return "xx"
    if type(tokenizer) is SpaCyTokenizer and tokenizer.language not in SEGMENTING_SPACY:
        return tokenizer.language
    return None


def words_counted(lang: str) -> bool:
    """Whether the fast engine counts ``lang``'s words as its tokenizer does (not by characters for want of
    a segmenter, not left to datatrove's filters)."""
    return fast_language(lang) is not None and word_source(lang) != CHARACTERS


def unspaced(lang: str) -> bool:
    """Whether ``lang``'s script is written without spaces between words."""
    return lang.rsplit("_", 1)[-1] in UNSPACED_SCRIPTS


class CharacterTokenizer(WhitespaceTokenizer):
    """Each letter a word: the fallback for unspaced scripts when their real tokenizer is not installed."""

    def word_tokenize(self, text: str) -> list[str]:
        return [char for char in text if not char.isspace()]
