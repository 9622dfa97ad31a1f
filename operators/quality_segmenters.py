"""Word spans from the segmenters datatrove's tokenizers call, without building spaCy documents.

For Chinese and Japanese, datatrove's tokenizer is spaCy with a segmenter inside (jieba, SudachiPy): the
segmenter finds the words, then spaCy builds a ``Doc`` around them, creating a vocabulary entry for every
word it has not seen (two thirds of the time, and memory that grows with the corpus). The fast quality
engine needs only where the words are: these adapters call the very segmenter object datatrove's tokenizer
holds, and return each word's ``[start, end)`` in the text; the engine strips them and drops whitespace,
as datatrove's ``word_tokenize`` does, so the words are the same (checked per document by the agreement
test and ``bench/quality_agreement.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from datatrove.utils.word_tokenizers import SpaCyTokenizer, WordTokenizer, chunk_text_on_bytes

__all__ = ["WordSpans", "segmenter_of"]

WordSpans = Callable[[str], tuple[np.ndarray, np.ndarray]]
JAPANESE_CHUNK_BYTES = 40_000  # datatrove cuts Japanese texts into chunks of this many bytes for spaCy


def segmenter_of(tokenizer: WordTokenizer) -> WordSpans | None:
    """The word spans of ``tokenizer``'s segmenter, or None where it has none we can call directly."""
    if type(tokenizer) is not SpaCyTokenizer or tokenizer.language not in ("zh", "ja"):
        return None
    inner = tokenizer.tokenizer.tokenizer  # spaCy's tokenizer object, which holds the segmenter
    if tokenizer.language == "zh" and getattr(inner, "jieba_seg", None) is not None:
        return _jieba(inner.jieba_seg)
    if tokenizer.language == "ja" and hasattr(getattr(inner, "tokenizer", None), "tokenize"):
        return _sudachi(inner.tokenizer)
    return None


def _jieba(jieba) -> WordSpans:
    """jieba's pieces cover the text in order (whitespace and punctuation included), so their lengths give
    their places; spaCy's Chinese tokenizer takes the same call's non-empty pieces as its words."""

    def spans(text: str) -> tuple[np.ndarray, np.ndarray]:
        pieces = [piece for piece in jieba.cut(text, cut_all=False) if piece]
        if "".join(pieces) != text:
            return _aligned(pieces, text)
        lengths = np.fromiter(map(len, pieces), np.int64, len(pieces))
        ends = np.cumsum(lengths)
        return ends - lengths, ends

    return spans


def _aligned(pieces: list[str], text: str) -> tuple[np.ndarray, np.ndarray]:
    """Each piece found in the text after the one before, as spaCy aligns a segmenter's words (a piece that
    is not there counts as no word, where spaCy would raise)."""
    starts, ends, position = [], [], 0
    for piece in pieces:
        found = text.find(piece, position)
        if found >= 0:
            starts.append(found)
            ends.append(found + len(piece))
            position = found + len(piece)
    return np.array(starts, np.int64), np.array(ends, np.int64)


def _sudachi(sudachi) -> WordSpans:
    """SudachiPy's morphemes carry their offsets; datatrove tokenizes Japanese in byte-bounded chunks."""

    def spans(text: str) -> tuple[np.ndarray, np.ndarray]:
        starts: list[int] = []
        ends: list[int] = []
        base = 0
        for chunk in chunk_text_on_bytes(text, JAPANESE_CHUNK_BYTES):
            for morpheme in sudachi.tokenize(chunk):
                starts.append(base + morpheme.begin())
                ends.append(base + morpheme.end())
            base += len(chunk)
        return np.array(starts, np.int64), np.array(ends, np.int64)

    return spans
