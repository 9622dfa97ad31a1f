"""Scorers for reranking: (query, document) pairs in, one relevance score per pair out, in input order.

Each scorer is a small class chosen by ``kind`` in config, most over a Hugging Face model loaded through
transformers. Their pairs are tokenized once, sorted by length and cut into batches by a padded-token budget
(the embedding stage's ``token_budget_batches``), so a batch of short pairs holds many and one of long few.

| kind | model | score |
|---|---|---|
| ``embedding`` (default, ``rerank_dense``) | the embed stage's encoder, once per distinct text of the job | cosine |
| ``bm25`` (``rerank_lexical``) | none: statistics of the job's candidate documents | Okapi BM25 |
| ``cross_encoder`` | ``AutoModelForSequenceClassification`` | the logit (one label) or P(label 1) (two) |
| ``causal_yes_no`` | ``AutoModelForCausalLM`` (Qwen3-Reranker recipe) | P("yes") vs "no", last position |
| ``first`` | ``AutoModelForCausalLM`` (FIRST, single-token listwise) | list length - final position |
| ``attention`` (``rerank_attention``) | ``AutoModelForCausalLM``, eager attention (ICR) | calibrated attention mass |

Every scorer is a ``Scorer``: ``score(pairs)`` for ``Pairs`` (queries, documents, their ids and which list
each pair belongs to). Pointwise scorers score pairs independently and ignore the lists; a listwise one ranks
each list. A scorer whose work is mostly per distinct text (an encoder's vectors, a collection's statistics)
does that work once per job, before any pair is scored: its class has a ``prepare(config, texts, folder)``
that reads the job's distinct texts (``JobTexts``) and writes what it needs under ``folder``, which its
constructor then reads instead of loading a model.

The registry of kinds is ``shardflow.operators.scorers``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import Field

from shardflow.arrays import run_starts
from shardflow.config import Resources, StrictModel
from shardflow.errors import ConfigError
from shardflow.operators.embed import TOKEN_BUDGET, token_budget_batches
from shardflow.operators.model_source import resolve_model

__all__ = [
    "ACTOR_RESTARTS",
    "CausalYesNoConfig",
    "CausalYesNoScorer",
    "CrossEncoderConfig",
    "CrossEncoderScorer",
    "FirstListwiseConfig",
    "FirstListwiseScorer",
    "JobTexts",
    "Pairs",
    "actor_placement",
    "Scorer",
    "device_and_dtype",
    "list_bounds",
]

QWEN3_RERANK_SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)
QWEN3_RERANK_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
ACTOR_RESTARTS = 3  # restarts of a model actor (encoder, scorer) before the job fails; its calls wait for it
LABELS = [chr(ord("A") + i) for i in range(26)] + [chr(ord("a") + i) for i in range(26)]  # FIRST's passage labels


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


class FirstListwiseConfig(StrictModel):
    """FIRST (single-token listwise): a causal LM reads a window of passages labelled [A], [B], ... and the
    logits of its first generated token rank them; windows slide from the bottom of the list to the top, or
    one window holds the whole list (``full_window``) where the labels and the model's context allow."""

    kind: Literal["first"] = "first"
    model: str = Field(description="A causal LM trained for listwise ranking: a local folder or a cached model id.")
    window: int = Field(20, ge=2, le=len(LABELS), description="Passages per prompt (labelled A..Z, then a..z).")
    full_window: bool = Field(
        False,
        description="One window per list where each passage gets a single-token label (A..Z, then a..z where the "
        "tokenizer has them: up to 52) and the prompt fits the model's context; else sliding windows of `window`.",
    )
    stride: int = Field(10, ge=1, description="Positions the window moves up each step.")
    passage_tokens: int = Field(100, ge=8, description="Each passage is cut to this many tokens.")
    token_budget: int | None = Field(None, ge=1)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


@dataclass(frozen=True)
class Pairs:
    """(query, document) pairs to score; ``lists`` numbers each pair's list (one query of one run): the pairs of
    a list are contiguous and in the input's rank order. ``query_ids`` and ``doc_ids`` name the texts, for
    scorers that prepared something per text."""

    queries: list[str]
    documents: list[str]
    lists: np.ndarray
    query_ids: np.ndarray
    doc_ids: np.ndarray


def list_bounds(lists: np.ndarray) -> list[tuple[int, int]]:
    """``(start, end)`` of each list of contiguous pairs."""
    bounds = np.r_[np.flatnonzero(run_starts(lists)), len(lists)]
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))


@dataclass(frozen=True)
class JobTexts:
    """A rerank job's distinct texts, for a scorer's ``prepare``: every candidate document with a text once and
    every query of the runs once, as blocks (Ray object refs of ``id, text`` Arrow tables, computed) whose
    content is fixed (the same in every run of the job), and the resources of the scorer pool the job sized
    to its cluster (``concurrency`` set)."""

    documents: list[Any]
    queries: list[Any]
    pool: Resources


def actor_placement() -> dict[str, Any]:
    """Where the calling actor runs: its node, the GPU Ray pinned it to (``CUDA_VISIBLE_DEVICES``), or none."""
    import os

    import ray

    context = ray.get_runtime_context()
    return {
        "node_id": context.get_node_id(),
        "gpu_ids": context.get_accelerator_ids().get("GPU", []),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "pid": os.getpid(),
    }


class Scorer(Protocol):
    """A loaded model that scores pairs: one score per pair, in input order, higher is more relevant."""

    def score(self, pairs: Pairs) -> np.ndarray: ...


class _Batched(Protocol):
    """What ``batched_scores`` needs of a scorer: its tokenizer, device and padded-token budget."""

    tokenizer: Any
    device: Any
    token_budget: int


def device_and_dtype(dtype: str) -> tuple[Any, Any]:
    """The device, and bfloat16 on a GPU / float32 on the CPU unless the config names a dtype."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dtype == "auto":
        return device, torch.bfloat16 if device.type == "cuda" else torch.float32
    return device, getattr(torch, dtype)


def _load_causal_lm(model: str, dtype: str) -> tuple[Any, Any, Any]:
    """Device, tokenizer (left padding: the last position is every prompt's own) and model of a causal LM."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device, torch_dtype = device_and_dtype(dtype)
    path = resolve_model(model)
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return device, tokenizer, AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(device).eval()


class CrossEncoderScorer:
    def __init__(self, config: CrossEncoderConfig, prepared: Any = None) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.device, dtype = device_and_dtype(config.dtype)
        path = resolve_model(config.model)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype).to(self.device).eval()
        self.max_length = config.max_length
        self.token_budget = config.token_budget or TOKEN_BUDGET[self.device.type]

    def score(self, pairs: Pairs) -> np.ndarray:
        encoded = self.tokenizer(pairs.queries, pairs.documents, truncation="longest_first", max_length=self.max_length)
        return _batched_scores(self, encoded, self._logits)

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

    def __init__(self, config: CausalYesNoConfig, prepared: Any = None) -> None:
        self.device, self.tokenizer, self.model = _load_causal_lm(config.model, config.dtype)
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

    def score(self, pairs: Pairs) -> np.ndarray:
        ids = [self.prompt_ids(q, d) for q, d in zip(pairs.queries, pairs.documents, strict=True)]
        return _batched_scores(self, {"input_ids": ids}, self._yes_probability)

    def _yes_probability(self, padded: dict[str, Any]) -> np.ndarray:
        import torch

        mask = padded["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            last = self.model(**padded, position_ids=positions).logits[:, -1, :].float()
        pair = torch.stack([last[:, self.no], last[:, self.yes]], dim=1)
        return torch.softmax(pair, dim=1)[:, 1].cpu().numpy()


class FirstListwiseScorer:
    """Lists (a query's candidates in input order) are reranked by sliding windows; a window's order comes
    from one forward pass (the logits of the labels at the first generated position, not a generated
    permutation). One query's windows run in sequence, each on the previous one's result; the windows of
    different queries run together in batches. The score of a candidate is its list length minus its final
    position, so higher is better, as for every scorer."""

    def __init__(self, config: FirstListwiseConfig, prepared: Any = None) -> None:
        self.device, self.tokenizer, self.model = _load_causal_lm(config.model, config.dtype)
        self.config = config
        self.token_budget = config.token_budget or TOKEN_BUDGET[self.device.type]
        self.labels, self.label_ids = self._single_token_labels(
            LABELS if config.full_window else LABELS[: config.window]
        )
        if len(self.labels) < config.window:
            raise ConfigError(
                f"scorer.model: {config.model}: the labels A..{LABELS[config.window - 1]} are not single tokens"
            )
        self.context = getattr(self.model.config, "max_position_embeddings", None) or 1 << 30

    def score(self, pairs: Pairs) -> np.ndarray:
        queries, documents = pairs.queries, pairs.documents
        orders = [list(range(start, end)) for start, end in list_bounds(pairs.lists)]
        passages = [self.tokenizer.encode(d, add_special_tokens=False)[: self.config.passage_tokens] for d in documents]

        def rank_windows(requests: list[tuple[int, list[int]]]) -> list[list[int]]:
            prompts = [self.prompt_ids(queries[orders[i][0]], [passages[row] for row in rows]) for i, rows in requests]
            logits = _batched_scores(self, {"input_ids": prompts}, self._label_logits, width=len(self.labels))
            return [list(np.argsort(-logits[n, : len(rows)], kind="stable")) for n, (_, rows) in enumerate(requests)]

        windows = [self.window_for(queries[order[0]], [passages[row] for row in order]) for order in orders]
        final = slide(orders, windows, self.config.stride, rank_windows)
        scores = np.zeros(len(documents), dtype=np.float32)
        for order in final:
            scores[order] = len(order) - np.arange(len(order))
        return scores

    def _single_token_labels(self, labels: list[str]) -> tuple[list[str], list[int]]:
        """The longest prefix of ``labels`` that the tokenizer holds as distinct single tokens, and their ids."""
        ids: list[int] = []
        for label in labels:
            token = self.tokenizer.convert_tokens_to_ids(label)
            if token is None or token == self.tokenizer.unk_token_id or token in ids:
                break
            ids.append(token)
        return labels[: len(ids)], ids

    def window_for(self, query: str, passages: list[list[int]]) -> int:
        """The list's window: the whole list with ``full_window`` where it has a label per passage and its
        prompt fits the model's context, else ``window``."""
        whole = len(passages)
        if (
            self.config.full_window
            and whole <= len(self.labels)
            and len(self.prompt_ids(query, passages)) <= self.context
        ):
            return max(whole, 1)
        return self.config.window

    def prompt_ids(self, query: str, passages: list[list[int]]) -> list[int]:
        encode = lambda text: self.tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
        ids = encode(f"Search query: {query}\nRank the {len(passages)} passages below by relevance to the query.\n")
        for label, passage in zip(self.labels, passages, strict=False):
            ids += encode(f"[{label}] ") + passage + encode("\n")
        return ids + encode("The most relevant passage is [")

    def _label_logits(self, padded: dict[str, Any]) -> np.ndarray:
        import torch

        positions = (padded["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            last = self.model(**padded, position_ids=positions).logits[:, -1, :].float()
        return last[:, self.label_ids].cpu().numpy()


def window_plan(length: int, window: int, stride: int) -> list[tuple[int, int]]:
    """``(start, end)`` of each window, from the bottom of a list of ``length`` to the top (RankGPT, FIRST)."""
    if length <= window:
        return [(0, length)]
    plan, end = [], length
    while True:
        start = max(0, end - window)
        plan.append((start, end))
        if start == 0:
            return plan
        end -= stride


RankWindows = Callable[[list[tuple[int, list[int]]]], list[list[int]]]


def slide(orders: list[list[int]], windows: list[int], stride: int, rank_windows: RankWindows) -> list[list[int]]:
    """Rerank each list by its windows (list i's of ``windows[i]`` passages); step k of every list goes to
    ``rank_windows`` in one call, as ``(list number, rows in the window)``, and comes back as each window's new
    order (positions in it)."""
    orders = [list(order) for order in orders]
    plans = [window_plan(len(order), window, stride) for order, window in zip(orders, windows, strict=True)]
    for step in range(max((len(plan) for plan in plans), default=0)):
        requests = [(i, orders[i][plan[step][0] : plan[step][1]]) for i, plan in enumerate(plans) if step < len(plan)]
        for (i, rows), new_order in zip(requests, rank_windows(requests), strict=True):
            start, end = plans[i][step]
            orders[i][start:end] = [rows[position] for position in new_order]
    return orders


def _batched_scores(
    scorer: _Batched,
    encoded: dict[str, list[list[int]]],
    forward: Callable[[dict[str, Any]], np.ndarray],
    width: int = 0,
) -> np.ndarray:
    """``forward`` over token-budget batches of the tokenized inputs (sorted by length), back in input order
    (one score per input, or ``width`` of them)."""
    ids = encoded["input_ids"]
    lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
    scores = np.zeros((len(ids), width) if width else len(ids), dtype=np.float32)
    for batch in token_budget_batches(lengths, scorer.token_budget):
        rows = {key: [values[i] for i in batch] for key, values in encoded.items()}
        padded = scorer.tokenizer.pad(rows, return_tensors="pt").to(scorer.device)
        scores[batch] = forward(dict(padded))
    return scores
