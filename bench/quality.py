"""Benchmark: the quality rules three ways, one process each, side by side, in documents per CPU-second.

    python bench/quality.py [--data ../shared/data/hplt-v2-excerpts] [--repeat 1] [--memory-docs 200000]

Documents: the HPLT v2 excerpts (~1 KB, 169 languages), each with HPLT's own language label as ``lang``, and
long documents made from them (10 excerpts of one language joined by newlines, ~5 KB, as HPLT v1.2's full
pages). The same thresholds and tokenizers for all three:

- plain datatrove: datatrove's four filters per language, ``filter`` on each document until one fails, the
  way a datatrove pipeline runs them;
- ``engine: datatrove``: ``QualityFilter`` on batches of 1,000 with datatrove's filters (the reference);
- ``engine: fast``: ``QualityFilter`` on the same batches, every measure computed for the batch at once.

Time is the process's CPU time (``time.process_time``), after a warm-up on the first document of each
language (tokenizers and tables are built once per process and language, as a corpus run's actors do).
Verdicts are compared with ``engine: datatrove``. Then the fast engine runs ``--memory-docs`` documents
(the excerpts again and again) and reports its RSS after 10k and at the end
(``--memory-engine datatrove`` for datatrove's; ``--memory-only 1`` for that check alone, in a fresh process).
Goal (issue 17): fast >= 10x plain datatrove per core, verdicts >= 99% the same.
"""

from __future__ import annotations

import os
import resource
import time
from functools import cache
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.compute as pc
from common import arguments
from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import get_filter_result

from shardflow.operators.quality import (
    QualityConfig,
    QualityFilter,
    fast_language,
    filters_for,
    load_thresholds,
    word_tokenizer,
)
from shardflow.operators.readers import ReaderConfig, shard_rows
from shardflow.schema import LANGID_FIELDS, READ_SCHEMA
from shardflow.shards import list_shards
from shardflow.storage import Location

SCHEMA = pa.schema(list(READ_SCHEMA) + LANGID_FIELDS)
BATCH = 1000
FILTERS = ["gopher_repetition", "gopher_quality", "c4", "fineweb"]


def load_documents(folder: Path) -> pa.Table:
    config = ReaderConfig(paths=[str(folder)])
    rows = []
    for shard in list_shards([Location(path) for path in config.paths]):
        for row in shard_rows(shard, config):
            if row.get("quarantine_reason") is None:
                rows.append({**row, "lang": row["source_lang"][0], "lang_score": 1.0})
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    return table.filter(pc.is_null(table["quarantine_reason"]))


def long_documents(docs: pa.Table, per_doc: int = 10) -> pa.Table:
    """Each run of ``per_doc`` excerpts of one language joined into one document (~5 KB)."""
    rows = []
    for lang in sorted(set(docs["lang"].to_pylist())):
        texts = docs.filter(pc.equal(docs["lang"], lang))["text"].to_pylist()
        for start in range(0, len(texts) - per_doc + 1, per_doc):
            rows.append({"text": "\n".join(texts[start : start + per_doc]), "lang": lang, "lang_score": 1.0})
    return pa.Table.from_pylist(rows, schema=SCHEMA)


@cache
def plain_filters(lang: str) -> dict[str, object]:
    """The same filters and thresholds, each splitting words itself, as datatrove runs them."""
    return filters_for(load_thresholds(lang, None), lang, word_tokenizer(lang))


def warm_up(docs: pa.Table) -> pa.Table:
    """The first document of each language: each engine builds its tokenizers and tables once per process
    and language (seconds for some: spaCy's Indonesian pipeline), which a corpus run pays once per actor."""
    langs = docs["lang"].to_pylist()
    first = sorted({lang: i for i, lang in reversed(list(enumerate(langs)))}.values())
    return docs.take(pa.array(first, pa.int64()))


def plain_datatrove(docs: pa.Table) -> tuple[list[float], list[bool]]:
    """Each document's CPU seconds and verdict."""
    kept, seconds = [], []
    first = warm_up(docs)
    for text, lang in zip(first["text"].to_pylist(), first["lang"].to_pylist(), strict=True):
        _judge_plain(text, lang)  # the tokenizers load on first use
    for text, lang in zip(docs["text"].to_pylist(), docs["lang"].to_pylist(), strict=True):
        started = time.process_time()
        kept.append(_judge_plain(text, lang))
        seconds.append(time.process_time() - started)
    return seconds, kept


def _judge_plain(text: str, lang: str) -> bool:
    for rule in plain_filters(lang).values():
        passed, _ = get_filter_result(rule.filter(Document(text=text, id="")))
        if not passed:
            return False
    return True


def engine(docs: pa.Table, name: str) -> tuple[float, list[str | None]]:
    stage = QualityFilter(QualityConfig(filters=FILTERS, engine=name, rules="fineweb2"))
    stage(warm_up(docs))
    reasons: list[str | None] = []
    started = time.process_time()
    for offset in range(0, docs.num_rows, BATCH):
        reasons += stage(docs.slice(offset, BATCH))["drop_reason"].to_pylist()
    return time.process_time() - started, reasons


def flat_memory(docs: pa.Table, total: int, name: str = "fast") -> tuple[float, float, float]:
    """RSS (MiB) of a process running engine ``name`` after 10k documents, after one pass over ``docs``
    (every language seen: tokenizers, tables and dictionaries are built once per language, so the 10k
    figure is not yet the plateau when documents come language by language) and after ``total``."""
    stage = QualityFilter(QualityConfig(filters=FILTERS, engine=name, rules="fineweb2"))
    process = psutil.Process()
    seen, early, first_pass = 0, 0.0, 0.0
    while seen < total:
        for offset in range(0, docs.num_rows, BATCH):
            stage(docs.slice(offset, BATCH))
            seen += min(BATCH, docs.num_rows - offset)
            if not early and seen >= 10_000:
                early = process.memory_info().rss / 2**20
            if seen >= total:
                break
        first_pass = first_pass or process.memory_info().rss / 2**20
    return early, first_pass, process.memory_info().rss / 2**20


def compare(title: str, docs: pa.Table) -> None:
    plain_each, plain_kept = plain_datatrove(docs)
    plain = sum(plain_each)
    print(f"{title}: {docs.num_rows:,} documents, {pc.mean(pc.utf8_length(docs['text'])).as_py():,.0f} chars each")
    print(f"  plain datatrove     : {docs.num_rows / plain:8,.0f} docs per CPU-s  ({plain:.1f} s)")
    reference_seconds, reference = engine(docs, "datatrove")
    fast_seconds, fast = engine(docs, "fast")
    assert [r is None for r in reference] == plain_kept, "engine: datatrove must be datatrove"
    for name, seconds in (("engine: datatrove", reference_seconds), ("engine: fast", fast_seconds)):
        print(f"  {name:<20}: {docs.num_rows / seconds:8,.0f} docs per CPU-s  = {plain / seconds:5.2f}x plain")
    same = sum((a is None) == (b is None) for a, b in zip(fast, reference, strict=True))
    dropped = [(a, b) for a, b in zip(fast, reference, strict=True) if b is not None]
    first = sum(a == b for a, b in dropped)
    print(
        f"  fast vs datatrove   : keep/drop {same:,}/{len(fast):,} = {same / len(fast):.2%}; "
        f"first rule {first:,}/{len(dropped):,} = {first / max(len(dropped), 1):.2%} of the dropped"
    )
    own = [fast_language(lang) is not None for lang in docs["lang"].to_pylist()]
    subset = docs.filter(pa.array(own))
    own_plain = sum(seconds for seconds, mine in zip(plain_each, own, strict=True) if mine)
    own_fast, _ = engine(subset, "fast")
    print(
        f"  of which the {len(set(subset['lang'].to_pylist()))} languages the fast engine computes itself "
        f"({subset.num_rows:,} docs): plain {subset.num_rows / own_plain:,.0f}, fast "
        f"{subset.num_rows / own_fast:,.0f} docs per CPU-s = {own_plain / own_fast:.2f}x; the rest "
        f"({docs.num_rows - subset.num_rows:,} docs, datatrove's filters in both) "
        f"{(plain - own_plain) / plain:.0%} of plain's time"
    )


def main() -> None:
    args = arguments(
        __doc__,
        memory_docs=(int, 200_000, "documents the memory check runs (0: skip)"),
        memory_engine=(str, "fast", "the engine the memory check runs: fast or datatrove"),
        memory_only=(int, 0, "1: only the memory check, in a process that ran nothing else"),
    )
    docs = load_documents(args.data)
    print(f"{docs.num_rows:,} documents in {len(set(docs['lang'].to_pylist()))} languages; {os.cpu_count()} CPUs")
    if not args.memory_only:
        compare("HPLT v2 excerpts", docs)
        compare("long documents (10 excerpts each)", long_documents(docs))
    if args.memory_docs:
        early, first_pass, late = flat_memory(docs, args.memory_docs, args.memory_engine)
        print(
            f"{args.memory_engine} engine RSS: {early:,.0f} MiB after 10k docs, {first_pass:,.0f} MiB after "
            f"{docs.num_rows:,} (every language), {late:,.0f} MiB after {args.memory_docs:,} "
            f"({late / first_pass - 1:+.1%})"
        )
    print(f"peak RSS             : {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")


if __name__ == "__main__":
    main()
