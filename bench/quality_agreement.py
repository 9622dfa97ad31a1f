"""How closely the fast quality engine agrees with datatrove's filters, language by language.

    python bench/quality_agreement.py [--data ../shared/data/hplt-v2-excerpts] [--limit 0]

For every excerpt file whose language the fast engine computes itself (``fast_language``), the documents
are judged by ``engine: datatrove`` (one by one) and by ``engine: fast`` (the batch at once), filter mode,
the four rules, each language with its own thresholds. Prints per language: keep/drop agreement,
drop-reason agreement over all documents and the first failing rule over the dropped ones; then the totals,
the CPU time of each, and the most frequent disagreements (datatrove's reason, the fast one's, examples as
file:index). docs/quality.md reports its numbers.
"""

from __future__ import annotations

import collections
import json
import time

import pyarrow as pa
import zstandard
from common import arguments

from shardflow.operators.quality import QualityConfig, QualityFilter, fast_language

FILTERS = ["gopher_repetition", "gopher_quality", "c4", "fineweb"]


def read(path) -> list[str]:
    with open(path, "rb") as stream:
        body = zstandard.ZstdDecompressor().stream_reader(stream).read().decode()
    return [json.loads(line)["text"] for line in body.splitlines() if line.strip()]


def first_reasons(stage: QualityFilter, docs: list[str], lang: str) -> list[str]:
    """The stage's first failing rule for each document ("" where it keeps it)."""
    verdicts = stage.judge_batch(pa.array(docs, pa.string()), [lang] * len(docs), [None] * len(docs))
    return [verdict["reason"] or "" for verdict in verdicts]


def main() -> None:
    args = arguments(__doc__, limit=(int, 0, "documents per language (0: all)"))
    reference_stage = QualityFilter(QualityConfig(mode="filter", filters=FILTERS, engine="datatrove", rules="fineweb2"))
    fast_stage = QualityFilter(QualityConfig(mode="filter", filters=FILTERS, engine="fast", rules="fineweb2"))
    totals = collections.Counter()
    pairs: collections.Counter = collections.Counter()
    examples = collections.defaultdict(list)
    for path in sorted(args.data.glob("*.jsonl.zst")):
        lang = path.name.split(".")[0]
        if not fast_language(lang):
            continue
        docs = read(path)[: args.limit or None]
        started = time.process_time()
        reference = first_reasons(reference_stage, docs, lang)  # datatrove's filters, one document at a time
        totals["datatrove_s"] += time.process_time() - started
        started = time.process_time()
        fast = first_reasons(fast_stage, docs, lang)
        totals["fast_s"] += time.process_time() - started
        keep = sum((a == "") == (b == "") for a, b in zip(fast, reference, strict=True))
        same = sum(a == b for a, b in zip(fast, reference, strict=True))
        dropped = [(a, b) for a, b in zip(fast, reference, strict=True) if b]
        first = sum(a == b for a, b in dropped)
        totals.update(docs=len(docs), keep=keep, dropped=len(dropped), first=first)
        for i, (a, b) in enumerate(zip(fast, reference, strict=True)):
            if a != b:
                pairs[(b, a)] += 1
                examples[(b, a)].append(f"{lang}:{i}")
        print(
            f"{lang} ({fast_language(lang)}): keep/drop {keep}/{len(docs)}, reason {same}/{len(docs)}, "
            f"first rule {first}/{len(dropped)}",
            flush=True,
        )
    print(
        f"TOTAL keep/drop {totals['keep']:,}/{totals['docs']:,} = {totals['keep'] / totals['docs']:.2%}; "
        f"first rule {totals['first']:,}/{totals['dropped']:,} = {totals['first'] / max(totals['dropped'], 1):.2%}"
    )
    print(f"CPU: datatrove {totals['datatrove_s']:.1f} s, fast {totals['fast_s']:.1f} s (tables built once included)")
    for (theirs, ours), count in pairs.most_common(20):
        print(f"{count:5} datatrove {theirs or 'kept'!r} fast {ours or 'kept'!r} e.g. {examples[(theirs, ours)][:3]}")


if __name__ == "__main__":
    main()
