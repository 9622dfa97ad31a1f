"""Benchmark: rerank quality (nDCG@10, RR@10) of the training-free combinations, on two cross-lingual sets.

    python bench/rerank_quality.py [--udhr ../shared/data/udhr.jsonl.zst] [--languages 12] [--articles 30]

Sets:
- ``example``: the bundled rerank example (``configs/rerank/``): 30 English UDHR articles as queries, the same
  articles in French, German and Russian as passages, a shuffled first stage (plus a docid the corpus lacks).
- ``udhr-xl``: English UDHR articles (``--articles``, headings cut: they carry the article number) as queries,
  the same articles in ``--languages`` other languages of several scripts as passages, and a BM25 first stage
  (shardflow's own ``kind: bm25`` over every query x passage pair), top 100.

Rows: the first stage; the embedding scorer (multilingual-e5-small, offline); it fused with the first stage
(rrf, and linear z-score at weight 0.8); with Rocchio feedback (3 docs, weight 0.5); BM25; and BM25 then the
embedding scorer fused with BM25's ranking (rrf). Every job is a real ``rerank`` on local Ray.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import tempfile
from pathlib import Path

import zstandard

from shardflow.config import validate
from shardflow.pipelines.rerank import RerankConfig, rerank

REPO = Path(__file__).resolve().parents[1]
LANGUAGES = (
    "fra",
    "deu_1996",
    "spa",
    "rus",
    "arb",
    "cmn_hans",
    "hin",
    "swh",
    "fin",
    "tur",
    "jpn",
    "pol",
    "ell_monotonic",
    "kor",
    "vie",
    "ind",
)
EMBEDDING = {"kind": "embedding"}
ROWS = {
    "first stage": None,
    "embedding": {"scorer": EMBEDDING},
    "embedding + rrf fusion (w 0.5)": {"scorer": EMBEDDING, "fusion": {"method": "rrf"}},
    "embedding + linear z-score fusion (w 0.8)": {
        "scorer": EMBEDDING,
        "fusion": {"method": "linear", "normalise": "zscore", "weight": 0.8},
    },
    "embedding + PRF (Rocchio, 3 docs, w 0.5)": {"scorer": {**EMBEDDING, "prf": {"docs": 3, "weight": 0.5}}},
    "bm25": {"scorer": {"kind": "bm25"}},
}


def udhr_set(udhr: Path, folder: Path, languages: int, articles: int) -> dict:
    """The ``udhr-xl`` set's files under ``folder`` and its first stage (a BM25 job over every pair)."""
    reader = zstandard.ZstdDecompressor().stream_reader(udhr.open("rb"))
    wanted = {"eng", *LANGUAGES[:languages]}
    texts = {}
    for line in io.TextIOWrapper(reader, encoding="utf-8"):
        row = json.loads(line)
        if row["udhr_code"] in wanted and row["section"].startswith("article-"):
            number = int(row["section"].split("-")[1])
            if number <= articles:
                texts[(row["udhr_code"], number)] = row["text"].split("\n", 1)[-1]
    folder.mkdir(parents=True)
    queries = [{"qid": f"a{n}", "text": texts[("eng", n)]} for n in range(1, articles + 1) if ("eng", n) in texts]
    passages = [{"doc_id": f"{lang}-{n}", "text": text} for (lang, n), text in sorted(texts.items()) if lang != "eng"]
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (folder / "corpus.jsonl").write_text("".join(json.dumps(p) + "\n" for p in passages))
    (folder / "qrels.txt").write_text(
        "".join(
            f"{q['qid']} 0 {p['doc_id']} 1\n"
            for q in queries
            for p in passages
            if p["doc_id"].endswith(f"-{q['qid'][1:]}")
        )
    )
    every = []
    for query in queries:
        order = [p["doc_id"] for p in passages]
        random.Random(query["qid"]).shuffle(order)
        every += [f"{query['qid']} Q0 {docid} {rank} 0 all\n" for rank, docid in enumerate(order, 1)]
    (folder / "all.run").write_text("".join(every))
    inputs = {
        "queries": str(folder / "queries.jsonl"),
        "corpus": {"path": str(folder / "corpus.jsonl")},
        "qrels": str(folder / "qrels.txt"),
    }
    job(
        inputs | {"runs": [str(folder / "all.run")], "top_k": len(passages)},
        {"scorer": {"kind": "bm25"}},
        folder / "bm25-all",
    )
    (folder / "bm25.run").write_text((folder / "bm25-all" / "all.run").read_text())
    print(f"udhr-xl: {len(queries)} queries, {len(passages)} passages in {languages} languages")
    return inputs | {"runs": [str(folder / "bm25.run")], "top_k": 100}


def example_set() -> dict:
    folder = REPO / "configs" / "rerank"
    return {
        "runs": [str(folder / "shuffled.run")],
        "queries": str(folder / "queries.jsonl"),
        "corpus": {"path": str(folder / "corpus.jsonl")},
        "qrels": str(folder / "qrels.txt"),
        "top_k": 100,
    }


def job(inputs: dict, settings: dict, out: Path) -> dict:
    """One rerank job; the metrics of its only run (before and after)."""
    config = validate(
        {**inputs, **settings, "chunks": 4, "output": {"path": str(out)}, "ray": {"progress": False}}, RerankConfig
    )
    summary = rerank(config, progress=False)
    return next(iter(summary["runs"].values()))["metrics"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--udhr", type=Path, default=REPO.parent / "shared" / "data" / "udhr.jsonl.zst")
    parser.add_argument("--languages", type=int, default=12)
    parser.add_argument("--articles", type=int, default=30)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="shardflow-bench-rerank-quality-"))
    sets = {"example": example_set(), "udhr-xl": udhr_set(args.udhr, folder / "udhr-xl", args.languages, args.articles)}
    table: dict[str, dict[str, dict]] = {}
    for name, inputs in sets.items():
        for row, settings in ROWS.items():
            if settings is not None:
                metrics = job(inputs, settings, folder / name / row.replace(" ", "_"))
                table.setdefault("first stage", {})[name] = metrics["before"]
                table.setdefault(row, {})[name] = metrics["after"]
        bm25_run = folder / name / "bm25" / f"{Path(inputs['runs'][0]).name.split('.')[0]}.run"
        chained = {**inputs, "runs": [str(bm25_run)]}
        metrics = job(chained, {"scorer": EMBEDDING, "fusion": {"method": "rrf"}}, folder / name / "bm25+embedding")
        table.setdefault("bm25, then embedding + rrf fusion with bm25", {})[name] = metrics["after"]
    print(
        "| reranking | example nDCG@10 | example RR@10 | udhr-xl nDCG@10 | udhr-xl RR@10 |\n|---|---:|---:|---:|---:|"
    )
    for row, by_set in table.items():
        cells = [f"{by_set[s][m]:.3f}" for s in sets for m in ("nDCG@10", "RR@10")]
        print(f"| {row} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
