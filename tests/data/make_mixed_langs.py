"""Build tests/data/mixed_langs.jsonl: documents of UDHR articles in a main language with paragraphs of
another, at several shares of characters, from ../shared/data/udhr.jsonl.zst.

    python tests/data/make_mixed_langs.py

Each record: ``id``, ``text`` (one article per line), ``paragraph_langs`` (the language of each line),
``majority`` (the language of most characters) and ``lang_mix`` (the share of characters, newlines left
out, in the other language). The other language's paragraphs come first, so the first characters of a document
belong to the language of fewer characters in half of them: where whole-document language ID goes wrong.
Pure documents (mix 0) are in it too.
"""

from __future__ import annotations

import json
from pathlib import Path

import zstandard

HERE = Path(__file__).resolve().parent
UDHR = HERE.parent.parent.parent / "shared" / "data" / "udhr.jsonl.zst"
CODES = {"da": "dan_Latn", "en": "eng_Latn", "fi": "fin_Latn", "sv": "swe_Latn", "de-1996": "deu_Latn",
         "fr": "fra_Latn", "ru": "rus_Cyrl", "zh": "zho_Hans", "hr": "hrv_Latn"}  # fmt: skip
PAIRS = [("da", "en"), ("hr", "en"), ("zh", "en"), ("fi", "sv"), ("de-1996", "fr"), ("ru", "en")]
SHARES = (0.1, 0.25, 0.4, 0.65)  # of the other language's characters (about: whole paragraphs, within 0.03)
CLOSE = 0.03
MAIN_ARTICLES = range(1, 9)


def articles() -> dict[str, dict[int, list[str]]]:
    """The paragraphs of each article (the title line left out) by language and number."""
    found: dict[str, dict[int, list[str]]] = {code: {} for code in CODES}
    body = zstandard.ZstdDecompressor().stream_reader(UDHR.open("rb")).read().decode("utf-8")
    for line in body.splitlines():
        record = json.loads(line)
        if record["bcp47"] in found and record["section"].startswith("article-"):
            paragraphs = [p.strip() for p in record["text"].split("\n")[1:] if p.strip()]
            found[record["bcp47"]][int(record["section"].split("-")[1])] = paragraphs
    return found


def document(main: list[str], other: list[str], a: str, b: str) -> dict[str, object]:
    lines = other + main
    langs = [CODES[b]] * len(other) + [CODES[a]] * len(main)
    share = sum(map(len, other)) / sum(map(len, lines))
    return {
        "text": "\n".join(lines),
        "paragraph_langs": langs,
        "lang_mix": round(min(share, 1 - share), 4),
        "majority": CODES[b] if share > 0.5 else CODES[a],
    }


def other_paragraphs(pool: dict[int, list[str]], main_chars: int, share: float) -> list[str]:
    """Paragraphs of the other language's articles, from article 10 on, until they hold ``share`` of the
    characters (within ``CLOSE``); a paragraph that would overshoot is passed over."""
    chosen: list[str] = []
    for paragraph in (p for n in sorted(pool) if n >= 10 for p in pool[n]):
        other = sum(map(len, chosen))
        if other / (main_chars + other) >= share - CLOSE:
            break
        if (other + len(paragraph)) / (main_chars + other + len(paragraph)) <= share + CLOSE:
            chosen.append(paragraph)
    return chosen


def main() -> None:
    texts = articles()
    records = []
    for a, b in PAIRS:
        main_lines = [" ".join(texts[a][n]) for n in MAIN_ARTICLES]
        records.append({"id": f"{a}-pure", **document(main_lines, [], a, b)})
        for share in SHARES:
            other = other_paragraphs(texts[b], sum(map(len, main_lines)), share)
            records.append({"id": f"{a}-{b}-{share}", **document(main_lines, other, a, b)})
    out = HERE / "mixed_langs.jsonl"
    out.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8")
    print(f"{len(records)} documents -> {out}")


if __name__ == "__main__":
    main()
