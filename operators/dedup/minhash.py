"""MinHash signatures and LSH band keys, vectorised over whole Arrow batches.

No Python loop runs per document or per shingle. A batch's texts are normalised by Arrow kernels
(NFKC, lower case, digits -> ``0``, punctuation and symbols -> space, whitespace collapsed), then the
UTF-8 bytes of the whole batch are hashed at once: a polynomial prefix hash over the batch buffer gives
the hash of any byte span in O(1), so every shingle (a word n-gram, or a character n-gram for scripts
written without spaces) is two lookups and a multiply, finished by splitmix64's mixer. MinHash then takes,
per document, the minimum of ``a_k * h + b_k`` (mod 2^64, multiply-add-shift universal hashing) over its
shingles for each of ``bands x rows`` hash functions, and each band's ``rows`` values are folded into one
64-bit band key. Two documents share a band key with probability ``J^rows`` (``J`` their Jaccard
similarity), so the chance that LSH pairs them is ``1 - (1 - J^rows)^bands``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from shardflow.config import StrictModel

# Scripts written without spaces between words: shingles are character n-grams there.
UNSPACED_SCRIPTS = frozenset({"Hani", "Hans", "Hant", "Jpan", "Thai", "Khmr", "Laoo", "Mymr", "Tibt", "Java", "Bali"})
SPACE = 0x20
PRIME = np.uint64(0x100000001B3)  # odd, so it has an inverse mod 2^64
MAX_CELLS = 1 << 22  # shingles x hash functions evaluated at once (32 MiB of uint64)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


class MinHashParams(StrictModel):
    """How documents become band keys. Defaults are datatrove's (14 bands x 8 rows, word 5-grams): a pair
    is found with probability 0.5 at Jaccard 0.70, 0.92 at 0.80 and 0.9996 at 0.90. HPLT uses 17 x 15
    (Jaccard 0.8), NeMo Curator 20 x 13 with 24-character n-grams."""

    bands: int = Field(14, ge=1, le=255)
    rows: int = Field(8, ge=1, le=64)
    word_ngrams: int = Field(5, ge=1, description="Words per shingle in scripts written with spaces.")
    char_ngrams: int = Field(5, ge=1, description="Characters per shingle in scripts without spaces (CJK, Thai...).")
    seed: int = Field(1, ge=0, description="Seeds the hash functions; runs compare only with the same seed.")


def mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads every input bit over the output (uint64 in, uint64 out)."""
    values = values ^ (values >> np.uint64(30))
    values = values * _M1
    values ^= values >> np.uint64(27)
    values *= _M2
    values ^= values >> np.uint64(31)
    return values


def normalise(texts: pa.Array) -> pa.Array:
    """The form shingles are taken from: case, digits, punctuation and spacing do not make documents differ."""
    texts = pc.utf8_lower(pc.utf8_normalize(texts, "NFKC"))
    texts = pc.replace_substring_regex(texts, r"\p{Nd}+", "0")
    texts = pc.replace_substring_regex(texts, r"[\p{P}\p{S}\s]+", " ")
    return pc.utf8_trim(texts, " ")


def unspaced(langs: list[str | None]) -> np.ndarray:
    """Which documents take character shingles, from their ``lang`` (``xxx_Scri``) labels."""
    return np.array([bool(lang) and lang.rpartition("_")[2] in UNSPACED_SCRIPTS for lang in langs], dtype=bool)


@dataclass
class Shingles:
    """Shingle hashes of a batch: ``hashes[i]`` belongs to document ``owner[i]`` (ascending)."""

    hashes: np.ndarray
    owner: np.ndarray


def _buffer(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The UTF-8 bytes of ``texts`` (nulls as empty) and each text's start and end offsets into them."""
    texts = pc.fill_null(texts.cast(pa.large_string()), "")
    texts = pa.concat_arrays([texts]) if texts.offset else texts
    offsets = np.frombuffer(texts.buffers()[1], dtype=np.int64, count=len(texts) + 1)
    data = texts.buffers()[2]
    data = np.frombuffer(data, dtype=np.uint8, count=int(offsets[-1])) if data is not None else np.zeros(0, np.uint8)
    return data, offsets


def _span_hasher(data: np.ndarray):
    """A function (starts, ends) -> mixed 64-bit hash of each byte span, from one prefix pass over ``data``."""
    powers = np.full(len(data) + 1, PRIME, dtype=np.uint64)
    powers[0] = 1
    np.cumprod(powers, out=powers)
    inverse = np.uint64(pow(int(PRIME), -1, 1 << 64))
    inverse_powers = np.full(len(data) + 1, inverse, dtype=np.uint64)
    inverse_powers[0] = 1
    np.cumprod(inverse_powers, out=inverse_powers)
    prefix = np.zeros(len(data) + 1, dtype=np.uint64)
    np.cumsum((data.astype(np.uint64) + np.uint64(1)) * powers[:-1], out=prefix[1:])

    def hash_spans(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        return mix((prefix[ends] - prefix[starts]) * inverse_powers[starts] + (ends - starts).astype(np.uint64))

    return hash_spans


def _units(data: np.ndarray, offsets: np.ndarray, chars: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start and end byte of each unit (a word, or a character) and the document it belongs to."""
    if chars:
        positions = np.flatnonzero((data & 0xC0) != 0x80)
        following = np.append(positions[1:], len(data))
        letter = data[positions] != SPACE
        starts, ends = positions[letter], following[letter]
    else:
        doc_start = np.zeros(len(data) + 1, dtype=bool)
        doc_start[offsets[:-1]] = True
        letter = data != SPACE
        previous = np.concatenate(([False], letter[:-1])) & ~doc_start[:-1]
        following = np.concatenate((letter[1:], [False])) & ~doc_start[1:]
        starts = np.flatnonzero(letter & ~previous)
        ends = np.flatnonzero(letter & ~following) + 1
    owner = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))[starts]
    return starts, ends, owner


def _ngram_spans(starts, ends, owner, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spans of every run of ``n`` consecutive units inside one document; a document with fewer units than
    ``n`` is one span (so short texts still match their copies)."""
    count = len(starts) - n + 1
    if count > 0:
        within = owner[:count] == owner[n - 1 :]
        gram_starts, gram_ends, gram_owner = starts[:count][within], ends[n - 1 :][within], owner[:count][within]
    else:
        gram_starts = gram_ends = gram_owner = np.zeros(0, dtype=np.int64)
    docs, first, units = np.unique(owner, return_index=True, return_counts=True)
    short = units < n
    gram_starts = np.concatenate((gram_starts, starts[first[short]]))
    gram_ends = np.concatenate((gram_ends, ends[first[short] + units[short] - 1]))
    gram_owner = np.concatenate((gram_owner, docs[short]))
    order = np.argsort(gram_owner, kind="stable")
    return gram_starts[order], gram_ends[order], gram_owner[order]


def shingle(texts: pa.Array, char_docs: np.ndarray, params: MinHashParams) -> Shingles:
    """Hashes of every document's shingles (texts already ``normalise``\\ d)."""
    data, offsets = _buffer(texts)
    hash_spans = _span_hasher(data)
    parts = []
    for chars, n in ((False, params.word_ngrams), (True, params.char_ngrams)):
        if not (char_docs == chars).any():
            continue
        starts, ends, owner = _units(data, offsets, chars)
        keep = char_docs[owner] == chars
        starts, ends, owner = _ngram_spans(starts[keep], ends[keep], owner[keep], n)
        parts.append((hash_spans(starts, ends), owner))
    if len(parts) == 1:
        return Shingles(*parts[0])
    hashes = np.concatenate([p[0] for p in parts])
    owner = np.concatenate([p[1] for p in parts])
    order = np.argsort(owner, kind="stable")
    return Shingles(hashes[order], owner[order])


class MinHasher:
    """Signatures and band keys for given ``MinHashParams`` (the hash functions drawn once from the seed)."""

    def __init__(self, params: MinHashParams) -> None:
        self.params = params
        rng = np.random.default_rng(params.seed)
        size = params.bands * params.rows
        self.multipliers = rng.integers(1, 1 << 63, size=size, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.addends = rng.integers(0, 1 << 63, size=size, dtype=np.uint64)
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
            hashes = shingles.hashes[bounds[start] : bounds[stop]]
            values = hashes[:, None] * self.multipliers[None, :]
            values += self.addends[None, :]
            minima = np.minimum.reduceat(values, bounds[start:stop] - bounds[start], axis=0)
            signatures[docs[start:stop]] = (minima >> np.uint64(32)).astype(np.uint32)
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
