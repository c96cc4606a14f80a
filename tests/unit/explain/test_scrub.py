from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.explain import ProperNouns, scrub, tokens


@pytest.mark.parametrize(
    "line",
    [
        "Patient Name: DOE^JANE",
        "MRN: 00123456",
        "Accession #: A77889",
        "DOB: 01/02/1950",
        "Referring Physician: Dr. Strange",
        "Electronically signed by: Gregory House, MD",
    ],
)
def test_identifier_header_lines_are_dropped(line):
    assert scrub(f"{line}\nFINDINGS: chest tube.") == "FINDINGS: chest tube."


def test_titles_and_names_after_them_are_removed():
    assert "Kildare" not in scrub("Called Dr. James Kildare about the line.")


def test_all_caps_reports_keep_their_words():
    nouns = ProperNouns().fit(["PORTABLE AP CHEST. ET TUBE IN PLACE."]).words_
    assert nouns == frozenset()
    assert "tube" in tokens("PORTABLE AP CHEST. ET TUBE IN PLACE.", nouns)


@given(st.text(alphabet=st.characters(codec="ascii"), max_size=200))
def test_tokens_are_lowercase_words_without_digits(text):
    for token in tokens(text):
        assert re.fullmatch(r"[a-z]{3,}", token)
