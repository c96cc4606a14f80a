"""Names found by context in any letter case, and a vocabulary that cannot hold them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.explain import TokenSpace, scrub, tokens
from agent.explain.names import CONNECTORS, NameBlocklist, name_spans, name_words, person_name_fields

BODY = [
    "FINDINGS: Right chest tube in place. No pneumothorax.",
    "FINDINGS: Lungs are clear. Heart size is normal.",
    "PORTABLE AP CHEST. ET TUBE IN PLACE. NO EFFUSION.",
    "Lateral view. Small left pleural effusion.",
]

# A PHI corpus of sign-offs: (text, the name words it plants).
SIGNOFFS = [
    (
        "FINDINGS DISCUSSED WITH DR JONES BY TELEPHONE. ELECTRONICALLY SIGNED BY JOHN SMITH, MD",
        {"jones", "john", "smith"},
    ),
    ("Electronically signed by Maria Gonzalez-Ruiz, MD on 11/23/2026 10:40", {"maria", "gonzalez", "ruiz"}),
    ("Dictated by: Dr. Whitfield\nDate: 23.11.2026", {"whitfield"}),
    ("dictated by dr. okafor", {"okafor"}),
    ("Priya Raman, DO", {"priya", "raman"}),
    ("PRIYA RAMAN, D.O.", {"priya", "raman"}),
    ("Signed by\nTHADDEUS QUENNEVILLE\n11/23/2026", {"thaddeus", "quenneville"}),
    ("Lungs clear.\nKenji Halvorsen", {"kenji", "halvorsen"}),
    (
        "Discussed with Dr Pemberton at (555) 210-3344.\nReviewed by Ingrid Achterberg MD",
        {"pemberton", "ingrid", "achterberg"},
    ),
    ("READ BY: RAFAEL OYARZUN, M.D. 11/23/2026", {"rafael", "oyarzun"}),
    ("Attending radiologist: Volkonsky, Dmitri", {"volkonsky", "dmitri"}),
    ("Radiologist: Siobhan Nkemelu PhD", {"siobhan", "nkemelu"}),
    ("Firmado por: DRA. ANA DE LA CRUZ", {"ana", "cruz"}),
    ("Befundet von Dr. med. Jürgen Müller", {"jürgen", "müller"}),
    ("Signé électroniquement par Dr Jean Dupont", {"jean", "dupont"}),
    ("Prof. Haddad reviewed the film.", {"haddad"}),
]


@pytest.mark.parametrize(("text", "planted"), SIGNOFFS)
def test_names_are_found_in_every_style_and_case(text, planted):
    strong, weak = name_words(text)
    assert planted <= strong | weak
    assert not {"findings", "telephone", "lungs", "clear", "date", "reviewed", "film"} & (strong | weak)


@pytest.mark.parametrize(("text", "planted"), SIGNOFFS)
def test_scrub_removes_the_names_and_tokens_never_hold_them(text, planted):
    assert not planted & {w.lower() for w in scrub(text).replace(",", " ").split()}
    assert not planted & set(tokens(text))


@pytest.mark.parametrize(
    "text",
    [
        "Findings discussed with the referring clinician.",
        "THE PATIENT WAS INTUBATED. DO NOT REMOVE THE TUBE.",
        "Right chest tube. Signed and dated.",
        "FINDINGS:\nPORTABLE AP CHEST\nET tube above the carina. No pneumothorax.\nMild atelectasis.",
    ],
)
def test_text_without_a_person_has_no_strong_name_context(text):
    strong, _ = name_words(text)
    assert strong == frozenset(), strong


def test_person_name_fields_are_every_pn_keyword_in_any_spelling():
    meta = {
        "PatientName": "Doe^Jane",
        "referring_physician_name": "Pemberton^Ann",
        "NameOfPhysiciansReadingStudy": ["Oyarzun^Rafael"],
        "OperatorsName": "Lee",
        "Manufacturer": "Agfa",
        "PatientID": "123",
    }
    assert sorted(person_name_fields(meta)) == ["Doe^Jane", "Lee", "Oyarzun^Rafael", "Pemberton^Ann"]


def test_names_from_metadata_are_blocked_wherever_they_appear():
    # "pemberton" is written in lower case inside sentences: no context shows it is a name,
    # but the referring physician field does.
    texts = [f"chest tube placed, pemberton aware. case {i}" for i in range(10)]
    space = TokenSpace(min_df=2).fit(texts, metadata=[{"ReferringPhysicianName": "PEMBERTON^ANN"}] * 10)
    assert "pemberton" not in set(space.vocabulary_)
    assert {"chest", "tube", "aware"} <= set(space.vocabulary_)


def test_a_heading_alone_on_a_line_does_not_block_a_medical_word():
    reports = [f"PORTABLE CHEST\nET tube in place, portable film {i}.\nNo effusion." for i in range(5)]
    reports += ["Chest tube in place.\nNo effusion.\nPORTABLE"] * 2
    blocked = NameBlocklist().fit(reports).words_
    assert "portable" not in blocked and "chest" not in blocked


def test_the_shared_signer_of_an_error_slice_is_not_a_token():
    """The defect measured in the issue: one reader signs every study of the slice, in capitals."""
    err = [
        f"{BODY[0]}\nFINDINGS DISCUSSED WITH DR JONES. ELECTRONICALLY SIGNED BY JOHN SMITH, MD"
        for _ in range(20)
    ]
    ref = [f"{BODY[1]}\nElectronically signed by Ingrid Achterberg, MD" for _ in range(20)]
    space = TokenSpace(min_df=3).fit(err + ref)
    top = [t.token for t in space.distinctiveness(range(20), range(20, 40), top_k=10)]
    assert {"tube", "chest"} <= set(top)
    assert not {"john", "smith", "jones", "ingrid", "achterberg"} & set(space.vocabulary_)


_STYLES = [
    "Electronically signed by {first} {last}, MD",
    "ELECTRONICALLY SIGNED BY {first} {last}, MD",
    "Findings discussed with Dr {last} by telephone.",
    "FINDINGS DISCUSSED WITH DR. {last} AT THE BEDSIDE.",
    "Dictated by: {first} {last}",
    "{first} {last}, DO",
    "Signed by\n{first} {last}",
    "Radiologist: {last}, {first}",
    "READ BY {first} {last} M.D.",
    "Reviewed by Prof. {last}.",
]
_NOT_NAMES = {"prof", "miss", "herr", "frau", "dona", "doctor", "nurse", "signed", "date", "dame"}
_NAME = st.from_regex(r"[A-Z][a-z]{3,9}", fullmatch=True).filter(
    lambda w: w.lower() not in set(" ".join(BODY).lower().split()) | CONNECTORS | _NOT_NAMES
)


@settings(max_examples=60, deadline=None)
@given(
    first=_NAME,
    last=_NAME,
    styles=st.lists(st.sampled_from(_STYLES), min_size=3, max_size=8),
    case=st.sampled_from([str, str.upper, str.lower, str.title]),
)
def test_a_word_used_only_as_a_name_never_becomes_a_token(first, last, styles, case):
    """The property of the issue, in every style and letter case, even when it marks the errors."""
    reports = [
        f"{BODY[i % len(BODY)]}\n" + case(style.format(first=first, last=last))
        for i, style in enumerate(styles)
    ]
    reports += BODY * 3
    space = TokenSpace(min_df=1).fit(reports)
    vocab = set(space.vocabulary_)
    assert first.lower() not in vocab and last.lower() not in vocab
    assert {"tube", "chest", "effusion"} <= vocab


@pytest.mark.parametrize(
    "sentence",
    [
        "FINDINGS WERE DISCUSSED WITH THE REFERRING PHYSICIAN, JOHN KOWALSKI, BY TELEPHONE.",
        "Findings were discussed with the referring physician, John Kowalski, by telephone.",
        "DISCUSSED WITH ORDERING PROVIDER DR KOWALSKI.",
    ],
)
def test_a_name_after_its_role_is_found(sentence):
    """Between a sign-off phrase and the name, an article and role words ("the referring
    physician,") stopped the search at "the": in all-capital reports, where case proves nothing
    else, the name reached the exported tokens."""
    found = [sentence[s.start : s.end] for s in name_spans(sentence)]
    assert any("KOWALSKI" in f.upper() for f in found)
    assert not any(w in f.lower() for f in found for w in ("referring", "physician", "the "))


def test_an_all_capital_name_after_its_role_never_becomes_a_token():
    err = [
        f"CHEST AP. LUNGS CLEAR.\nFINDINGS WERE DISCUSSED WITH THE REFERRING PHYSICIAN, JOHN KOWALSKI, BY "
        f"TELEPHONE AT 10:{i:02d}.\nELECTRONICALLY SIGNED BY MARY ROE, MD"
        for i in range(20)
    ]
    ok = ["CHEST PA. LUNGS CLEAR. NO EFFUSION.\nELECTRONICALLY SIGNED BY MARY ROE, MD"] * 40
    space = TokenSpace(min_df=3).fit(err + ok, reports=err + ok)
    top = [t.token for t in space.distinctiveness(range(20), range(20, 60), top_k=8)]
    assert "discussed" in top and not {"john", "kowalski"} & set(top)
