"""Scorers for reranking: (query, document) pairs in, one relevance score per pair out, in input order.

Each scorer is a small class over a Hugging Face model loaded through transformers, chosen by ``kind`` in
config. Pairs are tokenized once, sorted by length and cut into batches by a padded-token budget (the
embedding stage's ``token_budget_batches``), so a batch of short pairs holds many and one of long pairs few.

| kind | model | score |
|---|---|---|
| ``embedding`` (default) | the embedding stage's encoder (multilingual-e5-small offline) | cosine(query, document) |
| ``cross_encoder`` | ``AutoModelForSequenceClassification`` | the logit (one label) or P(label 1) (two) |
| ``causal_yes_no`` | ``AutoModelForCausalLM`` (Qwen3-Reranker recipe) | P("yes") vs "no", last position |
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from shardflow.config import StrictModel
from shardflow.operators.embed import TOKEN_BUDGET, EmbedConfig, TextEncoder, token_budget_batches
from shardflow.operators.model_source import resolve_model

QWEN3_RERANK_SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)
QWEN3_RERANK_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


class EmbeddingScorerConfig(StrictModel):
    """Cosine between query and document embeddings, with the embed stage's encoder and prompts."""

    kind: Literal["embedding"] = "embedding"
    encoder: EmbedConfig = Field(default_factory=EmbedConfig)


class CrossEncoderConfig(StrictModel):
    kind: Literal["cross_encoder"] = "cross_encoder"
    model: str = Field(description="A local folder or a cached Hugging Face model id.")
    max_length: int = Field(512, ge=8, description="Tokens per pair; the longer of query and document is cut first.")
    token_budget: int | None = Field(None, ge=1, description="Padded tokens per pass; None: per device.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


class CausalYesNoConfig(StrictModel):
    kind: Literal["causal_yes_no"] = "causal_yes_no"
    model: str = Field(description="A Qwen3-Reranker-style causal LM: a local folder or a cached model id.")
    instruction: str = QWEN3_RERANK_INSTRUCTION
    system: str = QWEN3_RERANK_SYSTEM
    max_length: int = Field(1024, ge=32, description="Tokens per prompt; the document is truncated, never the rest.")
    token_budget: int | None = Field(None, ge=1)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


ScorerConfig = Annotated[EmbeddingScorerConfig | CrossEncoderConfig | CausalYesNoConfig, Field(discriminator="kind")]


def device_and_dtype(dtype: str) -> tuple[Any, Any]:
    """The device, and bfloat16 on a GPU / float32 on the CPU unless the config names a dtype."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dtype == "auto":
        return device, torch.bfloat16 if device.type == "cuda" else torch.float32
    return device, getattr(torch, dtype)


class EmbeddingScorer:
    """Cosine of query and document embeddings; each distinct query and document of a call is embedded once.

    Nothing is kept between calls: a chunk's scores must not depend on which chunks the actor saw before
    (a batch of other shape can move a float32 result by an ulp), or a resumed job would not rewrite the
    identical run."""

    def __init__(self, config: EmbeddingScorerConfig) -> None:
        self.encoder = TextEncoder(config.encoder)

    def score(self, queries: list[str], documents: list[str]) -> np.ndarray:
        return np.einsum("ij,ij->i", self.vectors(queries, "query"), self.vectors(documents, "passage"))

    def vectors(self, texts: list[str], kind: Literal["query", "passage"]) -> np.ndarray:
        distinct = list(dict.fromkeys(texts))
        position = {text: row for row, text in enumerate(distinct)}
        return self.encoder.encode(distinct, kind)[[position[text] for text in texts]]


class CrossEncoderScorer:
    def __init__(self, config: CrossEncoderConfig) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.device, dtype = device_and_dtype(config.dtype)
        path = resolve_model(config.model)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype).to(self.device).eval()
        self.max_length = config.max_length
        self.token_budget = config.token_budget or TOKEN_BUDGET[self.device.type]

    def score(self, queries: list[str], documents: list[str]) -> np.ndarray:
        encoded = self.tokenizer(queries, documents, truncation="longest_first", max_length=self.max_length)
        return batched_scores(self, encoded, self._logits)

    def _logits(self, padded: dict[str, Any]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            logits = self.model(**padded).logits.float()
        if logits.shape[-1] == 1:
            return logits[:, 0].cpu().numpy()
        return torch.softmax(logits, dim=-1)[:, 1].cpu().numpy()


class CausalYesNoScorer:
    """The Qwen3-Reranker recipe: a chat prompt asking yes or no; the score is P(yes) against P(no) at the
    last position. Left padding, so the last position is every prompt's own; only the document is cut."""

    def __init__(self, config: CausalYesNoConfig) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device, dtype = device_and_dtype(config.dtype)
        path = resolve_model(config.model)
        self.tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(self.device).eval()
        self.config = config
        self.token_budget = config.token_budget or TOKEN_BUDGET[self.device.type]
        self.yes = self.tokenizer.convert_tokens_to_ids("yes")
        self.no = self.tokenizer.convert_tokens_to_ids("no")
        self.prefix = self.tokenizer.encode(
            f"<|im_start|>system\n{config.system}<|im_end|>\n<|im_start|>user\n", add_special_tokens=False
        )
        self.suffix = self.tokenizer.encode(
            "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n", add_special_tokens=False
        )

    def prompt_ids(self, query: str, document: str) -> list[int]:
        head = self.tokenizer.encode(
            f"<Instruct>: {self.config.instruction}\n<Query>: {query}\n<Document>: ", add_special_tokens=False
        )
        room = max(0, self.config.max_length - len(self.prefix) - len(head) - len(self.suffix))
        body = self.tokenizer.encode(document, add_special_tokens=False)[:room]
        return self.prefix + head + body + self.suffix

    def score(self, queries: list[str], documents: list[str]) -> np.ndarray:
        ids = [self.prompt_ids(q, d) for q, d in zip(queries, documents, strict=True)]
        return batched_scores(self, {"input_ids": ids}, self._yes_probability)

    def _yes_probability(self, padded: dict[str, Any]) -> np.ndarray:
        import torch

        mask = padded["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            last = self.model(**padded, position_ids=positions).logits[:, -1, :].float()
        pair = torch.stack([last[:, self.no], last[:, self.yes]], dim=1)
        return torch.softmax(pair, dim=1)[:, 1].cpu().numpy()


def batched_scores(scorer: Any, encoded: dict[str, list[list[int]]], forward: Any) -> np.ndarray:
    """``forward`` over token-budget batches of the tokenized pairs (sorted by length), back in input order."""
    ids = encoded["input_ids"]
    lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
    scores = np.zeros(len(ids), dtype=np.float32)
    for batch in token_budget_batches(lengths, scorer.token_budget):
        rows = {key: [values[i] for i in batch] for key, values in encoded.items()}
        padded = scorer.tokenizer.pad(rows, return_tensors="pt").to(scorer.device)
        scores[batch] = forward(dict(padded))
    return scores


SCORERS = {"embedding": EmbeddingScorer, "cross_encoder": CrossEncoderScorer, "causal_yes_no": CausalYesNoScorer}


def load_scorer(config: Any) -> Any:
    return SCORERS[config.kind](config)
