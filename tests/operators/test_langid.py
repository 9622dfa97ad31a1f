"""Language ID: accuracy on real UDHR text, GlotLID-style models, keep-list and minimum scores."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from shardflow.errors import ConfigError
from shardflow.operators.langid import NOISE, UNDETERMINED, LangIdConfig, LanguageId
from shardflow.operators.readers import map_record
from shardflow.schema import READ_SCHEMA
from shardflow.storage import Location, StorageConfig
from support import sample_records, write_fasttext_model

STORAGE = StorageConfig()
LARGEST_25 = {
    "eng_Latn",
    "zho_Hans",
    "hin_Deva",
    "spa_Latn",
    "fra_Latn",
    "arb_Arab",
    "ben_Beng",
    "rus_Cyrl",
    "por_Latn",
    "urd_Arab",
    "ind_Latn",
    "deu_Latn",
    "jpn_Jpan",
    "mar_Deva",
    "tel_Telu",
    "tur_Latn",
    "tam_Taml",
    "vie_Latn",
    "kor_Hang",
    "ita_Latn",
    "tha_Thai",
    "guj_Gujr",
    "pes_Arab",
    "pol_Latn",
    "ukr_Cyrl",
}


def batch(texts: list[str], **columns: list) -> pa.Table:
    rows = [{"doc_id": str(i), "text": t, "source": f"mem:{i + 1}"} for i, t in enumerate(texts)]
    for name, values in columns.items():
        for row, value in zip(rows, values, strict=True):
            row[name] = value
    return pa.Table.from_pylist(rows, schema=READ_SCHEMA)


def test_accuracy_on_the_25_largest_languages_of_the_sample() -> None:
    records = [r for r in sample_records() if r["lang"][0] in LARGEST_25]
    assert {r["lang"][0] for r in records} == LARGEST_25
    docs = batch([map_record(r, "auto", 1 << 20)["text"] for r in records])
    found = LanguageId(LangIdConfig(), STORAGE)(docs)["lang"].to_pylist()
    misses = Counter((r["lang"][0], lang) for r, lang in zip(records, found, strict=True) if r["lang"][0] != lang)
    accuracy = 1 - sum(misses.values()) / len(records)
    assert accuracy >= 0.95, f"accuracy {accuracy:.3f}; misses {misses.most_common(8)}"


def test_outputs_scores_and_top_k_alternatives() -> None:
    out = LanguageId(LangIdConfig(top_k=3), STORAGE)(batch(["Tämä on suomenkielinen lause kielentunnistusta varten."]))
    (top,) = out["lang_topk"].to_pylist()
    assert out["lang"][0].as_py() == "fin_Latn" == top[0]["lang"] and len(top) == 3
    assert abs(out["lang_score"][0].as_py() - top[0]["score"]) < 1e-6 and top[0]["score"] >= top[1]["score"]


def test_glotlid_style_model_from_s3_labels_pass_through(tmp_path: Path, s3_storage) -> None:
    storage, bucket = s3_storage
    model = write_fasttext_model(
        tmp_path / "glotlid-tiny.bin",
        ["__label__fin_Latn", "__label__eng_Latn", "__label__cmn_Hani"],
        {"hyvää": [4, 0, 0], "päivää": [3, 0, 0], "hello": [0, 4, 0], "world": [0, 3, 0], "你好": [0, 0, 5]},
    )
    uri = f"s3://{bucket}/models/glotlid-tiny.bin"
    Location(uri, storage).put_bytes(model.read_bytes())
    LanguageId.preflight(LangIdConfig(model=uri), storage, "stages.0")
    op = LanguageId(LangIdConfig(model=uri, top_k=2), storage)
    out = op(batch(["hyvää päivää", "hello world", "你好", "zzz qqq"]))
    assert out["lang"].to_pylist() == ["fin_Latn", "eng_Latn", "cmn_Hani", "und_Zyyy"]
    assert out["lang_score"][0].as_py() > 0.9 and out["lang_score"][3].as_py() == 0.0


def test_keep_list_and_minimum_scores_drop_with_reasons(tmp_path: Path) -> None:
    model = write_fasttext_model(
        tmp_path / "m.bin",
        ["__label__fin_Latn", "__label__eng_Latn"],
        {"hyvää": [4, 0], "moi": [0.3, 0], "hello": [0, 4]},
    )
    config = LangIdConfig(model=str(model), keep=["fin_Latn"], min_score=0.5, min_score_per_lang={"fin_Latn": 0.9})
    out = LanguageId(config, STORAGE)(batch(["hyvää hyvää", "moi", "hello"]))
    assert out["drop_reason"].to_pylist() == [None, "langid:below_min_score", "langid:not_in_keep_list"]


def test_hostile_labels_of_a_model_never_name_a_path(tmp_path: Path) -> None:
    labels = ["__label__../../../../tmp/pwn", "__label__[/x]", "__label__a" + "b" * 100, "__label__fin_Latn"]
    words = {"hyökkäys": [5, 0, 0, 0], "markup": [0, 5, 0, 0], "pitkä": [0, 0, 5, 0], "hyvä": [0, 0, 0, 5]}
    model = write_fasttext_model(tmp_path / "hostile.bin", labels, words)
    out = LanguageId(LangIdConfig(model=str(model), top_k=1), STORAGE)(batch(["hyökkäys", "markup", "pitkä", "hyvä"]))
    langs = out["lang"].to_pylist()
    assert langs[3] == "fin_Latn" and all(re.fullmatch(r"[A-Za-z0-9_]{1,72}", lang) for lang in langs)
    assert langs[0].startswith("esc_" + b"../../../../tmp/pwn".hex())  # escaped, not lost
    assert len(set(langs)) == 4


def test_rows_out_of_play_are_passed_through_untouched(tmp_path: Path) -> None:
    docs = batch(
        ["Hyvää päivää kaikille", "x", "Good morning everyone"],
        quarantine_reason=[None, "invalid_json: x", None],
        drop_reason=[None, None, "earlier:stage"],
    )
    out = LanguageId(LangIdConfig(), STORAGE)(docs)
    assert out["lang"].to_pylist() == ["fin_Latn", None, None]
    assert out["drop_reason"].to_pylist() == [None, None, "earlier:stage"]
    assert out.num_rows == 3 and out.schema.names[: len(READ_SCHEMA)] == READ_SCHEMA.names


def test_missing_model_fails_before_the_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"stages.2.model: no such file: .*absent.bin"):
        LanguageId.preflight(LangIdConfig(model=str(tmp_path / "absent.bin")), STORAGE, "stages.2")


MIXED = Path(__file__).resolve().parents[1] / "data" / "mixed_langs.jsonl"


def mixed_documents() -> list[dict]:
    """Articles of the UDHR in one language with paragraphs of another first (tests/data/make_mixed_langs.py)."""
    return [json.loads(line) for line in MIXED.read_text(encoding="utf-8").splitlines()]


def reference_mix(lang: str, texts: list[str], labels: list[str], scores: list[float], min_score: float) -> float:
    """The share of the confident lines' characters labelled other than ``lang``, written plainly."""
    confident = [(len(t), label) for t, label, s in zip(texts, labels, scores, strict=True) if s >= min_score]
    return sum(n for n, label in confident if label != lang) / sum(n for n, _ in confident)


def test_a_mixed_document_takes_the_language_of_most_characters_and_measures_the_mix() -> None:
    records = mixed_documents()
    docs = batch([r["text"] for r in records])
    found = LanguageId(LangIdConfig(), STORAGE)(docs).to_pylist()
    whole = LanguageId(LangIdConfig(segments=False), STORAGE)(docs)["lang"].to_pylist()
    assert [doc["lang"] for doc in found] == [r["majority"] for r in records]
    # where the other language comes first, the whole-document label follows it
    assert sum(w == r["majority"] for w, r in zip(whole, records, strict=True)) < len(records)
    paragraphs = right = 0
    for record, doc in zip(records, found, strict=True):
        lines = record["text"].split("\n")
        assert len(doc["seg_langs"]) == len(doc["seg_scores"]) == len(lines)
        expected = reference_mix(doc["lang"], lines, doc["seg_langs"], doc["seg_scores"], 0.3)
        assert doc["lang_mix"] == pytest.approx(expected, abs=1e-6)
        if doc["seg_langs"] == record["paragraph_langs"]:  # the model named every paragraph's language
            assert abs(doc["lang_mix"] - record["lang_mix"]) <= 0.05, record["id"]
            right += 1
        paragraphs += sum(a == b for a, b in zip(doc["seg_langs"], record["paragraph_langs"], strict=True))
    assert right >= 15 and paragraphs >= 0.9 * sum(len(r["paragraph_langs"]) for r in records)
    pure = [doc for doc, r in zip(found, records, strict=True) if r["lang_mix"] == 0]
    assert [doc["lang"] for doc in pure] == [w for w, r in zip(whole, records, strict=True) if r["lang_mix"] == 0]


def test_on_pure_documents_the_label_is_today_s() -> None:
    texts = [map_record(r, "auto", 1 << 20)["text"] for r in sample_records() if r["lang"][0] in LARGEST_25]
    docs = batch(texts)
    by_segments = LanguageId(LangIdConfig(), STORAGE)(docs)["lang"].to_pylist()
    whole = LanguageId(LangIdConfig(segments=False), STORAGE)(docs)
    assert whole["seg_langs"].null_count == whole["lang_mix"].null_count == len(texts)
    same = sum(a == b for a, b in zip(by_segments, whole["lang"].to_pylist(), strict=True))
    assert same >= 0.98 * len(texts), f"{same} of {len(texts)}"


def test_short_lines_do_not_vote_and_noise_labels_map_to_zxx(tmp_path: Path) -> None:
    labels = ["__label__fin_Latn", "__label__zxx_Latn", "__label__und_Xsux", "__label__eng_Latn"]
    words = {"hyvää": [4, 0, 0, 0], "päivää": [3, 0, 0, 0], "ïðàâèëà": [0, 5, 0, 0], "𒀭𒀭𒀭𒀭𒀭𒀭𒀭𒀭𒀭𒀭": [0, 0, 6, 0]}
    words |= {"hello": [0, 0, 0, 4]}
    model = write_fasttext_model(tmp_path / "glotlid-tiny.bin", labels, words)
    noisy = "hyvää päivää\n" + "\n".join(["ïðàâèëà ïðàâèëà ïðàâèëà"] * 3) + "\n2024-01-01 12:00"
    cuneiform = "𒀭𒀭𒀭𒀭𒀭𒀭𒀭𒀭𒀭𒀭\nhyvää päivää hyvää"
    config = LangIdConfig(model=str(model), keep=["fin_Latn"])
    out = LanguageId(config, STORAGE)(batch([noisy, cuneiform])).to_pylist()
    assert out[0]["seg_langs"] == ["fin_Latn", NOISE, NOISE, NOISE, UNDETERMINED]
    assert out[0]["lang"] == NOISE and out[0]["seg_scores"][4] == 0.0
    assert out[0]["drop_reason"] == "langid:not_in_keep_list"
    assert out[0]["lang_mix"] == pytest.approx(12 / (12 + 3 * 23))
    # GlotLID's und_* (a script it has no language for) is undetermined: no vote
    assert out[1]["seg_langs"] == [UNDETERMINED, "fin_Latn"] and out[1]["lang"] == "fin_Latn"
    assert out[1]["lang_mix"] == 0.0 and out[1]["drop_reason"] is None


def test_max_lang_mix_drops_mixed_documents_and_whole_keeps_today_s_label() -> None:
    records = {r["id"]: r for r in mixed_documents()}
    chosen = [records[key] for key in ("fi-pure", "fi-sv-0.25", "de-1996-fr-0.4")]
    docs = batch([r["text"] for r in chosen])
    out = LanguageId(LangIdConfig(max_lang_mix=0.2), STORAGE)(docs)
    assert out["drop_reason"].to_pylist() == [None, "langid:above_max_lang_mix", "langid:above_max_lang_mix"]
    whole = LanguageId(LangIdConfig(document_from="whole"), STORAGE)(docs).to_pylist()
    today = LanguageId(LangIdConfig(segments=False), STORAGE)(docs).to_pylist()
    assert [w["lang"] for w in whole] == [t["lang"] for t in today] == ["fin_Latn", "fin_Latn", "fra_Latn"]
    assert whole[2]["lang_mix"] == pytest.approx(1 - out["lang_mix"][2].as_py(), abs=1e-6)  # French's share is small


def test_a_mix_limit_needs_segments() -> None:
    with pytest.raises(ValueError, match="need segments: true"):
        LangIdConfig(segments=False, max_lang_mix=0.1)
    assert LangIdConfig(segments=False).document_from == "segments"  # the default, read as whole
