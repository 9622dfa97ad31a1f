"""Language labels in one scheme: ``xxx_Scri`` (ISO 639-3 + ISO 15924), as OpenLID, GlotLID and HPLT use.

fastText's lid.176 answers ``__label__fi``; its table (``lid176_labels.tsv``) maps each label to the
FLORES/OpenLID code. Where a language is written in several scripts (Serbian, Chinese, Uzbek...) the
script is read off the text itself, so ``sr`` becomes ``srp_Cyrl`` or ``srp_Latn`` as the document is.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from functools import cache, lru_cache
from importlib.resources import files

from shardflow.schema import safe_label

LABEL_PREFIX = "__label__"
UNDETERMINED = "und_Zyyy"  # no language could be told (too little text; a model's und_* answer)
NOISE = "zxx_Zxxx"  # not language: OpenLID-v3's label, and GlotLID's zxx_Latn, zxx_Arab, zxx_Zzzz... map to it
SCRIPT_SAMPLE_CHARS = 120  # letters enough to tell a script; read only for multi-script labels

# First word of a Unicode character name -> ISO 15924 code, for the scripts the label table mentions.
_SCRIPT_BY_NAME = {
    "LATIN": "Latn",
    "CYRILLIC": "Cyrl",
    "ARABIC": "Arab",
    "DEVANAGARI": "Deva",
    "GURMUKHI": "Guru",
    "MONGOLIAN": "Mong",
    "CJK": "Hani",
    "HEBREW": "Hebr",
    "GREEK": "Grek",
    "BENGALI": "Beng",
    "GEORGIAN": "Geor",
    "ARMENIAN": "Armn",
    "THAI": "Thai",
    "HANGUL": "Hang",
    "HIRAGANA": "Jpan",
    "KATAKANA": "Jpan",
    "ETHIOPIC": "Ethi",
    "TAMIL": "Taml",
    "TELUGU": "Telu",
    "KANNADA": "Knda",
    "MALAYALAM": "Mlym",
    "GUJARATI": "Gujr",
    "ORIYA": "Orya",
    "SINHALA": "Sinh",
    "KHMER": "Khmr",
    "LAO": "Laoo",
    "MYANMAR": "Mymr",
    "TIBETAN": "Tibt",
    "THAANA": "Thaa",
}
# Frequent characters that exist in only one of the two Chinese standards.
_SIMPLIFIED = set(
    "这个们来时国说会为对发经学过还进动种长开东见问关点现体应实从产无样机权义务该护条约议让认给没请书车门马鸟鱼币华语记论识译读谁调谈贵费资质"
)
_TRADITIONAL = set(
    "這個們來時國說會為對發經學過還進動種長開東見問關點現體應實從產無樣機權義務該護條約議讓認給沒請書車門馬鳥魚幣華語記論識譯讀誰調談貴費資質"
)


@cache
def lid176_table() -> dict[str, tuple[str, dict[str, str]]]:
    """lid.176 label -> (default code, {script: code})."""
    table: dict[str, tuple[str, dict[str, str]]] = {}
    text = files("shardflow.operators").joinpath("lid176_labels.tsv").read_text(encoding="utf-8")
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        label, code, *alternatives = line.split("\t")
        by_script = dict(pair.split("=") for pair in alternatives[0].split(",")) if alternatives else {}
        table[label] = (code, by_script)
    return table


@lru_cache(maxsize=1 << 16)
def _script_of(char: str) -> str:
    return _SCRIPT_BY_NAME.get(unicodedata.name(char, "").split(" ", 1)[0], "Zyyy")


def dominant_script(text: str) -> str | None:
    """The ISO 15924 script of most letters in the first characters of ``text``; Han splits into Hans/Hant."""
    sample = text[:SCRIPT_SAMPLE_CHARS]
    counts = Counter(_script_of(char) for char in sample if char.isalpha())
    if not counts:
        return None
    script = counts.most_common(1)[0][0]
    if script == "Hani":
        simplified = sum(char in _SIMPLIFIED for char in sample)
        traditional = sum(char in _TRADITIONAL for char in sample)
        return "Hant" if traditional > simplified else "Hans"
    return script


def normalise_labels(labels: list[str], text: str) -> list[str]:
    """Normalise a model's labels for one text; the text's script is read at most once, and only if needed. A
    label that could not stand in a path is escaped (``safe_label``)."""
    script: str | None = None
    script_read = False
    codes = []
    for label in labels:
        code = fixed_code(label)
        if code is None:
            if not script_read:
                script, script_read = dominant_script(text), True
            code = _with_script(label.removeprefix(LABEL_PREFIX), script)
        codes.append(code)
    return codes


@lru_cache(maxsize=1 << 14)
def fixed_code(label: str) -> str | None:
    """The code of ``label`` where it does not depend on the text's script (most labels); else ``None``."""
    code = label.removeprefix(LABEL_PREFIX)
    if code.startswith("zxx_"):
        return NOISE
    entry = None if "_" in code else lid176_table().get(code)
    if "_" in code or (entry is not None and not entry[1]):
        return safe_label(entry[0] if entry else code)
    return None


def default_code(label: str) -> str:
    """The code of ``label`` in its language's usual script (``__label__sr`` -> ``srp_Cyrl``)."""
    return fixed_code(label) or _with_script(label.removeprefix(LABEL_PREFIX), None)


def _with_script(code: str, script: str | None) -> str:
    entry = lid176_table().get(code)
    if entry is None:
        return safe_label(f"{code}_{script or 'Zyyy'}")
    return safe_label(entry[1].get(script or "", entry[0]))


def normalise_label(label: str, text: str) -> str:
    """``__label__sr`` + a Latin-script text -> ``srp_Latn``; ``__label__fin_Latn`` stays ``fin_Latn``."""
    return normalise_labels([label], text)[0]
