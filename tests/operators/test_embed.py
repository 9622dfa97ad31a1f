"""Embedding: every pooling path of tiny random checkpoints (a BERT and a Qwen3-style decoder, made here and
loaded through transformers' own loading code) equals a plain one-text-at-a-time forward, whatever the
batching; token-budget batches; Matryoshka; the operator's Arrow output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from shardflow.operators.embed import EMBEDDING, NON_FINITE, EmbedConfig, Embedder, TextEncoder, token_budget_batches
from shardflow.schema import TEXT
from shardflow.storage import StorageConfig
from support import sample_records, write_tiny_encoder


def texts() -> list[str]:
    records = sample_records()
    return [r["text"][: 40 + 17 * i] for i, r in enumerate(records[:24])]  # lengths all different


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {kind: write_tiny_encoder(tmp_path_factory.mktemp(kind), kind, texts()) for kind in ("bert", "qwen3")}


def one_at_a_time(encoder: TextEncoder, items: list[str], prompt: str) -> np.ndarray:
    """The reference: each text alone (no padding at all), pooled by hand."""
    vectors = []
    for text in items:
        ids = encoder.tokenizer(prompt + text, truncation=True, max_length=encoder.max_length, return_tensors="pt")
        with torch.inference_mode():
            hidden = encoder.model(input_ids=ids["input_ids"]).last_hidden_state[0]
        vector = {"mean": hidden.mean(dim=0), "cls": hidden[0], "last": hidden[-1]}[encoder.family.pooling]
        vectors.append(torch.nn.functional.normalize(vector, dim=-1).numpy())
    return np.stack(vectors)


@pytest.mark.parametrize(
    "model,settings",
    [
        ("bert", {"preset": "e5"}),  # mean pooling, "passage: " prompt, right padding
        ("bert", {"preset": "bge"}),  # first token
        ("bert", {"preset": "e5", "pooling": "last"}),  # last real token under right padding
        ("qwen3", {"preset": "qwen3"}),  # last token, left padding
        ("qwen3", {"preset": "plain"}),  # mean pooling over a decoder
    ],
)
def test_batched_encoding_equals_one_text_at_a_time(checkpoints: dict[str, Path], model: str, settings: dict) -> None:
    items = texts()
    for budget in (64, 100_000):  # many small batches, or one padded batch
        config = EmbedConfig(model=str(checkpoints[model]), token_budget=budget, **settings)
        encoder = TextEncoder(config)
        found = encoder.encode(items, "passage")
        expected = one_at_a_time(encoder, items, encoder.family.passage_prompt)
        np.testing.assert_allclose(found, expected, atol=2e-5)
        assert np.allclose(np.linalg.norm(found, axis=1), 1.0, atol=1e-5)


def test_query_and_passage_prompts_and_matryoshka(checkpoints: dict[str, Path]) -> None:
    encoder = TextEncoder(EmbedConfig(model=str(checkpoints["bert"]), dimensions=8))
    assert encoder.token_budget == 2048  # unset: the CPU's budget (no GPU here)
    queries, passages = encoder.encode(texts()[:3], "query"), encoder.encode(texts()[:3], "passage")
    assert queries.shape == (3, 8) and not np.allclose(queries, passages)
    assert np.allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)


def test_token_budget_batches_sort_by_length_and_respect_the_budget() -> None:
    lengths = np.array([5, 300, 40, 41, 7, 120, 3, 39])
    batches = token_budget_batches(lengths, budget=128)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    assert [lengths[b].tolist() for b in batches][:2] == [[300], [120]]  # too long for company: alone
    for batch in batches:
        assert len(batch) == 1 or lengths[batch].max() * len(batch) <= 128
    assert np.all(np.diff(lengths[np.concatenate(batches)]) <= 0)  # longest first


def test_the_operator_adds_float16_vectors_to_the_documents_in_play(checkpoints: dict[str, Path]) -> None:
    embedder = Embedder(EmbedConfig(model=str(checkpoints["bert"])), StorageConfig())
    items = texts()[:5]
    batch = pa.table(
        {TEXT: items, "quarantine_reason": [None, None, "invalid_json", None, None], "drop_reason": [None] * 5}
    )
    out = embedder(batch)
    column = out[EMBEDDING]
    assert column.type == pa.list_(pa.float16(), 32)
    assert column.null_count == 1 and column[2].as_py() is None
    vectors = np.array([v for v in column.to_pylist() if v is not None], dtype=np.float32)
    expected = embedder.encoder.encode([items[i] for i in (0, 1, 3, 4)])
    np.testing.assert_allclose(vectors, expected, atol=2e-3)  # float16 storage


def test_a_vector_with_nan_or_beyond_float16_is_quarantined_not_indexed(checkpoints: dict[str, Path]) -> None:
    embedder = Embedder(EmbedConfig(model=str(checkpoints["bert"])), StorageConfig())
    real = embedder.encoder.encode_counted

    def overflowing(texts: list[str], kind: str) -> tuple[np.ndarray, int]:
        vectors, tokens = real(texts, kind)
        vectors[1, 0], vectors[3, 5] = np.nan, 1e6  # a model that diverged; a value float16 cannot hold
        return vectors, tokens

    embedder.encoder.encode_counted = overflowing
    nothing = pa.nulls(4, pa.string())
    batch = pa.table(
        {TEXT: texts()[:4], "quarantine_reason": nothing, "drop_reason": nothing, "raw": pa.nulls(4, pa.large_binary())}
    )
    out = embedder(batch)
    assert out["quarantine_reason"].to_pylist() == [None, NON_FINITE, None, NON_FINITE]
    assert [v is None for v in out[EMBEDDING].to_pylist()] == [False, True, False, True]
    assert np.isfinite(np.array(out[EMBEDDING][0].as_py(), dtype=np.float32)).all()


def test_the_offline_default_model_retrieves_across_languages() -> None:
    """multilingual-e5-small, built from the PyPI wheels: an English UDHR article as the query finds the same
    article among the French, German or Russian ones (P@1 >= 0.9 each)."""
    articles: dict[str, list[str]] = {}
    for record in sample_records():
        articles.setdefault(record["lang"][0], []).append(record["text"].split("\n", 1)[-1])  # heading cut
    encoder = TextEncoder(EmbedConfig())
    count = 30
    queries = encoder.encode(articles["eng_Latn"][1 : count + 1], "query")
    for lang in ("fra_Latn", "deu_Latn", "rus_Cyrl"):
        passages = encoder.encode(articles[lang][1 : count + 1], "passage")
        hits = np.argmax(queries @ passages.T, axis=1) == np.arange(count)
        assert hits.mean() >= 0.9, (lang, hits.mean())
