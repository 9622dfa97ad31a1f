"""MinHash signatures and LSH band keys, vectorised over whole Arrow batches.

No Python loop runs per document or per shingle. A batch's texts are put in normal form (NFKC, lower case)
by Arrow kernels; the UTF-8 buffer of the whole batch is then decoded to code points with numpy, and a
table of every code point's class (separator: punctuation, symbol, space or control; digit; other)
splits it into words: runs of other code points, with each run of digits read as ``0``. A word's hash is
a polynomial prefix hash over the batch's code points (two lookups and a multiply per word), a shingle's
(``n`` consecutive words, or ``n`` consecutive characters in scripts written without spaces) folds its
units' hashes with splitmix64's mixer. MinHash then takes, per document and for each of ``bands x rows``
hash functions, the minimum of ``a_k * h + b_k`` mod 2^32 over its shingles (32-bit lanes: twice the
speed of 64-bit ones, and the same estimation error, measured), and each band's ``rows`` values are folded
into one 64-bit band key. Two documents share a band key with probability ``J^rows`` (``J`` their
Jaccard similarity), so the chance that LSH pairs them is ``1 - (1 - J^rows)^bands``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from shardflow.codepoints import PRIME, class_table, decode, mix, span_hasher
from shardflow.config import StrictModel

# Scripts written without spaces between words: shingles are character n-grams there.
UNSPACED_SCRIPTS = frozenset({"Hani", "Hans", "Hant", "Jpan", "Thai", "Khmr", "Laoo", "Mymr", "Tibt", "Java", "Bali"})
SEPARATORS = r"[\p{P}\p{S}\p{Z}\p{Cc}]+"
DIGITS = r"\p{Nd}+"
OTHER, SEPARATOR, DIGIT = 0, 1, 2
ZERO = ord("0")
MAX_CELLS = 1 << 22  # shingles x hash functions evaluated at once (16 MiB of uint32)


class MinHashParams(StrictModel):
    """How documents become band keys. Defaults are datatrove's (14 bands x 8 rows, word 5-grams): a pair
    is found with probability 0.5 at Jaccard 0.70, 0.92 at 0.80 and 0.9996 at 0.90. HPLT uses 17 x 15
    (Jaccard 0.8), NeMo Curator 20 x 13 with 24-character n-grams."""

    bands: int = Field(14, ge=1, le=255)
    rows: int = Field(8, ge=1, le=64)
    word_ngrams: int = Field(5, ge=1, description="Words per shingle in scripts written with spaces.")
    char_ngrams: int = Field(5, ge=1, description="Characters per shingle in scripts without spaces (CJK, Thai...).")
    seed: int = Field(1, ge=0, description="Seeds the hash functions; runs compare only with the same seed.")


@cache
def _code_point_classes() -> np.ndarray:
    """OTHER, SEPARATOR or DIGIT for every code point, from Unicode categories (built once: ~0.1 s)."""
    return class_table([(SEPARATORS, SEPARATOR), (DIGITS, DIGIT)])


def unspaced(langs: list[str | None]) -> np.ndarray:
    """Which documents take character shingles, from their ``lang`` (``xxx_Scri``) labels."""
    return np.array([bool(lang) and lang.rpartition("_")[2] in UNSPACED_SCRIPTS for lang in langs], dtype=bool)


@dataclass
class Shingles:
    """Shingle hashes of a batch: ``hashes[i]`` belongs to document ``owner[i]`` (ascending)."""

    hashes: np.ndarray
    owner: np.ndarray


@dataclass
class CodePoints:
    """A batch's texts in normal form as code points: ``owner[i]`` is the document of ``values[i]``;
    separators are gone and each run of digits is one ``0``; ``word_start`` marks the first of each word."""

    values: np.ndarray
    owner: np.ndarray
    word_start: np.ndarray


def _code_points(texts: pa.Array) -> CodePoints:
    """Decode a batch to normalised code points (NFKC and lower case by Arrow, the rest here)."""
    texts = pc.fill_null(texts.cast(pa.large_string()), "")
    wide = pc.invert(pc.string_is_ascii(texts))  # ASCII is its own NFKC form
    if pc.any(wide).as_py():
        texts = pc.replace_with_mask(texts, wide, pc.utf8_normalize(texts.filter(wide), "NFKC"))
    batch = decode(pc.utf8_lower(texts))
    values, owner, doc_first = batch.values, batch.owner, batch.doc_first
    classes = _code_point_classes()[values]
    separator = classes == SEPARATOR
    digit = classes == DIGIT
    follows_digit = np.concatenate(([False], digit[:-1])) & ~doc_first[:-1]
    keep = ~separator & ~(digit & follows_digit)
    word_start = doc_first[:-1] | np.concatenate(([False], separator[:-1]))
    values[digit] = ZERO
    return CodePoints(values[keep], owner[keep], word_start[keep])


def normal_form(texts: pa.Array) -> list[str]:
    """The text each document's shingles are taken from, words joined by spaces (to read and to test)."""
    points = _code_points(texts)
    words: list[list[str]] = [[] for _ in range(len(texts))]
    starts = np.flatnonzero(points.word_start)
    for start, stop in zip(starts, np.append(starts[1:], len(points.values)), strict=True):
        words[points.owner[start]].append("".join(map(chr, points.values[start:stop])))
    return [" ".join(doc) for doc in words]


def _ngrams(units: np.ndarray, owner: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every run of ``n`` consecutive units inside one document; a document with fewer units
    than ``n`` gets one shingle of all of them (so short texts still match their copies)."""
    count = max(len(units) - n + 1, 0)
    within = owner[:count] == owner[n - 1 : n - 1 + count]
    grams = np.zeros(count, dtype=np.uint64)
    for k in range(n):
        grams = mix(grams * PRIME + units[k : k + count])
    docs, first, sizes = np.unique(owner, return_index=True, return_counts=True)
    short = np.flatnonzero(sizes < n)
    shorts = np.zeros(len(short), dtype=np.uint64)
    for k in range(n - 1):
        position = np.minimum(first[short] + k, len(units) - 1)
        shorts = np.where(k < sizes[short], mix(shorts * PRIME + units[position]), shorts)
    hashes = np.concatenate((grams[within], shorts))
    owners = np.concatenate((owner[:count][within], docs[short]))
    order = np.argsort(owners, kind="stable")
    return hashes[order], owners[order]


def shingle(texts: pa.Array, char_docs: np.ndarray, params: MinHashParams) -> Shingles:
    """Hashes of every document's shingles: word n-grams, or character n-grams where ``char_docs``."""
    points = _code_points(texts)
    chars = char_docs[points.owner]
    parts = []
    if (~chars).any():
        boundaries = np.append(np.flatnonzero(points.word_start), len(points.values))
        starts = np.flatnonzero(points.word_start & ~chars)
        ends = boundaries[np.searchsorted(boundaries, starts, side="right")]
        words = span_hasher(points.values)(starts, ends)
        parts.append(_ngrams(words, points.owner[starts], params.word_ngrams))
    if chars.any():
        parts.append(_ngrams(mix(points.values[chars].astype(np.uint64)), points.owner[chars], params.char_ngrams))
    if len(parts) == 1:
        return Shingles(*parts[0])
    hashes = np.concatenate([p[0] for p in parts] or [np.zeros(0, np.uint64)])
    owner = np.concatenate([p[1] for p in parts] or [np.zeros(0, np.int64)])
    order = np.argsort(owner, kind="stable")
    return Shingles(hashes[order], owner[order])


class MinHasher:
    """Signatures and band keys for given ``MinHashParams`` (the hash functions drawn once from the seed)."""

    def __init__(self, params: MinHashParams) -> None:
        self.params = params
        rng = np.random.default_rng(params.seed)
        size = params.bands * params.rows
        self.multipliers = rng.integers(0, 1 << 31, size=size, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
        self.addends = rng.integers(0, 1 << 32, size=size, dtype=np.uint32)
        self.band_seeds = mix(np.arange(1, params.bands + 1, dtype=np.uint64) + np.uint64(params.seed << 8))

    @cached_property
    def num_hashes(self) -> int:
        return self.params.bands * self.params.rows

    def signatures(self, shingles: Shingles, num_docs: int) -> tuple[np.ndarray, np.ndarray]:
        """``(num_docs, bands*rows)`` uint32 signatures and a mask of the documents that have any shingle."""
        signatures = np.zeros((num_docs, self.num_hashes), dtype=np.uint32)
        has = np.zeros(num_docs, dtype=bool)
        docs, first = np.unique(shingles.owner, return_index=True)
        has[docs] = True
        bounds = np.append(first, len(shingles.hashes))
        per_chunk = max(1, MAX_CELLS // self.num_hashes)
        start = 0
        while start < len(docs):
            stop = int(np.searchsorted(bounds, bounds[start] + per_chunk, side="right")) - 1
            stop = max(stop, start + 1)
            hashes = (shingles.hashes[bounds[start] : bounds[stop]] >> np.uint64(32)).astype(np.uint32)
            values = hashes[:, None] * self.multipliers[None, :]
            values += self.addends[None, :]
            signatures[docs[start:stop]] = np.minimum.reduceat(values, bounds[start:stop] - bounds[start], axis=0)
            start = stop
        return signatures, has

    def band_keys(self, signatures: np.ndarray) -> np.ndarray:
        """``(num_docs, bands)`` uint64: each band's ``rows`` values folded into one key (band-seeded, so equal
        values in different bands never collide)."""
        rows = signatures.reshape(len(signatures), self.params.bands, self.params.rows).astype(np.uint64)
        keys = np.broadcast_to(self.band_seeds, rows.shape[:2]).copy()
        for row in range(self.params.rows):
            keys = mix(keys * PRIME + rows[:, :, row])
        return keys
