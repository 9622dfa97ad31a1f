"""In-context reranking (ICR; Chen et al. 2024, "Attention in Large Language Models Yields Efficient Zero-Shot
Re-Rankers"): a causal LM reads a window of passages and then the query; a passage's score is the attention
mass that flows from the query's tokens to the passage's tokens, summed over every layer and head, minus the
same mass in the same pass with a content-free query (``N/A``), which removes the model's bias toward
positions and passage lengths. No generation and no training: two forward passes per window, whatever the
window's size, against one pass per window step for FIRST and one per pair for pointwise models.

Windows: a query's list is cut into consecutive windows of ``window`` passages (no sliding: every passage
is read once), each scored on its own; a list that fits (``window >= top_k``) is one window, as in the paper.
The windows (and their calibration passes) of all queries of a chunk are batched by a padded-token budget,
left-padded so that every prompt's query ends at the last position.

The attention weights are summed as each layer computes them (a hook on every ``self_attn`` module), so
only one layer's weights are alive at a time; the model is loaded with eager attention, which is what
returns them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field

from shardflow.config import StrictModel
from shardflow.errors import ConfigError
from shardflow.operators.embed import TOKEN_BUDGET, token_budget_batches
from shardflow.operators.model_source import resolve_model
from shardflow.operators.rerank import Pairs, device_and_dtype, list_bounds

__all__ = ["AttentionScorer", "AttentionScorerConfig", "Prompt"]

CONTENT_FREE = "N/A"


class AttentionScorerConfig(StrictModel):
    """ICR: attention from the query to each passage in one pass of a causal LM, calibrated."""

    kind: Literal["attention"] = "attention"
    model: str = Field(description="A causal LM (instruction-tuned works best): a local folder or a cached id.")
    window: int = Field(20, ge=1, description="Passages per prompt; a longer list is cut into consecutive windows.")
    passage_tokens: int = Field(200, ge=4, description="Each passage is cut to this many tokens.")
    token_budget: int | None = Field(None, ge=1, description="Padded tokens per pass; None: per device.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


@dataclass(frozen=True)
class Prompt:
    """One window's prompt: token ids, each passage's ``(start, end)`` and the query's ``(start, end)``."""

    ids: list[int]
    passages: list[tuple[int, int]]
    query: tuple[int, int]


class AttentionScorer:
    def __init__(self, config: AttentionScorerConfig, prepared: Any = None) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config
        self.device, dtype = device_and_dtype(config.dtype)
        path = resolve_model(config.model)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = (
            AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager").to(self.device).eval()
        )
        self.token_budget = config.token_budget or TOKEN_BUDGET[self.device.type]
        self.layers = [module for name, module in self.model.named_modules() if name.endswith("self_attn")]
        if not self.layers:
            raise ConfigError(f"scorer.model: {config.model}: no `self_attn` modules, whose weights ICR reads")

    def score(self, pairs: Pairs) -> np.ndarray:
        passages = [self.encode(document)[: self.config.passage_tokens] for document in pairs.documents]
        windows = [
            (start, min(start + self.config.window, end))
            for first, end in list_bounds(pairs.lists)
            for start in range(first, end, self.config.window)
        ]
        prompts = []
        for start, end in windows:
            for query in (pairs.queries[start], CONTENT_FREE):
                prompts.append(self.prompt(query, passages[start:end]))
        masses = self.passage_masses(prompts)
        scores = np.zeros(len(pairs.documents), dtype=np.float64)
        for number, (start, end) in enumerate(windows):
            scores[start:end] = masses[2 * number] - masses[2 * number + 1]
        return scores

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def prompt(self, query: str, passages: list[list[int]]) -> Prompt:
        """``Here are some paragraphs: [1] ... [n] ... Please answer the query based on them. Query: <query>``,
        with each passage's span and the query's."""
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        ids = bos + self.encode("Here are some paragraphs:\n\n")
        spans = []
        for number, passage in enumerate(passages, 1):
            ids += self.encode(f"[{number}] ")
            spans.append((len(ids), len(ids) + len(passage)))
            ids += passage + self.encode("\n")
        ids += self.encode("\nPlease answer the following query based on the above paragraphs.\n\nQuery: ")
        query = self.encode(query)
        return Prompt(ids + query, spans, (len(ids), len(ids) + len(query)))

    def passage_masses(self, prompts: list[Prompt]) -> list[np.ndarray]:
        """Per prompt, the attention mass from its query's tokens to each of its passages, over all layers and
        heads; prompts batched by the token budget, longest first."""
        lengths = np.array([len(prompt.ids) for prompt in prompts], dtype=np.int64)
        masses: list[np.ndarray] = [np.zeros(0)] * len(prompts)
        for batch in token_budget_batches(lengths, self.token_budget):
            received = self._received([prompts[i] for i in batch])
            for row, i in enumerate(batch):
                masses[i] = np.array([received[row, start:end].sum() for start, end in prompts[i].passages])
        return masses

    def _received(self, prompts: list[Prompt]) -> np.ndarray:
        """For a batch of prompts (left-padded to one length): per position, the attention it receives from
        the prompt's query tokens, summed over layers and heads."""
        import torch

        width = max(len(prompt.ids) for prompt in prompts)
        ids = torch.full((len(prompts), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        queries = torch.zeros((len(prompts), width), dtype=torch.float32)
        for row, prompt in enumerate(prompts):
            pad = width - len(prompt.ids)
            ids[row, pad:] = torch.tensor(prompt.ids)
            mask[row, pad:] = 1
            queries[row, pad + prompt.query[0] : pad + prompt.query[1]] = 1.0
        received = torch.zeros((len(prompts), width), dtype=torch.float32, device=self.device)
        tail = max(prompt.query[1] - prompt.query[0] for prompt in prompts)  # left padding: queries end last
        queries = queries[:, width - tail :].to(self.device)

        def add(_module: Any, _inputs: Any, output: Any) -> None:
            if not isinstance(output, tuple) or len(output) < 2 or output[1] is None:
                raise ConfigError(f"scorer.model: {self.config.model}: its attention returns no weights")
            weights = output[1][:, :, width - tail :, :].float()  # batch, heads, from (the query rows), to
            received.add_(torch.einsum("bhft,bf->bt", weights, queries))

        hooks = [layer.register_forward_hook(add) for layer in self.layers]
        try:
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                self.model.base_model(  # the decoder alone: the scores need no logits
                    input_ids=ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    position_ids=positions.to(self.device),
                )
        finally:
            for hook in hooks:
                hook.remove()
        offsets = width - np.array([len(prompt.ids) for prompt in prompts])
        found = received.cpu().numpy()
        return np.stack([np.roll(found[row], -offset) for row, offset in enumerate(offsets)])
