"""MinHash signatures: the vectorised shingles are the n-grams a plain implementation finds, and signature
agreement estimates Jaccard similarity as theory says."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from shardflow.operators.dedup.minhash import MinHasher, MinHashParams, Shingles, normal_form, shingle, unspaced
from support import reference_normalise, reference_shingles, sample_records


def sample_texts() -> tuple[list[str], list[str]]:
    records = [
        r for r in sample_records() if r["lang"][0] in ("eng_Latn", "rus_Cyrl", "cmn_Hani", "jpn_Jpan", "tha_Thai")
    ]
    return [r["text"] for r in records], [r["lang"][0] for r in records]


def test_normalisation_matches_the_documented_rules() -> None:
    texts, _ = sample_texts()
    texts += ["Ｈｅｌｌｏ,  WORLD!! 2024-11-25\t\n€100 x٣٤y", "", "!!!", None]
    assert normal_form(pa.array(texts)) == [reference_normalise(t or "") for t in texts]


def test_shingles_are_the_word_or_character_ngrams_of_each_document() -> None:
    texts, langs = sample_texts()
    params = MinHashParams(word_ngrams=4, char_ngrams=3)
    texts = texts + ["one two", "", "a, b. c d e", "数字 123 和"]
    langs = langs + ["eng_Latn"] * 3 + ["cmn_Hani"]
    chars = unspaced(langs)
    assert chars.sum() > 10 and (~chars).sum() > 10
    found = shingle(pa.array(texts), chars, params)
    assert np.all(np.diff(found.owner) >= 0)
    for doc, text in enumerate(map(reference_normalise, texts)):
        expected = reference_shingles(text, 3 if chars[doc] else 4, bool(chars[doc]))
        hashes = found.hashes[found.owner == doc]
        assert len(set(hashes.tolist())) == len(expected), (langs[doc], text[:60])


def test_equal_texts_give_equal_band_keys_and_different_bands_never_share_keys() -> None:
    texts, langs = sample_texts()
    params = MinHashParams()
    hasher = MinHasher(params)
    doubled = pa.array(texts + texts)
    found = shingle(doubled, unspaced(langs + langs), params)
    signatures, has = hasher.signatures(found, len(doubled))
    keys = hasher.band_keys(signatures)
    assert has.all()
    assert np.array_equal(keys[: len(texts)], keys[len(texts) :])
    assert len(np.unique(keys[: len(texts)])) == len(texts) * params.bands  # distinct texts, distinct bands


def test_signature_agreement_estimates_jaccard_similarity() -> None:
    hasher = MinHasher(MinHashParams(bands=16, rows=8))
    rng = np.random.default_rng(7)
    errors = []
    for _ in range(300):
        shared = rng.integers(0, 1 << 62, size=int(rng.integers(0, 400)), dtype=np.uint64)
        left = np.concatenate((shared, rng.integers(0, 1 << 62, size=400 - len(shared), dtype=np.uint64)))
        right = np.concatenate((shared, rng.integers(0, 1 << 62, size=400 - len(shared), dtype=np.uint64)))
        jaccard = len(shared) / (800 - len(shared))
        owner = np.repeat([0, 1], 400)
        signatures, _ = hasher.signatures(Shingles(np.concatenate((left, right)), owner), 2)
        errors.append((signatures[0] == signatures[1]).mean() - jaccard)
    # 128 hash functions: the standard error of the estimate is at most sqrt(0.25 / 128) = 0.044
    assert abs(np.mean(errors)) < 0.01
    assert np.std(errors) < 0.05


def test_documents_without_words_have_no_signature() -> None:
    params = MinHashParams()
    texts = pa.array(["!!! ...", "", None, "a real sentence with words"])
    found = shingle(texts, np.zeros(4, dtype=bool), params)
    _, has = MinHasher(params).signatures(found, 4)
    assert has.tolist() == [False, False, False, True]
