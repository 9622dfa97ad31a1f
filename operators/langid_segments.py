"""A document's language from its segments, HPLT's way: every line is identified on its own, and the document
takes the language with the most characters among the lines identified with confidence.

Why: web documents mix languages (a Danish article in English boilerplate, a Croatian page quoting Serbian).
One prediction over a document's first characters labels it by whatever those characters are; votes of its
segments weighted by their characters label it by what most of it is, and measure how mixed it is.

Splitting and measuring lines are Arrow kernels over a whole batch; what is left in Python is one call of
the model per segment, as a script calling fastText line by line would make, and arrays per batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shardflow.operators.langcodes import UNDETERMINED

__all__ = ["DocumentVotes", "Segments", "split_segments", "vote"]

NOT_LETTERS = r"[^\pL\pM]+"  # letters are letters and the marks that complete them (Indic vowel signs)
LONG_LINE = 8  # lines of at least this many times min_letters characters are not counted: they are tried

Predict = Callable[[str], list[tuple[str, float]]]  # one segment -> top-k (label, probability), best first


@dataclass(frozen=True)
class Segments:
    """The lines of a batch of documents, flat: ``parent`` is each segment's document (row of the batch),
    ``chars`` its length (its weight in the votes), ``identifiable`` whether it has letters enough to try."""

    texts: list[str]
    parent: np.ndarray
    chars: np.ndarray
    identifiable: np.ndarray
    counts: np.ndarray  # segments per document


def split_segments(texts: pa.Array | pa.ChunkedArray, min_letters: int) -> Segments:
    """Each document's lines (split at ``\n``, as HPLT's ``seg_langs`` count them). Letters are counted only in
    lines shorter than ``LONG_LINE`` times ``min_letters`` characters (a Unicode class regex costs ~100 ns per
    character, more than the model): a longer line is taken to hold text enough to try."""
    lines = pc.split_pattern(texts, "\n")
    if isinstance(lines, pa.ChunkedArray):
        lines = lines.combine_chunks()
    flat = pc.list_flatten(lines)
    chars = pc.utf8_length(flat).to_numpy(zero_copy_only=False).astype(np.float64)
    identifiable = chars >= LONG_LINE * min_letters
    short = np.flatnonzero((chars >= min_letters) & ~identifiable)
    if len(short):
        kept = pc.replace_substring_regex(flat.take(pa.array(short)), NOT_LETTERS, "")
        identifiable[short] = pc.utf8_length(kept).to_numpy(zero_copy_only=False) >= min_letters
    return Segments(
        texts=flat.to_pylist(),
        parent=pc.list_parent_indices(lines).to_numpy(zero_copy_only=False),
        chars=chars,
        identifiable=identifiable,
        counts=pc.list_value_length(lines).to_numpy(zero_copy_only=False),
    )


@dataclass(frozen=True)
class DocumentVotes:
    """Per document: its label from the votes (``None`` where no segment was identified), the alternatives with
    their evidence, the share of characters in other labels; per segment: label and probability."""

    labels: list[str | None]
    topk: list[list[tuple[str, float]]]
    mix: np.ndarray  # NaN where no segment was identified
    seg_labels: list[str]
    seg_scores: np.ndarray
    names: list[str]  # the labels of the batch, in the columns' order of ``shares``
    shares: np.ndarray  # documents x labels: each label's share of the document's voting characters

    def share(self, document: int, label: str) -> float:
        """``label``'s share of ``document``'s voting characters (0 for a label no segment of it voted for)."""
        return float(self.shares[document, self.names.index(label)]) if label in self.names else 0.0


def vote(segments: Segments, documents: int, predict: Predict, min_score: float, top_k: int) -> DocumentVotes:
    """Identify every identifiable segment (the others - numbers, punctuation, a word or two - are ``und_Zyyy``
    and do not vote), then weigh the confident ones (top probability at least ``min_score``) by their
    characters. In a document where no segment is confident, every identified segment votes: measured on
    HPLT excerpts this labels as well as a second prediction over the whole document, which would cost a
    third more model time there.

    - label: the language with the most characters among voting segments; a tie goes to the larger
      evidence, then to the first label in alphabetical order.
    - evidence of a language: sum over voting segments of characters x the probability the model gives the
      language (among its top-k), over the characters of all voting segments. The label's evidence is the
      document's score; for a pure document it is the weighted mean of its segments' probabilities.
    - mix: the share of voting characters whose segment voted for another language (or for noise).
    """
    n = len(segments.texts)
    seg_labels, seg_scores = [UNDETERMINED] * n, np.zeros(n, np.float64)
    index: dict[str, int] = {}
    rows: list[tuple[int, int, float]] = []  # (segment, label id, probability) of every prediction kept
    top = np.full(n, -1, np.int64)
    for i in np.flatnonzero(segments.identifiable):
        found = predict(segments.texts[i])
        if not found:
            continue
        seg_labels[i], seg_scores[i] = found[0]
        for label, prob in found[:top_k]:
            rows.append((i, index.setdefault(label, len(index)), prob))
        top[i] = index[found[0][0]]
    names = sorted(index, key=index.__getitem__)
    identified = top >= 0
    confident = identified & (seg_scores >= min_score)
    unsure = np.bincount(segments.parent[confident], minlength=documents) == 0
    confident |= identified & unsure[segments.parent]  # no line is sure: every identified one votes
    weights = np.where(confident, segments.chars, 0.0)
    shape = (documents, max(len(names), 1))
    chars = np.zeros(shape)
    np.add.at(chars, (segments.parent[confident], top[confident]), weights[confident])
    evidence = np.zeros(shape)
    if rows:
        seg, label, prob = (np.array(column) for column in zip(*rows, strict=True))
        np.add.at(evidence, (segments.parent[seg], label), weights[seg] * prob)
    total = chars.sum(axis=1, keepdims=True)
    evidence = np.divide(evidence, total, out=np.zeros(shape), where=total > 0)
    shares = np.divide(chars, total, out=np.zeros(shape), where=total > 0)
    winners = _winners(chars, evidence, names)
    voted = total[:, 0] > 0
    labels = [names[w] if voted[d] else None for d, w in enumerate(winners)]
    mix = np.where(voted, 1.0 - shares[np.arange(documents), winners], np.nan)
    topk = [_alternatives(evidence[d], winners[d], names, top_k) if voted[d] else [] for d in range(documents)]
    return DocumentVotes(labels, topk, mix, seg_labels, seg_scores, names, shares)


def _winners(chars: np.ndarray, evidence: np.ndarray, names: list[str]) -> np.ndarray:
    """Per document, the label with most characters; ties by evidence, then by name."""
    winners = chars.argmax(axis=1)
    most = chars.max(axis=1, keepdims=True)
    tied = np.flatnonzero(((chars == most).sum(axis=1) > 1) & (most[:, 0] > 0))
    for d in tied:
        candidates = np.flatnonzero(chars[d] == chars[d].max())
        winners[d] = min(candidates, key=lambda c: (-evidence[d, c], names[c]))
    return winners


def _alternatives(evidence: np.ndarray, winner: int, names: list[str], top_k: int) -> list[tuple[str, float]]:
    """The label first, then the other languages with evidence, most first (at most ``top_k`` in all)."""
    best = np.argsort(-evidence, kind="stable")[: top_k + 1]
    order = [winner] + [c for c in best.tolist() if c != winner and evidence[c] > 0]
    return [(names[c], float(evidence[c])) for c in order[:top_k]]
