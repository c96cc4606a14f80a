from __future__ import annotations

import re
import time

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


@pytest.mark.parametrize(
    "unit",
    [
        *("a", ".", ":", "a,", "a-", " ", "\n", "x@"),  # runs without a space, a digit or a word
        *("Dr. ", "JOHN SMITH ", "SIGNED BY ", "Kim Lee\n", "Smith, MD "),  # name contexts
    ],
)
def test_a_hostile_report_is_read_in_time_linear_in_its_length(unit):
    """A report is written by whoever sends it. 100,000 characters of one repeated shape (a run
    without spaces or digits, titles without a name, ...) took seconds to minutes when a pattern
    was tried at every position of a run, or every word re-read its line; read once, each takes
    well under a second here. The bound is a hundred times that: only the quadratic reading
    fails it."""
    from agent.explain.names import NameBlocklist

    text = unit * (100_000 // len(unit))
    started = time.perf_counter()
    tokens(text)
    ProperNouns().fit([text])
    NameBlocklist().fit([text])
    assert time.perf_counter() - started < 30.0


def test_a_run_of_titles_still_takes_the_name_after_it():
    """Title words before a name are skipped, at most three ("Prof. Dr. med."): a text of titles
    alone is not walked from every one of them."""
    assert "Haddad" not in scrub("Reviewed with Prof. Dr. med. Haddad today.")
    assert not re.search("[A-Za-z]", scrub("Dr. " * 5))
