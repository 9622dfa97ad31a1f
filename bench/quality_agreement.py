"""How closely the fast quality engine agrees with datatrove's filters, language by language.

    python bench/quality_agreement.py [--data ../shared/data/hplt-v2-excerpts] [--limit 0]

For every excerpt file whose language the fast engine computes itself (``fast_language``), the documents
are judged by ``engine: datatrove`` (one by one) and by the fast engine's measures and rules (the batch at
once), filter mode, the four rules, each language with its own thresholds. Prints per language: keep/drop
agreement, drop-reason agreement over all documents and the first failing rule over the dropped ones; then
the totals, the CPU time of each, and the most frequent disagreements (datatrove's reason, the fast one's,
examples as file:index). docs/quality.md reports its numbers.
"""

from __future__ import annotations

import collections
import json
import time

import numpy as np
import pyarrow as pa
import zstandard
from common import arguments
from datatrove.utils.word_tokenizers import WhitespaceTokenizer

from shardflow.operators.quality import QualityConfig, QualityFilter, fast_language, unspaced, word_tokenizer
from shardflow.operators.quality_fast import Settings, measure, rule_failures
from shardflow.operators.quality_rules import load_thresholds

FILTERS = ["gopher_repetition", "gopher_quality", "c4", "fineweb"]


def read(path) -> list[str]:
    with open(path, "rb") as stream:
        body = zstandard.ZstdDecompressor().stream_reader(stream).read().decode()
    return [json.loads(line)["text"] for line in body.splitlines() if line.strip()]


def fast_reasons(docs: list[str], lang: str) -> list[str]:
    thresholds = load_thresholds(lang, None)
    everyone = np.arange(len(docs))
    settings = Settings(
        languages=np.full(len(docs), fast_language(lang)),
        regex_sentences=np.full(len(docs), isinstance(word_tokenizer(lang), WhitespaceTokenizer)),
        min_words_per_line=np.full(len(docs), 0 if unspaced(lang) else 3),
        stopwords={tuple(thresholds.stopwords): everyone} if thresholds.stopwords else {},
        top_ns=tuple(n for n, _ in thresholds.top_n_grams),
        dup_ns=tuple(n for n, _ in thresholds.dup_n_grams),
    )
    failures = rule_failures(measure(pa.array(docs), settings), thresholds, everyone, FILTERS)
    reasons = []
    for i in range(len(docs)):
        reasons.append(next((f"{name}.{failures[name][i]}" for name in FILTERS if failures[name][i]), ""))
    return reasons


def main() -> None:
    args = arguments(__doc__, limit=(int, 0, "documents per language (0: all)"))
    reference_stage = QualityFilter(QualityConfig(mode="filter", filters=FILTERS, engine="datatrove"))
    totals = collections.Counter()
    pairs: collections.Counter = collections.Counter()
    examples = collections.defaultdict(list)
    for path in sorted(args.data.glob("*.jsonl.zst")):
        lang = path.name.split(".")[0]
        if not fast_language(lang):
            continue
        docs = read(path)[: args.limit or None]
        started = time.process_time()
        reference = [reference_stage.judge(text, lang, None)["reason"] or "" for text in docs]
        totals["datatrove_s"] += time.process_time() - started
        started = time.process_time()
        fast = fast_reasons(docs, lang)
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
