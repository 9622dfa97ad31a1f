"""Language labels: lid.176 codes normalised to xxx_Scri, script read from the text where it varies."""

from __future__ import annotations

import re

import pytest

from shardflow.operators.langcodes import dominant_script, lid176_table, normalise_label
from shardflow.operators.langid import default_model_path


def test_the_table_covers_every_label_of_the_bundled_model() -> None:
    labels = set(re.findall(rb"__label__([a-z]+)\x00", default_model_path().read_bytes()))
    assert len(labels) == 176
    assert {label.decode() for label in labels} == set(lid176_table())
    assert all(re.fullmatch(r"[a-z]{3}_[A-Z][a-z]{3}", code) for code, _ in lid176_table().values())


@pytest.mark.parametrize(
    "label,text,expected",
    [
        ("__label__fi", "Hyvää päivää", "fin_Latn"),
        ("__label__ar", "لكل شخص الحق", "arb_Arab"),
        ("__label__sq", "Të gjithë njerëzit", "als_Latn"),
        ("__label__als", "Alli Mensche", "gsw_Latn"),
        ("__label__sr", "Сва људска бића рађају се слободна", "srp_Cyrl"),
        ("__label__sr", "Sva ljudska bića rađaju se slobodna", "srp_Latn"),
        ("__label__zh", "人人生而自由，在尊严和权利上一律平等。他们赋有理性和良心", "zho_Hans"),
        ("__label__zh", "人人生而自由，在尊嚴和權利上一律平等。他們賦有理性和良心", "zho_Hant"),
        ("__label__uz", "Барча одамлар эркин", "uzn_Cyrl"),
        ("__label__fin_Latn", "anything", "fin_Latn"),
        ("__label__cmn_Hani", "anything", "cmn_Hani"),
        ("__label__xx", "Ελληνικά", "xx_Grek"),
    ],
)
def test_normalise_label(label: str, text: str, expected: str) -> None:
    assert normalise_label(label, text) == expected


def test_dominant_script_ignores_digits_and_punctuation() -> None:
    assert dominant_script("2024 — Привет, мир! 123") == "Cyrl"
    assert dominant_script("12345 !!!") is None
