"""Quality filtering: the same verdicts as datatrove, per-language thresholds, unspaced scripts."""

from __future__ import annotations

import random
from importlib.resources import files
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml
from datatrove.data import Document
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.filters.base_filter import get_filter_result
from datatrove.pipeline.filters.gopher_repetition_filter import find_top_duplicate, get_n_grams

from shardflow.codepoints import decode, span_hasher
from shardflow.errors import ConfigError
from shardflow.operators.quality import (
    SCORE_NAMES,
    CharacterTokenizer,
    QualityConfig,
    QualityFilter,
    Thresholds,
    fast_language,
    load_thresholds,
    segmented_words,
    word_source,
    word_tokenizer,
)
from shardflow.operators.quality_fast import Settings, _flags, measure, spacy_answers, word_spans
from shardflow.operators.quality_segmenters import _jieba
from shardflow.schema import LANGID_FIELDS, READ_SCHEMA
from support import sample_records

SCHEMA = pa.schema(list(READ_SCHEMA) + LANGID_FIELDS)
FINEWEB2 = QualityConfig(rules="fineweb2")  # every check, exactly as FineWeb-2 (the datatrove reference)
SPAM = "buy cheap pills\nbuy cheap pills\nbuy cheap pills\nbuy cheap pills"


def by_language() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for record in sample_records():
        found.setdefault(record["lang"][0], []).append(record["text"])
    return found


def table(docs: list[tuple[str, str]]) -> pa.Table:
    rows = [{"text": text, "lang": lang, "lang_score": 0.99, "source": f"m:{i}"} for i, (text, lang) in enumerate(docs)]
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def datatrove_filters(lang: str) -> dict[str, object]:
    """The four filters built straight from datatrove with the YAML's numbers, independent of our wiring."""
    t = yaml.safe_load(files("shardflow.operators").joinpath("quality_thresholds", f"{lang}.yaml").read_text())
    return {
        "gopher_repetition": GopherRepetitionFilter(
            dup_line_frac=t["dup_line_frac"],
            top_n_grams=tuple(map(tuple, t["top_n_grams"])),
            dup_n_grams=tuple(map(tuple, t["dup_n_grams"])),
            language=lang,
        ),
        "gopher_quality": GopherQualityFilter(
            min_doc_words=50,
            min_avg_word_length=t["min_avg_word_length"],
            max_avg_word_length=t["max_avg_word_length"],
            max_non_alpha_words_ratio=t["max_non_alpha_words_ratio"],
            stop_words=t["stopwords"],
            min_stop_words=2,
            language=lang,
        ),
        "c4": C4QualityFilter(filter_no_terminal_punct=False, language=lang),
        "fineweb": FineWebQualityFilter(
            line_punct_thr=t["line_punct_thr"],
            new_line_ratio=t["new_line_ratio"],
            short_line_thr=t.get("short_line_thr", 1.0),
            char_duplicates_ratio=t.get("char_duplicates_ratio", 0.1),
            language=lang,
        ),
    }


@pytest.mark.parametrize("lang", ["eng_Latn", "fin_Latn", "rus_Cyrl"])
def test_each_wrapped_filter_gives_datatrove_s_verdict(lang: str) -> None:
    articles = by_language()[lang]
    docs = [
        "\n".join(articles[:12]),
        "\n".join(articles[12:]),
        "\n\n".join(articles),
        articles[0],
        SPAM,
        "... ... ...\n" * 30,
        "# # # title\n" * 40 + " ".join(articles),
    ]
    ours = QualityFilter(FINEWEB2.model_copy(update={"mode": "annotate"}))(table([(d, lang) for d in docs]))[
        "quality"
    ].to_pylist()
    reference = datatrove_filters(lang)
    for text, verdict in zip(docs, ours, strict=True):
        for name, rule in reference.items():
            expected, _ = get_filter_result(rule.filter(Document(text=text, id="x")))
            assert verdict[name] == bool(expected), (name, text[:60])
    assert not all(v["gopher_repetition"] for v in ours) and any(v["reason"] is None for v in ours)


@pytest.mark.parametrize("lang", ["zho_Hans", "jpn_Jpan", "tha_Thai"])
def test_unspaced_scripts_are_not_dropped_by_word_count_rules(lang: str) -> None:
    articles = by_language()[lang]
    tokenizer = word_tokenizer(lang)
    assert not isinstance(tokenizer, CharacterTokenizer), "the tokenizers extra should be installed for tests"
    assert len(tokenizer.word_tokenize(articles[1])) >= 10  # real words, not one run of characters
    annotated = QualityFilter(QualityConfig(mode="annotate"))(table([("\n".join(articles), lang)]))
    (verdict,) = annotated["quality"].to_pylist()
    assert verdict["gopher_quality"] is True, verdict


def test_an_obviously_bad_document_is_dropped_with_its_reason() -> None:
    good = "\n".join(by_language()["eng_Latn"])
    out = QualityFilter(FINEWEB2)(table([(SPAM, "eng_Latn"), (good, "eng_Latn")]))
    assert out["drop_reason"].to_pylist() == ["quality:gopher_repetition.dup_line_frac", None]
    short = QualityFilter(FINEWEB2.model_copy(update={"filters": ["gopher_quality"]}))(
        table([("Buy pills now", "eng_Latn")])
    )
    assert short["drop_reason"].to_pylist() == ["quality:gopher_quality.gopher_short_doc"]


def test_annotate_mode_keeps_everything_and_records_reason_and_scores() -> None:
    out = QualityFilter(FINEWEB2.model_copy(update={"mode": "annotate"}))(table([(SPAM, "eng_Latn")]))
    assert out["drop_reason"].to_pylist() == [None]
    quality = out["quality"][0].as_py()
    assert quality["reason"] == "gopher_repetition.dup_line_frac"
    assert quality["words"] == 12 and quality["dup_line_frac"] == 0.75 and quality["line_punct_ratio"] == 0
    assert abs(quality["mean_word_length"] - 13 / 3) < 1e-5 and quality["alpha_words_ratio"] == 1
    filtered = QualityFilter(FINEWEB2)(table([(SPAM, "eng_Latn")]))
    assert filtered["quality"][0].as_py()["words"] is None  # filter mode does not pay for scores


def test_language_score_threshold_comes_from_the_language_file() -> None:
    text = "\n".join(by_language()["fin_Latn"])
    rows = table([(text, "fin_Latn")]).set_column(
        SCHEMA.get_field_index("lang_score"), "lang_score", pa.array([0.5], pa.float32())
    )
    out = QualityFilter(QualityConfig(filters=["language_score"]))(rows)
    assert out["drop_reason"].to_pylist() == ["quality:language_score.below_threshold"]


def test_at_least_20_languages_ship_thresholds_that_say_where_they_come_from() -> None:
    folder = files("shardflow.operators").joinpath("quality_thresholds")
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".yaml"))
    assert "default.yaml" in names and len(names) >= 21
    for name in names:
        text = folder.joinpath(name).read_text(encoding="utf-8")
        assert "Source" in text.split("\n", 1)[0] or text.startswith("# "), name
        Thresholds.model_validate(yaml.safe_load(text))
    assert load_thresholds("xyz_Latn", None) == load_thresholds("default", None)


def test_an_unspaced_script_without_its_tokenizer_falls_back_to_characters() -> None:
    assert isinstance(word_tokenizer("khm_Khmr"), CharacterTokenizer)  # khmer-nltk is not a dependency
    assert CharacterTokenizer().word_tokenize("ក ខ គ") == ["ក", "ខ", "គ"]


def test_a_worker_set_up_unlike_the_driver_refuses_to_judge(tmp_path: Path) -> None:
    folder = tmp_path / "thresholds"
    folder.mkdir()
    (folder / "fin_Latn.yaml").write_text("min_avg_word_length: 2\n")
    config = QualityConfig(thresholds=str(folder))
    driver = QualityFilter.environment(config)
    QualityFilter(config, environment=driver)  # the same setup: fine
    without_jieba = driver | {"tokenizer_packages": [p for p in driver["tokenizer_packages"] if p != "jieba"]}
    with pytest.raises(ConfigError, match=r"quality: this worker .*set up differently.*tokenizer_packages"):
        QualityFilter(config, environment=driver | {"tokenizer_packages": [*driver["tokenizer_packages"], "pyvi"]})
    with pytest.raises(ConfigError, match="set up differently"):
        QualityFilter(config, environment=without_jieba)
    (folder / "fin_Latn.yaml").unlink()  # a node where the folder is not what the driver read
    with pytest.raises(ConfigError, match=r"thresholds: '\w+' on the driver, '\w+' here"):
        QualityFilter(config, environment=driver)


def test_spacy_s_answers_read_back_from_the_disk_cache_are_the_ones_spacy_gave(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SHARDFLOW_CACHE", str(tmp_path))
    spacy_answers.cache_clear()
    asked = spacy_answers("nl")  # Dutch: "'t" stays one token, "ab-cd" is one word
    assert "'t" in asked["exceptions"] and asked["probes"][1] == ["ab-cd"]
    assert [path.name.endswith("-nl.json") for path in tmp_path.iterdir()] == [True]
    spacy_answers.cache_clear()
    assert spacy_answers("nl") == asked  # from the file, as another process reads it
    spacy_answers.cache_clear()


def hostile_documents(articles: list[str]) -> list[str]:
    """Documents of our own making that reach every rule: repeats of lines, paragraphs and n-grams, bullets,
    ellipses, hashes, lorem ipsum, curly brackets, script and policy lines, short lines, lists, blank lines."""
    body = " ".join(articles[:6])
    return [
        "\n".join(articles),
        "\n\n".join(articles[:10]),
        "\r\n".join(articles[:8]) + "\r\n",
        "\n\n\n".join(articles[:3] * 3),
        body + " " + " ".join(body.split()[:40]) * 2,
        "\n".join(f"- {a}" for a in articles[:12]),
        "\n".join(f"• {a[:80]}..." for a in articles[:12]),
        body + "\n" + "lorem ipsum dolor sit amet, consectetur adipiscing elit sed do.\n" + body,
        body + "\nfunction f() { return 1; } is what the page runs here.\n" + body,
        body + "\nPlease enable JavaScript to view this page properly.\n" + body,
        body + "\nBy using this site you agree to our terms of use and privacy policy.\n" + body,
        "\n".join(word for word in body.split()[:80]),
        "#" + " #".join(body.split()[:60]),
        "  \n\n  " + body + "  \n \n",
        "\n".join(a[:25] for a in articles),
        body.replace(". ", "... ") + "\n" + body,
        "",
        "\n\n\n",
    ]


def test_the_fast_engine_gives_the_datatrove_engine_s_verdicts() -> None:
    """Every language of the bundled sample (50, 12 scripts): 16 UDHR articles alone and joined,
    and the hostile documents above. Keep/drop agrees on >= 99%, the first failing rule on >= 98% of the
    dropped (docs/quality.md: what differs and why); the engines are fed the same table."""
    docs = []
    for lang, articles in sorted(by_language().items()):
        docs += [(text, lang) for text in articles[:16] + hostile_documents(articles[:16])]
    rows = table(docs)
    fast = QualityFilter(FINEWEB2)(rows)["drop_reason"].to_pylist()
    reference = QualityFilter(FINEWEB2.model_copy(update={"engine": "datatrove"}))(rows)["drop_reason"].to_pylist()
    same_verdict = sum((a is None) == (b is None) for a, b in zip(fast, reference, strict=True))
    dropped = [(a, b) for a, b in zip(fast, reference, strict=True) if b is not None]
    assert len(dropped) > len(docs) / 4 and len({b for _, b in dropped}) >= 10  # many rules are exercised
    differ = [(doc[1], a, b) for doc, a, b in zip(docs, fast, reference, strict=True) if a != b]
    assert same_verdict >= 0.99 * len(docs), differ
    assert sum(a == b for a, b in dropped) >= 0.98 * len(dropped)


def test_the_fast_engine_scores_what_the_datatrove_engine_scores() -> None:
    articles = by_language()["eng_Latn"]
    rows = table([(text, "eng_Latn") for text in [SPAM, "\n".join(articles), *hostile_documents(articles)[:6]]])
    fast = QualityFilter(FINEWEB2.model_copy(update={"mode": "annotate"}))(rows)["quality"].to_pylist()
    reference = QualityFilter(FINEWEB2.model_copy(update={"mode": "annotate", "engine": "datatrove"}))(rows)[
        "quality"
    ].to_pylist()
    for ours, theirs in zip(fast, reference, strict=True):
        assert {k: v for k, v in ours.items() if k not in SCORE_NAMES} == {
            k: v for k, v in theirs.items() if k not in SCORE_NAMES
        }
        assert [ours[k] for k in SCORE_NAMES] == pytest.approx([theirs[k] for k in SCORE_NAMES], rel=0.02), ours


def fast_words(text: str, lang: str) -> list[str]:
    """The words the fast engine counts for ``text`` (its tokens, as the measures see them)."""
    texts = pa.array([text])
    source = np.array([word_source(lang)], np.int8)
    batch = decode(texts)
    flags = _flags(batch.values, batch.owner, np.array([fast_language(lang)]))
    settings = Settings(
        languages=np.array([fast_language(lang)]),
        regex_sentences=np.array([False]),
        min_words_per_line=np.array([3]),
        stopwords={},
        top_ns=(),
        dup_ns=(),
        word_source=source,
        given=segmented_words(texts, [lang], source),
    )
    tokens = word_spans(batch, flags, span_hasher(batch.values), settings)
    return [text[start:end] for start, end in zip(tokens.start, tokens.end, strict=True)]


@pytest.mark.parametrize(
    ("lang", "text"),
    [
        ("zho_Hans", "今天天气很好，我们去公园散步吧。\n  北京是中国的首都 2024年, ok!"),  # jieba, without spaCy
        ("jpn_Jpan", "東京都に住んでいます。 今日は良い天気ですね！\n\nＡＢＣ 123"),  # SudachiPy, without spaCy
        ("fra_Latn", "L'homme d'aujourd'hui parle à l’école : « c'est ça »."),  # elisions split after "'"
        ("lij_Latn", "L'é a-o mæ, da-o pòrto; l'ægua."),  # exceptions across a hyphen stay whole
        ("nld_Latn", "Dat is 't huis van 'n man, z'n vader."),  # exceptions after an apostrophe
        ("kir_Cyrl", "2003-жылы 95-жылдары Бишкекте д'Артаньян."),  # digit-hyphen-letter, apostrophe infix
    ],
)
def test_the_fast_engine_counts_the_words_datatrove_counts(lang: str, text: str) -> None:
    assert fast_words(text, lang) == word_tokenizer(lang).word_tokenize(text)


def test_the_n_gram_measures_follow_gopher_s_definitions_on_repetitive_batches() -> None:
    """Many short documents drawn from a few words, so that n-grams repeat, chain and cross documents:
    the top n-gram's characters are datatrove's ``find_top_duplicate``; the repeated n-grams' characters
    follow ``find_all_duplicate``'s walk, an n-gram counting as seen where it occurred earlier."""
    rng = random.Random(7)
    texts = [" ".join(rng.choice("ab cd ef gh ij".split()[: rng.randint(1, 5)]) for _ in range(rng.randint(0, 60)))]
    texts += [" ".join(rng.choice(["ab", "cd", "efg"]) for _ in range(rng.randint(0, 90))) for _ in range(60)]
    settings = Settings(
        languages=np.array(["xx"] * len(texts)),
        regex_sentences=np.zeros(len(texts), dtype=bool),
        min_words_per_line=np.zeros(len(texts), dtype=int),
        stopwords={},
        top_ns=(2, 3, 4),
        dup_ns=tuple(range(5, 11)),
    )
    measures = measure(pa.array(texts), settings)
    for i, words in enumerate(text.split() for text in texts):
        for n in (2, 3, 4):
            expected = find_top_duplicate(get_n_grams(words, n)) if len(words) >= n else None
            assert (measures[f"top_{n}"][i] if expected is not None else None) == expected, (texts[i], n)
        for n in range(5, 11):
            assert measures[f"dup_{n}"][i] == seen_before_walk(words, n), (texts[i], n)


def seen_before_walk(words: list[str], n: int) -> int:
    """``find_all_duplicate``'s walk where an n-gram is seen if it occurs anywhere earlier in the text."""
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    first: dict[tuple[str, ...], int] = {}
    for i, gram in enumerate(grams):
        first.setdefault(gram, i)
    total, i = 0, 0
    while i < len(grams):
        if first[grams[i]] < i:
            total, i = total + sum(map(len, grams[i])), i + n
        else:
            i += 1
    return total


def test_segmenter_pieces_that_skip_characters_are_placed_in_order() -> None:
    """jieba's pieces cover the text; a segmenter that drops characters (or a piece that is not in the text)
    still gives each remaining word its place, as spaCy aligns them, instead of failing the batch."""

    class Dropping:
        def cut(self, text: str, cut_all: bool) -> list[str]:
            return ["今天", "天气", "不在", "很好"]

    starts, ends = _jieba(Dropping())("今天 天气\n很好")
    assert list(zip(starts.tolist(), ends.tolist(), strict=True)) == [(0, 2), (3, 5), (6, 8)]
