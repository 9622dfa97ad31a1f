"""Scorers against a plain transformers forward, pair by pair, on tiny checkpoints the tests create."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shardflow.operators.rerank import (
    LABELS,
    CausalYesNoConfig,
    CausalYesNoScorer,
    CrossEncoderConfig,
    CrossEncoderScorer,
    FirstListwiseConfig,
    FirstListwiseScorer,
    Pairs,
    slide,
    window_plan,
)
from shardflow.operators.rerank_attention import CONTENT_FREE, AttentionScorer, AttentionScorerConfig
from support import sample_records, write_tiny_encoder

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def pointwise(queries: list[str], documents: list[str]) -> Pairs:
    """Pairs for a pointwise scorer: each its own list."""
    return Pairs(queries, documents, np.arange(len(queries)), np.array(queries), np.array(documents))


def pairs() -> tuple[list[str], list[str]]:
    texts = [r["text"] for r in sample_records()[:40]]
    queries = [" ".join(t.split()[:4]) for t in texts[:8]] * 5
    documents = [t[: 40 + 37 * i % 900] for i, t in enumerate(texts)]  # lengths spread: many batch shapes
    return queries, documents


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rerankers")
    queries, documents = pairs()
    words = [*queries, *documents, "yes no Instruct Query Document"]
    return {kind: write_tiny_encoder(root / kind, kind, words) for kind in ("bert-1", "bert-2", "qwen3-lm")}


@pytest.mark.parametrize("kind", ["bert-1", "bert-2"])
def test_cross_encoder_scores_equal_one_pair_at_a_time(models: dict[str, Path], kind: str) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    queries, documents = pairs()
    scorer = CrossEncoderScorer(CrossEncoderConfig(model=str(models[kind]), max_length=64, token_budget=300))
    found = scorer.score(pointwise(queries, documents))
    shuffled = np.random.default_rng(0).permutation(len(queries))
    again = scorer.score(pointwise([queries[i] for i in shuffled], [documents[i] for i in shuffled]))
    np.testing.assert_allclose(again, found[shuffled], atol=1e-6)  # any input order: the same score per pair
    tokenizer = AutoTokenizer.from_pretrained(models[kind])
    model = AutoModelForSequenceClassification.from_pretrained(models[kind]).eval()
    expected = []
    for query, document in zip(queries, documents, strict=True):
        inputs = tokenizer(query, document, truncation="longest_first", max_length=64, return_tensors="pt")
        with torch.inference_mode():
            logits = model(**inputs).logits[0]
        expected.append(float(logits[0]) if len(logits) == 1 else float(torch.softmax(logits, -1)[1]))
    np.testing.assert_allclose(found, expected, atol=1e-5)
    assert len(np.unique(found)) > len(found) // 2  # the scores differ between pairs: the test can fail


def test_causal_yes_no_scores_equal_one_prompt_at_a_time(models: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM

    queries, documents = pairs()
    scorer = CausalYesNoScorer(CausalYesNoConfig(model=str(models["qwen3-lm"]), max_length=96, token_budget=800))
    found = scorer.score(pointwise(queries, documents))
    model = AutoModelForCausalLM.from_pretrained(models["qwen3-lm"]).eval()
    yes, no = scorer.yes, scorer.no
    assert yes != no and scorer.tokenizer.unk_token_id not in (yes, no)
    expected = []
    assert any(len(scorer.prompt_ids(q, d)) == 96 for q, d in zip(queries, documents, strict=True))  # some are cut
    for query, document in zip(queries, documents, strict=True):
        ids = scorer.prompt_ids(query, document)
        assert len(ids) <= 96 and ids[-len(scorer.suffix) :] == scorer.suffix  # only the document is cut
        with torch.inference_mode():
            last = model(input_ids=torch.tensor([ids])).logits[0, -1]
        expected.append(float(torch.softmax(torch.stack([last[no], last[yes]]), -1)[1]))
    np.testing.assert_allclose(found, expected, atol=1e-5)


def test_sliding_windows_with_a_known_preference_give_the_known_order() -> None:
    value = [3, 7, 1, 8, 2, 6, 5, 4]  # row -> how much the "model" likes it
    calls = []

    def prefer_higher(requests: list[tuple[int, list[int]]]) -> list[list[int]]:
        calls.append(len(requests))
        return [sorted(range(len(rows)), key=lambda p: -value[rows[p]]) for _, rows in requests]

    assert window_plan(8, 4, 2) == [(4, 8), (2, 6), (0, 4)] and window_plan(3, 4, 2) == [(0, 3)]
    final = slide([list(range(8)), [0, 1, 2]], windows=[4, 4], stride=2, rank_windows=prefer_higher)
    # bottom window [4..8) -> 5 6 7 4; then [2..6) -> 3 5 6 2; then [0..4) -> 3 1 5 0: the best rise to the top
    assert final[0] == [3, 1, 5, 0, 6, 2, 7, 4] and final[1] == [1, 0, 2]
    assert calls == [2, 1, 1]  # step 1 of both lists in one call, then the longer list alone


def test_first_ranks_a_short_list_by_the_label_logits_of_one_forward(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    queries, documents = pairs()
    labels = " ".join(chr(ord("A") + i) for i in range(26))
    words = [*queries, *documents, labels, "Search query: Rank the passages below by relevance to the query."]
    model = write_tiny_encoder(tmp_path / "first", "qwen3-lm", words, lowercase=False)
    scorer = FirstListwiseScorer(FirstListwiseConfig(model=str(model), window=6, stride=3, passage_tokens=12))
    lists = np.array([0] * 5 + [1] * 14)
    found = scorer.score(Pairs(queries[:19], documents[:19], lists, np.array(queries[:19]), np.array(documents[:19])))
    assert sorted(found[:5]) == [1, 2, 3, 4, 5] and sorted(found[5:]) == list(range(1, 15))
    passages = [scorer.tokenizer.encode(d, add_special_tokens=False)[:12] for d in documents[:5]]
    with torch.inference_mode():
        last = (
            AutoModelForCausalLM.from_pretrained(model)
            .eval()(input_ids=torch.tensor([scorer.prompt_ids(queries[0], passages)]))
            .logits[0, -1]
        )
    expected_order = np.argsort(-last[scorer.label_ids[:5]].numpy(), kind="stable")
    assert list(np.argsort(-found[:5], kind="stable")) == list(expected_order)


def test_icr_scores_are_the_calibrated_attention_from_the_query_window_by_window(models: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM

    queries, documents = pairs()
    config = AttentionScorerConfig(model=str(models["qwen3-lm"]), window=6, passage_tokens=10, token_budget=400)
    scorer = AttentionScorer(config)
    lists = np.array([0] * 5 + [1] * 14)  # windows [0, 5), then [5, 11), [11, 17), [17, 19)
    found = scorer.score(Pairs(queries[:19], documents[:19], lists, np.array(queries[:19]), np.array(documents[:19])))

    model = AutoModelForCausalLM.from_pretrained(models["qwen3-lm"], attn_implementation="eager").eval()

    def masses(query: str, window: list[str]) -> np.ndarray:  # one prompt alone, every attention returned
        prompt = scorer.prompt(query, [scorer.encode(d)[:10] for d in window])
        with torch.inference_mode():
            attentions = model(input_ids=torch.tensor([prompt.ids]), output_attentions=True).attentions
        start, end = prompt.query
        received = sum(layer[0, :, start:end, :].sum(dim=(0, 1)) for layer in attentions).numpy()
        return np.array([received[a:b].sum() for a, b in prompt.passages])

    expected = np.concatenate(
        [
            masses(queries[start], documents[start:end]) - masses(CONTENT_FREE, documents[start:end])
            for start, end in [(0, 5), (5, 11), (11, 17), (17, 19)]
        ]
    )
    np.testing.assert_allclose(found, expected, rtol=1e-4, atol=1e-5)
    assert len(np.unique(np.round(found, 5))) == len(found)  # scores differ: the test can fail


def test_first_s_full_window_ranks_a_list_in_one_pass_and_slides_where_the_context_is_too_short(
    tmp_path: Path,
) -> None:
    from transformers import AutoModelForCausalLM

    queries, documents = pairs()
    labels = " ".join(LABELS)
    words = [*queries, *documents, labels, "Search query: Rank the passages below by relevance to the query."]
    model = write_tiny_encoder(tmp_path / "first", "qwen3-lm", words, lowercase=False)
    full = FirstListwiseScorer(
        FirstListwiseConfig(model=str(model), window=6, stride=3, passage_tokens=12, full_window=True)
    )
    lists = np.array([0] * 14)
    found = full.score(Pairs(queries[:14], documents[:14], lists, np.array(queries[:14]), np.array(documents[:14])))
    passages = [full.tokenizer.encode(d, add_special_tokens=False)[:12] for d in documents[:14]]
    prompt = full.prompt_ids(queries[0], passages)
    assert len(prompt) <= full.context  # it fits: one window of 14, one forward
    with torch.inference_mode():
        last = AutoModelForCausalLM.from_pretrained(model).eval()(input_ids=torch.tensor([prompt])).logits[0, -1]
    expected_order = np.argsort(-last[full.label_ids[:14]].numpy(), kind="stable")
    assert list(np.argsort(-found, kind="stable")) == list(expected_order)

    sliding = FirstListwiseScorer(FirstListwiseConfig(model=str(model), window=6, stride=3, passage_tokens=12))
    long = Pairs(
        queries[:40], documents[:40], np.zeros(40, dtype=int), np.array(queries[:40]), np.array(documents[:40])
    )
    too_long = full.prompt_ids(
        queries[0], [full.tokenizer.encode(d, add_special_tokens=False)[:12] for d in documents[:40]]
    )
    assert len(too_long) > full.context  # 40 passages do not fit the tiny model's 256 positions: it slides
    np.testing.assert_array_equal(full.score(long), sliding.score(long))
