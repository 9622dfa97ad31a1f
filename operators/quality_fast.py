"""The fast quality engine: every quantity the FineWeb-2 rule set tests, for a whole Arrow batch at once.

datatrove's filters (``engine: datatrove``, the reference) split each document into words with spaCy and
then walk Python lists of words, n-grams and lines. Here the batch's UTF-8 buffer becomes one array of
code points (``shardflow.codepoints``) and everything is array arithmetic over it:

- **Words** follow spaCy's rule-based tokenizer, which datatrove's tokenizers use for every language
  written with spaces: text splits at whitespace; a chunk sheds its leading prefix characters and its
  trailing suffix characters one token each (spaCy's ``TOKENIZER_PREFIXES`` / ``SUFFIXES`` as a table of
  code points, with the conditional full stop: after a lower-case letter, a digit or punctuation, or after
  two capitals); infixes split what is left (hyphens and commas between letters, ``:<>=/`` before a letter,
  a full stop between a lower-case and a capital letter, ellipses, symbols); web addresses stay whole.
- **Lines and paragraphs** are spans between newline runs, **repetition** is counted on 64-bit hashes of
  spans (lines, words, n-grams), sorted once per document group.
- **Sentences** (C4's rule) follow spaCy's sentencizer on those tokens, or datatrove's regular
  expression where the language's tokenizer is the whitespace fallback.

The verdicts agree with datatrove's on >= 99% of documents (docs/quality.md lists the causes of the rest):
spaCy's per-language exceptions ("don't" -> "do", "n't" in English) are not modelled.
"""

from __future__ import annotations

import json
import os
from contextlib import suppress
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from datatrove.utils.text import PUNCTUATION_SET, TERMINAL_PUNCTUATION

from shardflow.codepoints import PRIME, CodePointBatch, class_table, decode, mix, span_hasher
from shardflow.operators.quality_rules import Thresholds

__all__ = [
    "CHARACTERS",
    "RULES",
    "SEGMENTED",
    "Measures",
    "Settings",
    "Spans",
    "measure",
    "measured_scores",
    "rule_checks",
    "rule_failures",
]

# Where a document's words come from.
RULES = 0  # spaCy's rule-based tokenizer, emulated here
CHARACTERS = 1  # every character that is not whitespace (datatrove-less fallback for unspaced scripts)
SEGMENTED = 2  # a segmenter's word spans, given with the batch (``Settings.given``)

# Bits of the code point table.
SPACE = 1 << 0  # str.isspace: spaCy splits there
PREFIX = 1 << 1  # a prefix character of spaCy's tokenizer
SUFFIX = 1 << 2  # a suffix character
ALPHA = 1 << 3  # spaCy's ALPHA class
LOWER = 1 << 4  # spaCy's ALPHA_LOWER
UPPER = 1 << 5  # spaCy's ALPHA_UPPER
DOT_AFTER = 1 << 6  # a full stop after this is a suffix (digit, lower case, %²-+, punctuation, quotes)
QUOTE = 1 << 7  # spaCy's CONCAT_QUOTES
HYPHEN = 1 << 8  # spaCy's HYPHENS (one character each)
ICON = 1 << 9  # spaCy's LIST_ICONS: symbols, each a token of its own
SYMBOLIC = 1 << 10  # in datatrove's PUNCTUATION_SET (a word made only of these is not a word)
IS_ALPHA = 1 << 11  # str.isalpha
IS_PUNCT = 1 << 12  # Unicode category P*: spaCy's is_punct
SENT_END = 1 << 13  # spaCy's sentencizer punctuation
TERMINAL = 1 << 14  # datatrove's TERMINAL_PUNCTUATION
LINE_BREAK = 1 << 15  # str.splitlines breaks here
DIGIT = 1 << 16  # [0-9]
INFIX_BEFORE_ALPHA = 1 << 17  # :<>=/ between a letter or digit and a letter
CAPITAL = 1 << 18  # Unicode category Lu (spaCy's ALPHA_UPPER also holds the scripts without case)
ELISION = 1 << 19  # an apostrophe after which the language splits ("l'" + "è": French, Italian, Catalan...)
APOSTROPHE_INFIX = 1 << 20  # an apostrophe between letters that is a token of its own (Kyrgyz, "’" in Dutch)
DIGIT_HYPHEN = 1 << 21  # a hyphen split off between a digit and a letter ("95-жылы": Kyrgyz, English)
NUMBER = 1 << 22  # Unicode category N*: digits of every script, numerals, fractions
SYMBOL = 1 << 23  # Unicode category S*: currency, maths, modifiers, emoji

NEWLINE, DOT, APOSTROPHE, CURLY_APOSTROPHE, CARRIAGE = 10, ord("."), ord("'"), ord("’"), 13
HYPHEN_MINUS = ord("-")
ELLIPSIS_CHAR, COMMA, PLUS = ord("…"), ord(","), ord("+")
BULLETS = (ord("•"), ord("-"))


@cache
def code_point_table(language: str = "xx") -> np.ndarray:
    """The bit set of every code point for one spaCy language (built once per process and language from
    spaCy's own character classes and that language's prefix and suffix characters)."""
    from spacy.util import get_lang_class

    defaults = get_lang_class(language).Defaults
    table = _shared_table().copy()
    for items, bit in ((defaults.prefixes or [], PREFIX), (defaults.suffixes or [], SUFFIX)):
        single = sorted({item.replace("\\", "") for item in items} - {""})
        points = [ord(char) for char in single if len(char) == 1]
        table[points] |= np.uint32(bit)
    # where the language's rules differ from spaCy's generic ones, its tokenizer says so on probes
    answers = spacy_answers(language)
    for (_, split_into, points, bit), tokens in zip(PROBES, answers["probes"], strict=True):
        if tokens != split_into:
            table[points] &= ~np.uint32(bit)
    for (_, split_into, points, bit), tokens in zip(RULE_PROBES, answers["rule_probes"], strict=True):
        if tokens == split_into:
            table[points] |= np.uint32(bit)
    return table


@cache
def spacy_answers(language: str) -> dict[str, list]:
    """What the fast engine asks spaCy's tokenizer for ``language``: how it splits the probes, and its
    exceptions that stay one token. Building that tokenizer costs 0.2-4 s per language and process (every
    quality actor meets every language), so the answers are kept on disk (``SHARDFLOW_CACHE``, else
    ``~/.cache/shardflow``), keyed by spaCy's version and the probes."""
    import spacy

    key = xxhash.xxh64_hexdigest(repr((spacy.__version__, PROBES, RULE_PROBES)).encode())
    path = (
        Path(os.environ.get("SHARDFLOW_CACHE") or Path.home() / ".cache" / "shardflow") / f"spacy-{key}-{language}.json"
    )
    with suppress(OSError, ValueError):
        return json.loads(path.read_text(encoding="utf-8"))
    nlp = spacy.blank(language)
    answers = {
        "probes": [[token.text for token in nlp(probe)] for probe, *_ in PROBES],
        "rule_probes": [[token.text for token in nlp(probe)] for probe, *_ in RULE_PROBES],
        "exceptions": sorted(
            word for word, tokens in nlp.tokenizer.rules.items() if len(tokens) == 1 and " " not in word
        ),
    }
    with suppress(OSError):  # a read-only home is no reason to fail: the next process asks spaCy again
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(answers, ensure_ascii=False), encoding="utf-8")
        os.replace(partial, path)
    return answers


PROBES = (  # (text, its generic tokens, the code points whose bit goes where the language keeps it whole)
    ("18.", ["18", "."], list(range(ord("0"), ord("9") + 1)), DOT_AFTER),  # ordinals: "18." in Danish, Slovene...
    ("ab-cd", ["ab", "-", "cd"], [ord(char) for char in "-–—~"], HYPHEN),  # compounds: Portuguese, Dutch, German...
)
RULE_PROBES = (  # (text, its tokens where the language has a rule the generic ones lack, code points, bit)
    *((f"l{mark}è", [f"l{mark}", "è"], [ord(mark)], ELISION) for mark in "'’"),
    *((f"l{mark}è", ["l", mark, "è"], [ord(mark)], APOSTROPHE_INFIX) for mark in "'’"),
    ("95-abc", ["95", "-", "abc"], [ord(char) for char in "-–—~"], DIGIT_HYPHEN),
)


@cache
def exceptions(language: str) -> np.ndarray:
    """Hashes (as ``span_hasher`` gives them) of the language's tokenizer exceptions that stay one token
    ("Dr.", "e.g.", "г.", "'t", "da-o"): spaCy keeps them whole."""
    return np.unique(hash_words(spacy_answers(language)["exceptions"]))


def hash_words(words: list[str]) -> np.ndarray:
    """Each word's hash, as ``span_hasher`` gives it for the same characters in a batch."""
    values = np.array([ord(char) for char in "".join(words)], dtype=np.uint32)
    lengths = np.array([len(word) for word in words], dtype=np.int64)
    ends = np.cumsum(lengths)
    return span_hasher(values)(ends - lengths, ends)


def merge_exceptions(tokens: Spans, values: np.ndarray, hasher, languages: np.ndarray) -> Spans:
    """Adjacent tokens that together are one of the document's language's exceptions become one token: a
    word and the full stop after it ("Dr."), a token ending in an apostrophe and the word after it ("'t" in
    Dutch, "aujourd'hui" in French), the words on both sides of a hyphen ("da-o" in Ligurian)."""
    if not len(tokens):
        return tokens
    single, first, at = tokens.length == 1, values[tokens.start], np.arange(len(tokens))
    dot = at[single & (first == DOT)]
    last = values[tokens.end - 1]
    mark = at[single & ((first == APOSTROPHE) | (first == CURLY_APOSTROPHE))]
    mark = np.union1d(mark, at[(last == APOSTROPHE) | (last == CURLY_APOSTROPHE)])  # "'t", "aujourd'" + "hui"
    hyphen = at[single & (first == HYPHEN_MINUS)]
    lo, hi = np.concatenate((dot - 1, mark, hyphen - 1)), np.concatenate((dot, mark + 1, hyphen + 1))
    inside = (lo >= 0) & (hi < len(tokens))
    lo, hi = lo[inside], hi[inside]
    touch = np.zeros(len(tokens), dtype=bool)  # token k ends where token k + 1 starts, in one document
    touch[:-1] = (tokens.end[:-1] == tokens.start[1:]) & (tokens.owner[:-1] == tokens.owner[1:])
    together = touch[lo] & touch[hi - 1]
    lo, hi = lo[together], hi[together]
    joined, doc_language = hasher(tokens.start[lo], tokens.end[hi]), languages[tokens.owner[lo]]
    merge = np.zeros(len(lo), dtype=bool)
    for language in np.unique(doc_language).tolist():
        mine = doc_language == language
        merge[mine] = np.isin(joined[mine], exceptions(language))
    order = np.argsort(lo[merge], kind="stable")
    lo, hi = lo[merge][order], hi[merge][order]
    free = np.ones(len(lo), dtype=bool)  # where two merges overlap, the first wins
    free[1:] = lo[1:] > np.maximum.accumulate(hi)[:-1]
    lo, hi = lo[free], hi[free]
    cover = np.zeros(len(tokens) + 1, dtype=np.int64)
    np.add.at(cover, lo + 1, 1)
    np.add.at(cover, hi + 1, -1)
    keep = np.cumsum(cover[:-1]) == 0
    end = tokens.end.copy()
    end[lo] = tokens.end[hi]
    return Spans(tokens.start[keep], end[keep], tokens.owner[keep])


@cache
def _shared_table() -> np.ndarray:
    """The bits that do not depend on the language."""
    from spacy.lang import char_classes as cc
    from spacy.pipeline import Sentencizer

    def chars(items: list[str]) -> str:
        return "[" + "".join(regex_escape(char) for char in items if len(char) == 1) + "]"

    return class_table(
        [
            (np.char.isspace, SPACE),
            (cc.LIST_ICONS[0], PREFIX | SUFFIX | ICON),
            (f"[{cc.ALPHA}]", ALPHA),
            (f"[{cc.ALPHA_LOWER}]", LOWER),
            (f"[{cc.ALPHA_UPPER}]", UPPER),
            (f"[0-9{cc.ALPHA_LOWER}%²\\-\\+{cc.PUNCT}{cc.CONCAT_QUOTES}]", DOT_AFTER),
            (f"[{cc.CONCAT_QUOTES}]", QUOTE),
            ("[-–—~]", HYPHEN),
            (chars(sorted(PUNCTUATION_SET)), SYMBOLIC),
            (np.char.isalpha, IS_ALPHA),
            (r"\p{P}", IS_PUNCT),
            (chars(list(Sentencizer.default_punct_chars)), SENT_END),
            (chars(sorted(TERMINAL_PUNCTUATION)), TERMINAL),
            ("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]", LINE_BREAK),
            ("[0-9]", DIGIT),
            ("[:<>=/]", INFIX_BEFORE_ALPHA),
            (r"\p{Lu}", CAPITAL),
            (r"\p{N}", NUMBER),
            (r"\p{S}", SYMBOL),
        ]
    )


def regex_escape(char: str) -> str:
    return "\\" + char if char in "\\]^-[" else char


@dataclass
class Spans:
    """Spans of a batch's code points: ``[start, end)``, each inside document ``owner`` (ascending)."""

    start: np.ndarray
    end: np.ndarray
    owner: np.ndarray

    @property
    def length(self) -> np.ndarray:
        return self.end - self.start

    def __len__(self) -> int:
        return len(self.start)


@dataclass
class Measures:
    """Per-document quantities of a batch, each an array with one value per document."""

    values: dict[str, np.ndarray]

    def __getitem__(self, name: str) -> np.ndarray:
        return self.values[name]


def per_doc(owner: np.ndarray, weights: np.ndarray | None, docs: int) -> np.ndarray:
    """Sum of ``weights`` (or a count) per document."""
    return np.bincount(owner, weights=weights, minlength=docs).astype(np.float64)


def split(lo: np.ndarray, hi: np.ndarray, seps: Spans) -> Spans:
    """The pieces of each document's ``[lo, hi)`` between separator spans (empty pieces included), as
    ``str.split`` with a separator gives them."""
    docs = np.arange(len(lo))
    starts, start_owner = np.concatenate((lo, seps.end)), np.concatenate((docs, seps.owner))
    ends, end_owner = np.concatenate((seps.start, hi)), np.concatenate((seps.owner, docs))
    by_start, by_end = np.lexsort((starts, start_owner)), np.lexsort((ends, end_owner))
    return Spans(starts[by_start], ends[by_end], start_owner[by_start])


def runs(mask: np.ndarray, doc_first: np.ndarray, owner: np.ndarray, min_length: int = 1) -> Spans:
    """Maximal runs of True in ``mask`` that stay inside one document, at least ``min_length`` long."""
    padded = np.concatenate(([False], mask, [False]))
    start = np.flatnonzero(padded[1:-1] & (~padded[:-2] | doc_first[:-1]))
    end = np.flatnonzero(padded[1:-1] & (~padded[2:] | doc_first[1:])) + 1
    keep = end - start >= min_length
    return Spans(start[keep], end[keep], owner[start[keep]])


def subset(spans: Spans, keep: np.ndarray) -> Spans:
    return Spans(spans.start[keep], spans.end[keep], spans.owner[keep])


def keyed(hashes: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """One 64-bit key per (document, hash): a stable sort by it groups equal elements of a document in
    their order (one sort of one key instead of a sort by three)."""
    return mix(hashes ^ mix(owner.astype(np.uint64) + np.uint64(1)))


def duplicates(spans: Spans, hashes: np.ndarray, docs: int) -> tuple[np.ndarray, np.ndarray]:
    """datatrove's ``find_duplicates`` per document: how many elements repeat an earlier one, and their
    characters."""
    keys = keyed(hashes, spans.owner)
    order = np.argsort(keys, kind="stable")
    first = np.ones(len(spans), dtype=bool)
    first[1:] = keys[order][1:] != keys[order][:-1]
    repeat = order[~first]
    return per_doc(spans.owner[repeat], None, docs), per_doc(spans.owner[repeat], spans.length[repeat], docs)


def stripped(lo: np.ndarray, hi: np.ndarray, space: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[lo, hi)`` without leading and trailing whitespace (``str.strip``); empty spans sit at ``lo``."""
    content = np.flatnonzero(~space)
    first = np.searchsorted(content, lo)
    last = np.searchsorted(content, hi) - 1
    has = first <= last
    if not len(content):
        return lo.copy(), lo.copy()
    return np.where(has, content[np.minimum(first, len(content) - 1)], lo), np.where(
        has, content[np.clip(last, 0, len(content) - 1)] + 1, lo
    )


def segment_lines(batch: CodePointBatch, flags: np.ndarray, owner: np.ndarray) -> dict[str, Spans]:
    """The ways datatrove's filters cut a text into lines, and Gopher's paragraphs."""
    lo, hi = batch.bounds[:-1], batch.bounds[1:]
    doc_first = batch.doc_first
    newline = batch.values == NEWLINE
    at = np.flatnonzero(newline)
    # str.splitlines: any line break, "\r\n" as one; a break at the very end opens no empty line
    breaks = (flags & LINE_BREAK) != 0
    crlf = newline & np.concatenate(([False], batch.values[:-1] == CARRIAGE)) & ~doc_first[:-1]
    breaks_at = np.flatnonzero(breaks & ~crlf)
    width = 1 + crlf[np.minimum(breaks_at + 1, len(crlf) - 1)].astype(np.int64)
    splitlines = split(lo, hi, Spans(breaks_at, breaks_at + width, owner[breaks_at]))
    last_piece = np.searchsorted(splitlines.owner, np.arange(len(lo)), side="right") - 1
    drop = np.zeros(len(splitlines), dtype=bool)
    drop[last_piece] = (hi == lo) | (breaks[np.maximum(hi - 1, 0)] if len(breaks) else False)
    # Gopher's paragraphs: text.strip(), then split at runs of two or more newlines
    s_lo, s_hi = stripped(lo, hi, (flags & SPACE) != 0)
    seps = runs(newline, doc_first, owner, min_length=2)
    seps = subset(seps, (seps.start >= s_lo[seps.owner]) & (seps.end <= s_hi[seps.owner]))
    return {
        "newline": split(lo, hi, Spans(at, at + 1, owner[at])),  # text.split("\n")
        "newline_runs": split(lo, hi, runs(newline, doc_first, owner)),  # re.split("\n+", text)
        "splitlines": subset(splitlines, ~drop),
        "paragraphs": split(s_lo, s_hi, seps),
    }


def shift(values: np.ndarray, by: int, fill: int | bool = 0) -> np.ndarray:
    """``values`` moved ``by`` places later (negative: earlier), ``fill`` where nothing moved in."""
    out = np.full_like(values, fill)
    if by > 0:
        out[by:] = values[:-by]
    elif by < 0:
        out[:by] = values[-by:]
    else:
        out[:] = values
    return out


def in_run_from_start(member: np.ndarray, piece_start: np.ndarray, piece_id: np.ndarray) -> np.ndarray:
    """True where every position from its piece's start up to here is a ``member``."""
    misses = np.cumsum(~member)
    before = (misses - ~member)[np.flatnonzero(piece_start)]
    if not len(before):  # no piece at all (a text of whitespace only)
        return np.zeros_like(member)
    return member & (misses - before[np.maximum(piece_id, 0)] == 0)


def tokenize(batch: CodePointBatch, flags: np.ndarray) -> Spans:
    """The words spaCy's rule-based tokenizer gives (see the module's docstring), whitespace dropped."""
    values, doc_first = batch.values, batch.doc_first
    n = len(values)
    word = (flags & SPACE) == 0
    same_prev = word & shift(word, 1, False) & ~doc_first[:-1]  # the previous character is in this chunk
    same_next = shift(same_prev, -1, False)
    chunk_start = word & ~same_prev
    chunk_id = np.cumsum(chunk_start) - 1

    def before(mask: np.ndarray) -> np.ndarray:
        return same_prev & shift(mask, 1, False)

    def after(mask: np.ndarray) -> np.ndarray:
        return same_next & shift(mask, -1, False)

    def has(bit: int) -> np.ndarray:
        return (flags & bit) != 0

    dot = values == DOT
    dots = dot & (before(dot) | after(dot))  # an ellipsis "..": prefix, suffix and infix
    digit = has(DIGIT)
    prefix = word & (has(PREFIX) | dots | ((values == PLUS) & ~after(digit)))
    upper = has(UPPER)
    suffix = word & (
        has(SUFFIX)
        | dots
        | (dot & (before(has(DOT_AFTER)) | (before(upper) & before(before(upper)))))
        | (((values == PLUS) | (values == ord("%"))) & before(digit))
    )
    leading = in_run_from_start(prefix, chunk_start, chunk_id)
    chunk_end = word & ~same_next
    reverse = slice(None, None, -1)
    trailing = in_run_from_start(suffix[reverse], chunk_end[reverse], (np.cumsum(chunk_end[reverse]) - 1))[reverse]
    trailing &= ~leading
    # "'s" at the end of a word is one suffix token
    quote_s = (values == ord("s")) | (values == ord("S"))
    possessive = quote_s & (after(trailing) | chunk_end) & before((values == APOSTROPHE) | (values == CURLY_APOSTROPHE))
    possessive &= before(before(word & ~leading))
    core = word & ~leading & ~trailing & ~possessive & ~shift(possessive, -1, False)
    unit = _units(values, core, digit, chunk_id)
    core &= ~unit
    url = _url_chunks(values, chunk_start, chunk_id, word)
    alpha = has(ALPHA)
    core_before = before(core)
    core_after = after(core)
    hyphens = runs((has(HYPHEN) | has(DIGIT_HYPHEN)) & core, doc_first, batch.owner if n else np.zeros(0, np.int64))
    between = np.zeros(n + 1, dtype=np.int64)
    split_after = (before(alpha) & has(HYPHEN)) | (before(digit) & has(DIGIT_HYPHEN))
    letters = (hyphens.length <= 3) & core_before[hyphens.start] & split_after[hyphens.start]
    letters &= core_after[hyphens.end - 1] & after(alpha)[hyphens.end - 1]
    np.add.at(between, hyphens.start[letters], 1)
    np.add.at(between, hyphens.end[letters], -1)
    hyphen_infix = np.cumsum(between[:-1]) > 0
    infix = (
        core
        & ~(url[np.maximum(chunk_id, 0)] if len(url) else np.zeros(n, dtype=bool))
        & (
            hyphen_infix
            | ((values == COMMA) & before(alpha) & after(alpha) & core_before & core_after)
            | (has(APOSTROPHE_INFIX) & before(alpha) & after(alpha) & core_before & core_after)
            | (has(INFIX_BEFORE_ALPHA) & before(alpha | digit) & after(alpha) & core_before & core_after)
            | (dot & before(has(LOWER) | has(QUOTE)) & after(upper | has(QUOTE)) & core_before & core_after)
            | (
                np.isin(values, (ord("+"), ord("-"), ord("*"), ord("^")))
                & before(digit)
                & after(digit | (values == ord("-")))
                & core_before
                & core_after
            )
            | dots
            | (values == ELLIPSIS_CHAR)
            | has(ICON)
        )
    )
    addresses = _web_addresses(values, infix & dot & ~dots, core, chunk_id)
    if len(addresses):
        infix &= ~addresses[np.maximum(chunk_id, 0)]
    merged = (
        (dots & before(dots))
        | (hyphen_infix & before(hyphen_infix))
        | (unit & before(unit))
        | ((values == ELLIPSIS_CHAR) & before(values == ELLIPSIS_CHAR) & (leading | trailing))
    )
    merged |= possessive
    starts = chunk_start | ((leading | trailing | infix | unit) & ~merged) | before(leading) & ~leading
    starts |= before(infix) & ~infix | (before(infix) & infix & ~merged)
    starts |= shift(possessive, -1, False) & word
    starts |= before(has(ELISION) & core & before(alpha) & after(alpha)) & core
    starts &= word
    start = np.flatnonzero(starts)
    chunk_last = np.flatnonzero(chunk_end) + 1
    end = np.minimum(np.append(start[1:], n), chunk_last[chunk_id[start]])
    return Spans(start, end, batch.owner[start] if n else np.zeros(0, np.int64))


def _units(values: np.ndarray, core: np.ndarray, digit: np.ndarray, chunk_id: np.ndarray) -> np.ndarray:
    """Where a word's core ends in a unit after a digit ("10km", spaCy's ``UNITS``): the unit's positions."""
    n = len(values)
    core_end = core & (~shift(core, -1, False) | (shift(chunk_id, -1, -1) != chunk_id))
    last = np.flatnonzero(core_end)
    digits = np.flatnonzero(digit & core)
    candidates = np.flatnonzero(core & ~digit & shift(digit & core, 1, False) & (shift(chunk_id, 1, -1) == chunk_id))
    if not len(candidates):
        return np.zeros(n, dtype=bool)
    end = last[np.searchsorted(last, candidates)] + 1
    later_digit = np.searchsorted(digits, candidates)
    clean = (later_digit >= len(digits)) | (digits[np.minimum(later_digit, len(digits) - 1)] >= end)
    ok = clean & np.isin(span_hasher(values)(candidates, end), unit_hashes())
    marks = np.zeros(n + 1, dtype=np.int64)
    np.add.at(marks, candidates[ok], 1)
    np.add.at(marks, end[ok], -1)
    return np.cumsum(marks[:-1]) > 0


@cache
def unit_hashes() -> np.ndarray:
    """Hashes of spaCy's units, as ``span_hasher`` gives them."""
    from spacy.lang.char_classes import UNITS

    return hash_words([unit for unit in UNITS.split("|") if unit])


def _web_addresses(values: np.ndarray, dot_infix: np.ndarray, core: np.ndarray, chunk_id: np.ndarray) -> np.ndarray:
    """Per chunk: whether its core is a web address by spaCy's ``URL_MATCH`` ("bücher.de"), checked only for
    the few chunks that a full stop would otherwise split."""
    from spacy.lang.tokenizer_exceptions import URL_MATCH

    found = np.zeros(int(chunk_id[-1]) + 1 if len(chunk_id) else 0, dtype=bool)
    candidates = np.unique(chunk_id[dot_infix])
    if not len(candidates):
        return found
    core_at = np.flatnonzero(core)
    owners = chunk_id[core_at]
    first = np.searchsorted(owners, candidates)
    last = np.searchsorted(owners, candidates, side="right")
    for chunk, start, stop in zip(
        candidates.tolist(), core_at[first].tolist(), core_at[last - 1].tolist(), strict=True
    ):
        found[chunk] = URL_MATCH("".join(map(chr, values[start : stop + 1].tolist()))) is not None
    return found


def _url_chunks(values: np.ndarray, chunk_start: np.ndarray, chunk_id: np.ndarray, word: np.ndarray) -> np.ndarray:
    """Per chunk: whether it holds "://" or starts a "www." (spaCy keeps a web address whole)."""
    found = np.zeros(int(chunk_start.sum()), dtype=bool)
    lowered = values | np.where((values >= 65) & (values <= 90), 32, 0).astype(values.dtype)
    for pattern in ("://", "www."):
        hit = np.ones(max(len(values) - len(pattern) + 1, 0), dtype=bool)
        for k, char in enumerate(pattern):
            hit &= lowered[k : k + len(hit)] == ord(char)
        at = np.flatnonzero(hit & word[: len(hit)])
        found[chunk_id[at]] = True
    return found


@dataclass
class NGrams:
    """The n-grams of a batch's words that may repeat in their document, grouped: ``order`` lists them so
    that equal n-grams of a document are adjacent, in text order, and ``new_group`` (in that order) marks
    each group's first. Every other n-gram of the batch occurs once in its document."""

    n: int
    first_word: np.ndarray  # the index of each one's first word (ascending)
    chars: np.ndarray  # the characters of its words
    owner: np.ndarray
    order: np.ndarray
    new_group: np.ndarray

    @property
    def repeated(self) -> np.ndarray:
        """Whether each one occurs more than once in its document."""
        group = np.cumsum(self.new_group) - 1
        repeated = np.zeros(len(self.order), dtype=bool)
        repeated[self.order] = np.bincount(group)[group] > 1 if len(group) else repeated
        return repeated


def ngram_chain(tokens: Spans, hashes: np.ndarray, sizes: tuple[int, ...]) -> dict[int, NGrams]:
    """The grouped n-grams of each size in ``sizes``. An n-gram can repeat only where the two (n-1)-grams
    inside it both repeat, so each size extends and sorts only those: on long documents most n-grams of
    five words and more are never sorted."""
    found: dict[int, NGrams] = {}
    first = np.arange(len(tokens))
    grams, chars = np.zeros(len(tokens), dtype=np.uint64), np.zeros(len(tokens), dtype=np.int64)
    for n in range(1, max(sizes, default=0) + 1):
        last = first + n - 1
        inside = last < len(tokens)
        inside[inside] = tokens.owner[last[inside]] == tokens.owner[first[inside]]
        first, grams, chars, last = first[inside], grams[inside], chars[inside], last[inside]
        grams = mix(grams * PRIME + hashes[last])
        chars = chars + tokens.length[last]
        owner = tokens.owner[first]
        keys = keyed(grams, owner)
        order = np.argsort(keys, kind="stable")
        new_group = np.ones(len(order), dtype=bool)
        new_group[1:] = keys[order][1:] != keys[order][:-1]
        level = NGrams(n, first, chars, owner, order, new_group)
        if n in sizes:
            found[n] = level
        repeats = np.flatnonzero(level.repeated)
        at = np.searchsorted(first[repeats], first[repeats] + 1)
        followed = at < len(repeats)
        followed[followed] = first[repeats][at[followed]] == first[repeats][followed] + 1
        first, grams, chars = first[repeats[followed]], grams[repeats[followed]], chars[repeats[followed]]
    return found


def top_ngram_chars(grams: NGrams, tokens: Spans, docs: int) -> np.ndarray:
    """datatrove's ``find_top_duplicate``: the characters of the most frequent n-gram (the first seen among
    equals; words joined by spaces) times its count; NaN for a document with fewer than ``n`` words."""
    n = grams.n
    out = np.full(docs, np.nan)
    words = np.bincount(tokens.owner, minlength=docs)
    has = np.flatnonzero(words >= n)
    first_word = np.searchsorted(tokens.owner, has)
    total = np.concatenate(([0], np.cumsum(tokens.length)))
    out[has] = total[first_word + n] - total[first_word] + n - 1  # no repeat: the first n-gram, once
    group_at = np.flatnonzero(grams.new_group)
    counts = np.diff(np.append(group_at, len(grams.order)))
    repeated = counts > 1
    leader, counts = grams.order[group_at[repeated]], counts[repeated]  # each group's first occurrence
    best = np.lexsort((grams.first_word[leader], -counts, grams.owner[leader]))
    doc = grams.owner[leader][best]
    take = np.ones(len(best), dtype=bool)
    take[1:] = doc[1:] != doc[:-1]
    chosen = best[take]
    out[grams.owner[leader][chosen]] = counts[chosen] * (grams.chars[leader][chosen] + n - 1)
    return out


def _ranges(counts: np.ndarray) -> np.ndarray:
    """0, 1, ..., c - 1 for each count c, concatenated."""
    ends = np.cumsum(counts)
    return np.arange(int(ends[-1]) if len(ends) else 0) - np.repeat(ends - counts, counts)


def _walk(chars: np.ndarray, runs: tuple[np.ndarray, np.ndarray, np.ndarray], n: int) -> float:
    """datatrove's walk over one document's runs of seen n-grams (first word, end, index of the run's first
    in ``chars``), in order."""
    total, landing = 0.0, -1
    for start, end, base in zip(*(part.tolist() for part in runs), strict=True):
        enter = max(start, landing)
        if enter < end:
            taken = chars[base + enter - start : base + end - start : n]
            total += float(taken.sum())
            landing = enter + n * len(taken)
    return total


def repeated_ngram_chars(grams: NGrams, docs: int) -> np.ndarray:
    """datatrove's ``find_all_duplicate``: walking the words, an n-gram seen before counts its characters
    (words joined without spaces) and the walk jumps past it. An n-gram counts as seen if it occurs
    earlier in the document (datatrove: earlier at a position the walk stopped at; they differ only where
    a repeat's only earlier copies were jumped over)."""
    n = grams.n
    out = np.zeros(docs)
    seen = np.sort(grams.order[~grams.new_group])
    if not len(seen):
        return out
    position, owner, chars = grams.first_word[seen], grams.owner[seen], grams.chars[seen]
    # runs of seen n-grams that follow each other in one document; the walk enters a run at its start or
    # where a jump lands
    new_run = np.ones(len(seen), dtype=bool)
    new_run[1:] = (position[1:] != position[:-1] + 1) | (owner[1:] != owner[:-1])
    base = np.flatnonzero(new_run)
    start, end = position[base], position[np.append(base[1:], len(seen)) - 1] + 1
    doc = owner[base]
    steps = -(-(end - start) // n)  # jumps taken inside a run entered at its start
    chained = np.zeros(len(start), dtype=bool)
    chained[1:] = (doc[1:] == doc[:-1]) & (start[:-1] + n * steps[:-1] > start[1:])
    if chained.any():  # a jump from one run lands inside the next: walk those documents' runs in order
        for d in np.unique(doc[chained]).tolist():
            mine = doc == d
            out[d] = _walk(chars, (start[mine], end[mine], base[mine]), n)
    free = ~np.isin(doc, doc[chained])
    visited = np.repeat(base[free], steps[free]) + n * _ranges(steps[free])
    np.add.at(out, owner[visited], chars[visited])
    return out


C4_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
C4_WORDS = "(?i)lorem ipsum|javascript|\\{|" + "|".join(C4_POLICY)


def per_span(values: np.ndarray, spans: Spans) -> np.ndarray:
    """Sum of ``values`` (one per code point) over each span."""
    total = np.concatenate(([0], np.cumsum(values, dtype=np.int64)))
    return total[spans.end] - total[spans.start]


def sentences_per_line(
    lines: Spans,
    tokens: Spans,
    token_flags: dict[str, np.ndarray],
    regex_docs: np.ndarray,
    flags: np.ndarray,
    values: np.ndarray,
) -> np.ndarray:
    """How many sentences datatrove's sentence splitter finds in each line: spaCy's sentencizer (a sentence
    ends at a token of its punctuation list; the next token that is not punctuation starts one), or, where
    the language's tokenizer is the whitespace fallback (``regex_docs``), datatrove's regular expression (a
    sentence is text up to a run of terminal punctuation, a full stop after a capital letter excepted)."""
    count = np.zeros(len(lines))
    if not len(lines) or not len(tokens):  # no word, no sentence
        return count
    line_of = np.searchsorted(lines.start, tokens.start, side="right") - 1
    inside = (line_of >= 0) & (tokens.start < lines.end[np.maximum(line_of, 0)])
    spacy_tokens = inside & ~regex_docs[tokens.owner]
    ends = token_flags["sentence_end"]
    plain = spacy_tokens & ~token_flags["punct"] & ~ends
    seen_end = np.cumsum(ends & spacy_tokens)
    q = np.flatnonzero(plain)
    line_first = np.searchsorted(tokens.start, lines.start)  # each line's first token
    base = seen_end[np.maximum(line_first - 1, 0)] * (line_first > 0)
    previous = np.concatenate(([-1], q[:-1]))
    same_line = (previous >= 0) & (line_of[np.maximum(previous, 0)] == line_of[q])
    before = np.where(same_line, seen_end[np.maximum(previous, 0)], base[line_of[q]])
    starts = q[seen_end[q] - before > 0]
    has_tokens = np.bincount(line_of[spacy_tokens], minlength=len(lines)) > 0
    count += has_tokens + np.bincount(line_of[starts], minlength=len(lines))
    # the regular expression's sentences: runs of terminal punctuation in the line
    terminal = (flags & TERMINAL) != 0
    after_capital = (values == DOT) & shift((flags & CAPITAL) != 0, 1, False)
    closing = terminal & ~after_capital
    run_start = closing & ~shift(closing, 1, False)
    line_at = np.searchsorted(lines.start, np.flatnonzero(run_start), side="right") - 1
    at = np.flatnonzero(run_start)
    valid = (line_at >= 0) & (at < lines.end[np.maximum(line_at, 0)]) & (at > lines.start[np.maximum(line_at, 0)])
    valid &= regex_docs[lines.owner[np.maximum(line_at, 0)]]
    count += np.bincount(line_at[valid], minlength=len(lines))
    return count


@dataclass
class Settings:
    """What besides the text decides a document's measures: one array or value per document or batch."""

    languages: np.ndarray  # str: the spaCy language whose tokenizer rules apply ("xx": the generic ones)
    regex_sentences: np.ndarray  # bool: the whitespace tokenizer's sentence rule
    min_words_per_line: np.ndarray  # int: C4's words per line (0: off)
    stopwords: dict[tuple[str, ...], np.ndarray]  # stop words -> the documents that use them
    top_ns: tuple[int, ...]
    dup_ns: tuple[int, ...]
    word_source: np.ndarray | None = None  # int: RULES (the default), CHARACTERS or SEGMENTED
    given: Spans | None = None  # the SEGMENTED documents' words, offsets inside each document


def measure(texts: pa.Array, settings: Settings) -> Measures:
    """Every per-document quantity the Gopher, C4 and FineWeb rules test (see the module's docstring)."""
    batch = decode(texts)
    docs = len(batch.bounds) - 1
    owner = batch.owner
    flags = _flags(batch.values, owner, settings.languages)
    values = batch.values
    lo, hi = batch.bounds[:-1], batch.bounds[1:]
    space = (flags & SPACE) != 0
    hasher = span_hasher(values)
    out: dict[str, np.ndarray] = {"chars": (hi - lo).astype(np.float64)}
    newlines = per_doc(owner, values == NEWLINE, docs)
    out["newlines"] = newlines
    lines = segment_lines(batch, flags, owner)
    for name in ("paragraphs", "newline_runs"):
        spans = lines[name]
        out[f"{name}"] = per_doc(spans.owner, None, docs)
        out[f"{name}_dup"], out[f"{name}_dup_chars"] = duplicates(spans, hasher(spans.start, spans.end), docs)

    tokens = word_spans(batch, flags, hasher, settings)
    hashes = hasher(tokens.start, tokens.end)
    symbolic = per_span((flags & SYMBOLIC) != 0, tokens) == tokens.length
    out["words"] = per_doc(tokens.owner, None, docs)
    out["content_words"] = per_doc(tokens.owner, ~symbolic, docs)
    out["content_chars"] = per_doc(tokens.owner, np.where(symbolic, 0, tokens.length), docs)
    out["alpha_words"] = per_doc(tokens.owner, per_span((flags & IS_ALPHA) != 0, tokens) > 0, docs)
    levels = ngram_chain(tokens, hashes, settings.top_ns + settings.dup_ns)
    for n in settings.top_ns:
        out[f"top_{n}"] = top_ngram_chars(levels[n], tokens, docs)
    for n in settings.dup_ns:
        out[f"dup_{n}"] = repeated_ngram_chars(levels[n], docs)
    out["stop_words"] = np.zeros(docs)
    for words, members in settings.stopwords.items():
        out["stop_words"][members] = _distinct_stop_words(tokens, hashes, words, members, docs)[members]

    out["hashes"] = per_doc(owner, values == ord("#"), docs)
    dot_runs = runs(values == DOT, batch.doc_first, owner)
    out["ellipses"] = per_doc(dot_runs.owner, dot_runs.length // 3, docs) + per_doc(
        owner, values == ELLIPSIS_CHAR, docs
    )
    split_lines = lines["splitlines"]
    first, last = stripped(split_lines.start, split_lines.end, space)
    nonblank = last > first
    out["lines"] = per_doc(split_lines.owner, None, docs)
    out["bullet_lines"] = per_doc(
        split_lines.owner, nonblank & np.isin(values[np.minimum(first, max(len(values) - 1, 0))], BULLETS), docs
    )
    ends_three_dots = (last - first >= 3) & _ends_with(values, last, "...")
    ends_ellipsis = nonblank & (values[np.maximum(last - 1, 0)] == ELLIPSIS_CHAR)
    out["ellipsis_lines"] = per_doc(split_lines.owner, ends_three_dots | ends_ellipsis, docs)

    out.update(_c4(batch, texts, flags, Spans(first, last, split_lines.owner), tokens, settings))
    out.update(_fineweb(lines["newline"], hasher, flags, values, docs))
    out.update(_characters(batch, flags, tokens, hashes))
    return Measures(out)


def _characters(batch: CodePointBatch, flags: np.ndarray, tokens: Spans, hashes: np.ndarray) -> dict[str, np.ndarray]:
    """What the document score reads besides the rules' quantities (``quality_score``): character classes,
    the whitespace-separated chunks with no letter or digit (menus' separators, lone symbols) or with a
    capital first, and the distinct words."""
    docs, owner = len(batch.bounds) - 1, batch.owner
    space = (flags & SPACE) != 0
    chunks = runs(~space, batch.doc_first, owner)
    wordy = per_span((flags & (IS_ALPHA | NUMBER)) != 0, chunks) > 0
    distinct = np.unique(keyed(hashes, tokens.owner), return_index=True)[1]
    out = {"nonspace": per_doc(owner, ~space, docs)}
    for name, bit in (
        ("letters", IS_ALPHA),
        ("capitals", CAPITAL),
        ("numbers", NUMBER),
        ("punctuation", IS_PUNCT),
        ("symbols", SYMBOL),
    ):
        out[name] = per_doc(owner, (flags & bit) != 0, docs)
    out["colons"] = per_doc(owner, batch.values == ord(":"), docs)
    out["chunks"] = per_doc(chunks.owner, None, docs)
    out["nonword_chunks"] = per_doc(chunks.owner, ~wordy, docs)
    out["title_chunks"] = per_doc(chunks.owner, (flags[chunks.start] & CAPITAL) != 0, docs)
    out["distinct_words"] = per_doc(tokens.owner[distinct], None, docs)
    return out


def word_spans(batch: CodePointBatch, flags: np.ndarray, hasher, settings: Settings) -> Spans:
    """Each document's words from its source: the emulated rules, its characters, or a segmenter's spans
    (stripped, whitespace dropped: datatrove's ``word_tokenize``)."""
    tokens = merge_exceptions(tokenize(batch, flags), batch.values, hasher, settings.languages)
    source = settings.word_source
    if source is None or not (source != RULES).any():
        return tokens
    space = (flags & SPACE) != 0
    chars = np.flatnonzero(~space & (source[batch.owner] == CHARACTERS))
    given = settings.given if settings.given is not None else Spans(*(np.zeros(0, np.int64),) * 3)
    base = batch.bounds[given.owner]
    start, end = stripped(base + given.start, base + given.end, space)
    kept = end > start
    parts = (subset(tokens, source[tokens.owner] == RULES), Spans(chars, chars + 1, batch.owner[chars]))
    parts += (Spans(start[kept], end[kept], given.owner[kept]),)
    start = np.concatenate([part.start for part in parts])
    order = np.argsort(start, kind="stable")
    end = np.concatenate([part.end for part in parts])
    owner = np.concatenate([part.owner for part in parts])
    return Spans(start[order], end[order], owner[order])


def _flags(values: np.ndarray, owner: np.ndarray, languages: np.ndarray) -> np.ndarray:
    """Each code point's bits under its document's language."""
    names, index = np.unique(languages, return_inverse=True)
    if len(names) == 1:
        return code_point_table(str(names[0]))[values]
    flags = np.zeros(len(values), dtype=np.uint32)
    by_point = index[owner]
    for k, name in enumerate(names):
        mine = by_point == k
        flags[mine] = code_point_table(str(name))[values[mine]]
    return flags


def _ends_with(values: np.ndarray, end: np.ndarray, suffix: str) -> np.ndarray:
    hit = np.ones(len(end), dtype=bool)
    for k, char in enumerate(reversed(suffix), start=1):
        hit &= values[np.clip(end - k, 0, max(len(values) - 1, 0))] == ord(char) if len(values) else False
    return hit


def _distinct_stop_words(
    tokens: Spans, hashes: np.ndarray, words: tuple[str, ...], members: np.ndarray, docs: int
) -> np.ndarray:
    """How many of ``words`` occur among each document's words (exact, as datatrove's set intersection)."""
    stop = np.unique(hash_words(list(words)))
    use = np.zeros(docs, dtype=bool)
    use[members] = True
    hit = np.flatnonzero(use[tokens.owner] & np.isin(hashes, stop))
    pairs = np.unique(np.stack((tokens.owner[hit], hashes[hit].view(np.int64))), axis=1)
    return per_doc(pairs[0], None, docs)


def _c4(
    batch: CodePointBatch, texts: pa.Array, flags: np.ndarray, lines: Spans, tokens: Spans, settings: Settings
) -> dict[str, np.ndarray]:
    """C4's verdict inputs: the first line that drops the document (lorem ipsum, a curly bracket) and the
    sentences of the lines it keeps (at least ``min_words_per_line`` words, no word over 1,000 characters,
    no "javascript", no policy phrase)."""
    docs = len(batch.bounds) - 1
    values = batch.values
    word = (flags & SPACE) == 0
    chunk_start = word & ~(shift(word, 1, False) & ~batch.doc_first[:-1])
    chunk_at = np.flatnonzero(chunk_start)
    chunk_end = np.flatnonzero(word & ~(shift(word, -1, False) & ~batch.doc_first[1:])) + 1
    long_start = np.zeros(len(values), dtype=bool)
    long_start[chunk_at[chunk_end - chunk_at > 1000]] = True
    words = per_span(chunk_start, lines)
    eligible = (per_span(long_start, lines) == 0) & (words >= settings.min_words_per_line[lines.owner])
    javascript, policy, lorem, curly = (np.zeros(len(lines), dtype=bool) for _ in range(4))
    for doc in np.flatnonzero(pc.match_substring_regex(texts, C4_WORDS).to_numpy(zero_copy_only=False)):
        text, base = texts[int(doc)].as_py(), batch.bounds[doc]
        first, last = np.searchsorted(lines.owner, [doc, doc + 1])
        for index in range(first, last):
            line = text[lines.start[index] - base : lines.end[index] - base].lower()
            lorem[index] = "lorem ipsum" in line
            javascript[index] = "javascript" in line
            curly[index] = "{" in line
            policy[index] = any(phrase in line for phrase in C4_POLICY)
    drops_lorem = eligible & lorem
    drops_curly = eligible & ~lorem & ~javascript & curly
    drop_at = np.full(docs, np.iinfo(np.int64).max)
    dropping = np.flatnonzero(drops_lorem | drops_curly)
    np.minimum.at(drop_at, lines.owner[dropping], dropping)
    reason = np.zeros(docs, dtype=np.int8)  # 0: none, 1: lorem ipsum, 2: curly bracket
    has = drop_at < len(lines)
    reason[has] = np.where(drops_lorem[drop_at[has]], 1, 2)
    kept = eligible & ~javascript & ~policy & ~lorem & ~curly
    token_flags = {
        "punct": per_span((flags & IS_PUNCT) != 0, tokens) == tokens.length,
        "sentence_end": (tokens.length == 1) & ((flags[tokens.start] & SENT_END) != 0),
    }
    sentences = sentences_per_line(lines, tokens, token_flags, settings.regex_sentences, flags, values)
    return {"c4_drop": reason.astype(np.float64), "sentences": per_doc(lines.owner, np.where(kept, sentences, 0), docs)}


def _fineweb(lines: Spans, hasher, flags: np.ndarray, values: np.ndarray, docs: int) -> dict[str, np.ndarray]:
    """FineWeb's line quantities over the lines that are not blank (``text.split("\\n")``)."""
    blank = per_span((flags & SPACE) == 0, lines) == 0
    lines = subset(lines, ~blank)
    last = values[np.maximum(lines.end - 1, 0)] if len(values) else np.zeros(0, np.uint32)
    dup_lines, dup_chars = duplicates(lines, hasher(lines.start, lines.end), docs)
    return {
        "fw_lines": per_doc(lines.owner, None, docs),
        "fw_punct_lines": per_doc(lines.owner, (_shared_table()[last] & TERMINAL) != 0, docs),
        "fw_short_lines": per_doc(lines.owner, lines.length <= 30, docs),
        "fw_dup_chars": dup_chars,
        "fw_dup_lines": dup_lines,
    }


def rule_failures(
    m: Measures, t: Thresholds, docs: np.ndarray, filters: list[str], allowed: frozenset[str] | None = None
) -> dict[str, np.ndarray]:
    """For each of datatrove's filters, each document's first failing check ("" where it passes), in
    datatrove's order; only the ``allowed`` checks ("filter.check") count where that is given."""
    checks = rule_checks(m, t, docs)
    return {
        name: first_reason([(c, f) for c, f in checks[name] if allowed is None or f"{name}.{c}" in allowed], len(docs))
        for name in filters
        if name in checks
    }


def rule_checks(m: Measures, t: Thresholds, docs: np.ndarray) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Every check of each of datatrove's filters, in datatrove's order, each a mask of the documents it
    fails, with ``t``'s numbers and datatrove's defaults for the rest (as ``filters_for``)."""

    def get(name: str) -> np.ndarray:
        return m[name][docs]

    with np.errstate(divide="ignore", invalid="ignore"):
        chars, words = get("chars"), get("words")
        checks: dict[str, list[tuple[str, np.ndarray]]] = {
            "gopher_repetition": [
                ("empty", chars == 0),
                ("dup_para_frac", get("paragraphs_dup") / get("paragraphs") > 0.3),
                ("dup_para_char_frac", get("paragraphs_dup_chars") / chars > 0.2),
                (
                    "dup_line_frac",
                    bool(t.dup_line_frac) & (get("newline_runs_dup") / get("newline_runs") > t.dup_line_frac),
                ),
                ("dup_line_char_frac", get("newline_runs_dup_chars") / chars > 0.2),
            ]
            + [(f"top_{n}_gram", get(f"top_{n}") / chars > frac) for n, frac in t.top_n_grams]
            + [(f"duplicated_{n}_n_grams", get(f"dup_{n}") / chars > frac) for n, frac in t.dup_n_grams],
            "gopher_quality": _gopher_quality(get, t),
            "c4": [
                ("lorem_ipsum", get("c4_drop") == 1),
                ("curly_bracket", get("c4_drop") == 2),
                ("too_few_sentences", get("sentences") < 5),
            ],
            "fineweb": [
                ("empty", get("fw_lines") == 0),
                ("line_punct_ratio", get("fw_punct_lines") / get("fw_lines") < t.line_punct_thr),
                ("short_line_ratio", get("fw_short_lines") / get("fw_lines") > t.short_line_thr),
                ("char_dup_ratio", get("fw_dup_chars") / (chars - get("newlines")) > t.char_duplicates_ratio),
                ("list_ratio", get("newlines") / words > t.new_line_ratio),
            ],
        }
    return checks


def _gopher_quality(get, t: Thresholds) -> list[tuple[str, np.ndarray]]:
    content, words = get("content_words"), get("words")
    mean_length = get("content_chars") / content
    checks = [
        ("gopher_short_doc", bool(t.min_doc_words) & (content < t.min_doc_words)),
        ("gopher_long_doc", content > 100_000),
        ("gopher_below_avg_threshold", bool(t.min_avg_word_length) & (mean_length < (t.min_avg_word_length or 0))),
        ("gopher_above_avg_threshold", bool(t.max_avg_word_length) & (mean_length > (t.max_avg_word_length or 0))),
        ("gopher_too_many_hashes", get("hashes") / words > 0.1),
        ("gopher_too_many_ellipsis", get("ellipses") / words > 0.1),
        ("gopher_too_many_bullets", get("bullet_lines") / get("lines") > 0.9),
        ("gopher_too_many_end_ellipsis", get("ellipsis_lines") / get("lines") > 0.3),
        ("gopher_below_alpha_threshold", get("alpha_words") / words < t.max_non_alpha_words_ratio),
    ]
    if t.stopwords and t.min_stop_words:
        checks.append(("gopher_enough_stop_words", get("stop_words") < t.min_stop_words))
    return checks


def first_reason(checks: list[tuple[str, np.ndarray]], size: int) -> np.ndarray:
    """Each document's first failing check's name, "" where none fails."""
    reasons = np.full(size, "", dtype=object)
    for name, failed in reversed(checks):
        reasons[np.broadcast_to(failed, (size,))] = name
    return reasons


def measured_scores(m: Measures) -> dict[str, np.ndarray]:
    """The quantities annotate mode records, as ``quality.scores`` defines them (0 where undefined)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        found = {
            "words": m["content_words"],
            "mean_word_length": m["content_chars"] / m["content_words"],
            "alpha_words_ratio": m["alpha_words"] / m["words"],
            "dup_line_frac": m["fw_dup_lines"] / m["fw_lines"],
            "line_punct_ratio": m["fw_punct_lines"] / m["fw_lines"],
            "new_line_ratio": m["newlines"] / m["words"],
        }
    return {name: np.nan_to_num(values, nan=0.0, posinf=0.0) for name, values in found.items()}
