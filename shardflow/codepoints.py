"""A batch of Arrow strings as one numpy array of code points, and hashing over it.

Vectorised text operators (MinHash shingles, quality measurements) look at every character of a batch at
once: the batch's UTF-8 buffer is decoded to code points in one pass, each document is a slice of that
array, a table indexed by code point classifies every character, and a polynomial prefix hash gives the
hash of any span (a word, a line, a paragraph) in O(1). No Python runs per document or per word.
"""

from __future__ import annotations

import re
import re._constants as re_constants
import re._parser as re_parser
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import regex

__all__ = ["PRIME", "CodePointBatch", "class_table", "decode", "mix", "span_hasher"]

PRIME = np.uint64(0x100000001B3)  # odd, so it has an inverse mod 2^64
UNICODE_SIZE = 0x110000
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads every input bit over the output (uint64 in, uint64 out)."""
    values = values ^ (values >> np.uint64(30))
    values = values * _M1
    values ^= values >> np.uint64(27)
    values *= _M2
    values ^= values >> np.uint64(31)
    return values


@dataclass
class CodePointBatch:
    """A batch's texts as code points: document ``d`` is ``values[bounds[d]:bounds[d + 1]]``."""

    values: np.ndarray
    bounds: np.ndarray

    @property
    def owner(self) -> np.ndarray:
        """The document of each code point."""
        return np.repeat(np.arange(len(self.bounds) - 1), np.diff(self.bounds))

    @property
    def doc_first(self) -> np.ndarray:
        """True at the first code point of each document (one extra slot at the end)."""
        first = np.zeros(len(self.values) + 1, dtype=bool)
        first[self.bounds] = True
        return first


def decode(texts: pa.Array) -> CodePointBatch:
    """The code points of a string array (nulls read as empty), decoded from its UTF-8 buffer with numpy."""
    texts = pc.fill_null(texts.cast(pa.large_string()), "")
    texts = pa.concat_arrays([texts]) if texts.offset else texts
    offsets = np.frombuffer(texts.buffers()[1], dtype=np.int64, count=len(texts) + 1)
    buffer = texts.buffers()[2]
    data = np.frombuffer(buffer, np.uint8, count=int(offsets[-1])) if buffer is not None else np.zeros(0, np.uint8)
    lead = np.flatnonzero((data & 0xC0) != 0x80)
    return CodePointBatch(_decode(data, lead), np.searchsorted(lead, offsets))


def _decode(data: np.ndarray, lead: np.ndarray) -> np.ndarray:
    """UTF-8 (valid, as Arrow strings are) to code points, at the lead bytes ``lead``; ASCII as it is."""
    values = data[lead].astype(np.uint32)
    wide = np.flatnonzero(values >= 0x80)
    if len(wide):
        at = lead[wide]
        padded = np.concatenate((data, np.zeros(3, np.uint8)))
        first = values[wide]
        follow = [(padded[at + k] & 0x3F).astype(np.uint32) for k in (1, 2, 3)]
        two = ((first & 0x1F) << 6) | follow[0]
        three = ((first & 0x0F) << 12) | (follow[0] << 6) | follow[1]
        four = ((first & 0x07) << 18) | (follow[0] << 12) | (follow[1] << 6) | follow[2]
        values[wide] = np.where(first < 0xE0, two, np.where(first < 0xF0, three, four))
    return values


def class_table(classes: Iterable[tuple[str | Callable[[np.ndarray], np.ndarray], int]]) -> np.ndarray:
    """A uint32 bit set for every code point: ``bit`` is set where ``pattern`` (a regex character class, or
    a vectorised predicate such as ``np.char.isalpha`` over an array of every character) holds."""
    every = "".join(map(chr, range(UNICODE_SIZE)))
    characters = None
    table = np.zeros(UNICODE_SIZE, dtype=np.uint32)
    for pattern, bit in classes:
        if callable(pattern):
            characters = np.array(list(every)) if characters is None else characters
            table[pattern(characters)] |= np.uint32(bit)
            continue
        ranges = _literal_ranges(pattern)
        matches = regex.finditer(f"(?:{pattern})+", every) if ranges is None else ()
        for first, last in ranges if ranges is not None else ((m.start(), m.end() - 1) for m in matches):
            table[first : last + 1] |= np.uint32(bit)
    return table


def _literal_ranges(pattern: str) -> list[tuple[int, int]] | None:
    """The code point ranges of a character class made of literals and ranges only (read by the standard
    library's parser: far faster than matching a class of thousands of ranges against all of Unicode)."""
    try:
        parsed = list(re_parser.parse(pattern))
    except re.error:
        return None
    if len(parsed) != 1 or parsed[0][0] is not re_constants.IN:
        return None
    ranges = []
    for kind, value in parsed[0][1]:
        if kind is re_constants.LITERAL:
            ranges.append((value, value))
        elif kind is re_constants.RANGE:
            ranges.append(value)
        else:
            return None
    return ranges


def span_hasher(values: np.ndarray) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A function (starts, ends) -> 64-bit hash of each span of ``values`` (equal spans, equal hashes), from
    one prefix pass over ``values``."""
    powers = np.full(len(values) + 1, PRIME, dtype=np.uint64)
    powers[0] = 1
    np.cumprod(powers, out=powers)
    inverse = np.uint64(pow(int(PRIME), -1, 1 << 64))
    inverse_powers = np.full(len(values) + 1, inverse, dtype=np.uint64)
    inverse_powers[0] = 1
    np.cumprod(inverse_powers, out=inverse_powers)
    prefix = np.zeros(len(values) + 1, dtype=np.uint64)
    np.cumsum((values.astype(np.uint64) + np.uint64(1)) * powers[:-1], out=prefix[1:])

    def hash_spans(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        return mix((prefix[ends] - prefix[starts]) * inverse_powers[starts] + (ends - starts).astype(np.uint64))

    return hash_spans
