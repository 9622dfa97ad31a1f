"""Benchmark: shardflow's cross-encoder scorer vs sentence-transformers ``CrossEncoder.predict``, same pairs.

    pip install -e '.[bench]' && python bench/rerank.py [--queries 30] [--docs-per-query 20]

Model: no cross-encoder can be downloaded here, so the benchmark makes one of the size people use
(multilingual-e5-small's 12-layer, 384-wide encoder, as in MiniLM rerankers) with a one-logit head (seeded),
saved once; both tools load that folder, so speed is what is compared (the scores mean nothing, but must
agree). Pairs: ``--queries`` queries (the first 8 words of an HPLT excerpt) x ``--docs-per-query`` HPLT
excerpts taken round-robin over the languages, in run order (a query's candidates together), truncated at
512 tokens. sentence-transformers: ``predict(pairs, batch_size=32)`` in input order, as a user calls it;
shardflow: ``CrossEncoderScorer.score`` (tokenized once, sorted by length, token-budget batches). Goal (issue 6):
>= 1.5x pairs/s on the same machine.
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import arguments
from embed import mixed_documents
from sentence_transformers import CrossEncoder

from shardflow.operators.model_source import resolve_model
from shardflow.operators.rerank import CrossEncoderConfig, CrossEncoderScorer, Pairs


def make_cross_encoder(folder: Path) -> Path:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    source = resolve_model("default")
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


def as_pairs(queries: list[str], documents: list[str]) -> Pairs:
    """Pointwise pairs: each its own list."""
    return Pairs(queries, documents, np.arange(len(queries)), np.array(queries), np.array(documents))


def main() -> None:
    args = arguments(
        __doc__,
        queries=(int, 30, "queries"),
        docs_per_query=(int, 20, "candidates per query"),
        token_budget=(int, None, "shardflow's padded tokens per forward pass (default: the CPU's, 2048)"),
    )
    texts = mixed_documents(args.data, args.queries * (args.docs_per_query + 1))
    queries = [" ".join(text.split()[:8]) for text in texts[: args.queries]]
    documents = texts[args.queries :]
    pair_queries = [queries[i // args.docs_per_query] for i in range(len(documents))]
    folder = make_cross_encoder(Path(tempfile.mkdtemp(prefix="shardflow-bench-ce-")))

    ours = CrossEncoderScorer(CrossEncoderConfig(model=str(folder), max_length=512, token_budget=args.token_budget))
    theirs = CrossEncoder(str(folder), device="cpu", max_length=512)
    pairs = list(zip(pair_queries, documents, strict=True))
    tokens = sum(
        map(len, ours.tokenizer(pair_queries, documents, truncation="longest_first", max_length=512)["input_ids"])
    )
    print(
        f"{len(pairs)} pairs, {tokens:,} tokens ({tokens / len(pairs):.0f} per pair), {torch.get_num_threads()} threads"
    )

    theirs.predict(pairs[:8], batch_size=32, activation_fn=torch.nn.Identity())  # warm-up, both
    ours.score(as_pairs(pair_queries[:8], documents[:8]))
    started = time.perf_counter()
    st_scores = theirs.predict(pairs, batch_size=32, activation_fn=torch.nn.Identity(), show_progress_bar=False)
    st_seconds = time.perf_counter() - started
    started = time.perf_counter()
    sf_scores = ours.score(as_pairs(pair_queries, documents))
    sf_seconds = time.perf_counter() - started

    difference = np.abs(np.asarray(st_scores).ravel() - sf_scores).max()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10
    print("| tool | seconds | pairs/s | tokens/s |\n|---|---:|---:|---:|")
    for name, seconds in (
        ("sentence-transformers CrossEncoder.predict, batch 32, input order", st_seconds),
        (f"shardflow CrossEncoderScorer, {ours.token_budget} tokens/batch, sorted", sf_seconds),
    ):
        print(f"| {name} | {seconds:.1f} | {len(pairs) / seconds:.1f} | {tokens / seconds:,.0f} |")
    print(f"speed-up {st_seconds / sf_seconds:.2f}x; max |score difference| {difference:.2e}; peak RSS {peak:,} MiB")


if __name__ == "__main__":
    main()
