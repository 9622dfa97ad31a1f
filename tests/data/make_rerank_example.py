"""Build the rerank example (configs/rerank/) from the bundled sample: English UDHR articles as queries, the
same articles in French, German and Russian as the corpus, a shuffled run with one docid per query that the
corpus lacks, and qrels (relevant = the same article).

    python tests/data/make_rerank_example.py configs/rerank
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import write_rerank_task  # noqa: E402

if __name__ == "__main__":
    write_rerank_task(Path(sys.argv[1]))
