"""Scrub protected health information out of report text before any token is scored.

Report headers carry names, record numbers, dates and the referring doctor; when those
happen to correlate with an error slice, a ranking of raw words puts them at the top. So
scrubbing happens before embedding and TF-IDF, in four layers:

1. header lines whose key names an identifier (``Patient:``, ``MRN:``, ``Referring physician:``…)
   are dropped whole, in any letter case;
2. e-mail addresses, URLs and every run of characters holding a digit (dates, times, ids,
   accession numbers, phone numbers, measurements) are removed;
3. names found by their context (:mod:`agent.explain.names`: after a title, before a degree,
   after a sign-off phrase such as ``SIGNED BY`` or ``discussed with``, a name alone on one of
   the last lines), in any letter case, are removed with the titles;
4. tokens are lower-case alphabetic words of three letters or more, not stop words, not
   de-identification placeholders (``XXXX``), and not in the corpus's block-list: words used as
   proper nouns (:class:`ProperNouns`) or in any name context or person-name field anywhere in
   the corpus (:class:`~agent.explain.names.NameBlocklist`). A word must also occur in
   ``min_df`` studies to be scored at all (the vectoriser's job), so one patient's identifiers
   cannot rank.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from agent.explain.names import WITH_DIGIT, name_spans

__all__ = ["STOP_WORDS", "ProperNouns", "scrub", "terms", "tokens"]

_ID_KEYS = (
    r"patient|name|mrn|medical\s+record|record\s+(?:no|number|#)|dob|date|birth|accession|acc\s*(?:no|#)?"
    r"|id|identifier|ssn|nhs|referr\w*|physician|doctor|attending|ordering|requested\s+by|signed|"
    r"dictated|transcribed|electronically|reported\s+by|radiologist|address|phone|tel|fax|email|"
    r"location|facility|hospital|institution|ward|room|bed|time|exam\s+date|study\s+date"
)
_HEADER = re.compile(rf"^[ \t]*(?:{_ID_KEYS})[^:\n]{{0,40}}:[^\n]*$", re.IGNORECASE | re.MULTILINE)
# Tried at the start of a run of non-spaces only ("(?<!\S)"), as WITH_DIGIT: a match that starts
# inside a run also matches from its start, and tried at every position a long run without "@"
# costs time quadratic in its length (20,000 letters: seconds).
_EMAIL = re.compile(r"(?<!\S)\S+@\S+")
_URL = re.compile(r"\b(?:https?://|www\.)\S+", re.IGNORECASE)
_TITLE = re.compile(
    r"(?<![\w.])(?:dr|dra|drs|prof|profa|mr|mrs|ms|mx|mme|mlle|sr|sra|srta)\b\.?", re.IGNORECASE
)
_WORD = re.compile(r"[A-Za-z]+")
_PLACEHOLDER = re.compile(r"^x{2,}$", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?:;\n]\s*$")

#: English stop words plus report boilerplate that names no attribute of a case.
STOP_WORDS = frozenset(ENGLISH_STOP_WORDS) | {
    "findings",
    "impression",
    "indication",
    "comparison",
    "technique",
    "history",
    "report",
    "exam",
    "examination",
    "study",
    "clinical",
    "noted",
    "seen",
    "there",
    "views",
    "view",
    "unchanged",
    "stable",
    "compared",
    "prior",
    "patient",
    "dictated",
    "signed",
    "final",
}


def scrub(text: str) -> str:
    """Remove identifier lines, addresses, everything with a digit, and names found by context.

    >>> scrub("Patient: Jane Doe\\nMRN: 12345\\nFINDINGS: Chest tube in place, seen 12/03/2024 by Dr. Smith.")
    'FINDINGS: Chest tube in place, seen  by  .'
    >>> scrub("NO PNEUMOTHORAX. DISCUSSED WITH DR JONES. ELECTRONICALLY SIGNED BY JOHN SMITH, MD")
    'NO PNEUMOTHORAX. DISCUSSED WITH  . ELECTRONICALLY SIGNED BY , MD'
    """
    text = _HEADER.sub("", text)
    text = _EMAIL.sub(" ", text)
    text = _URL.sub(" ", text)
    text = WITH_DIGIT.sub("", text)
    kept, last = [], 0
    for span in name_spans(text):  # in order, merged: no two overlap
        kept.append(text[last : span.start])
        last = span.end
    text = "".join(kept) + text[last:]
    text = _TITLE.sub("", text)
    return text.strip()


def _words_with_position(text: str) -> Iterable[tuple[str, bool]]:
    """Words of ``text`` with whether each starts a sentence (where capitals prove nothing)."""
    start = 0
    for match in _WORD.finditer(text):
        before = text[start : match.start()]
        # Only the characters since the last word can hold the sentence's end: a line is read once.
        at_start = (start == 0 and not before.strip()) or bool(_SENTENCE_END.search(before))
        yield match.group(), at_start
        start = match.end()


class ProperNouns:
    """Learns, from a corpus of mixed-case reports, the words used only as proper nouns.

    >>> pn = ProperNouns().fit(["The tube was placed by Smith today.", "Tube seen. Smith reviewed."])
    >>> sorted(pn.words_)
    ['smith']
    """

    def fit(self, texts: Iterable[str]) -> ProperNouns:
        capital_inside: Counter[str] = Counter()
        lower: Counter[str] = Counter()
        for text in texts:
            for line in text.splitlines():
                letters = [c for c in line if c.isalpha()]
                if not letters or sum(c.isupper() for c in letters) > 0.6 * len(letters):
                    continue  # an all-caps line says nothing about proper nouns
                for word, at_start in _words_with_position(line):
                    if word.islower():
                        lower[word] += 1
                    elif word[0].isupper() and word[1:].islower() and not at_start:
                        capital_inside[word.lower()] += 1
        self.words_ = frozenset(w for w in capital_inside if lower[w] == 0)
        return self


def tokens(text: str, blocked: frozenset[str] = frozenset()) -> list[str]:
    """Scrubbed lower-case tokens of one text, ready for TF-IDF, without the ``blocked`` words.

    >>> tokens("MRN: 998877\\nLeft chest tube; 2 lines. Reviewed by Dr. Who on 2024-01-02.")
    ['left', 'chest', 'tube', 'lines', 'reviewed']
    """
    out = []
    for word in _WORD.findall(scrub(text)):
        low = word.lower()
        if len(low) < 3 or low in STOP_WORDS or _PLACEHOLDER.match(low) or low in blocked:
            continue
        out.append(low)
    return out


_JOIN = re.compile(r"[ \t]+")


def terms(text: str, blocked: frozenset[str] = frozenset(), *, bigrams: bool = True) -> list[str]:
    """The :func:`tokens` of one text and, with ``bigrams``, the pairs of kept words that stand side by side.

    A pair is formed only by two words separated by spaces alone: a stop word, a short word, a
    blocked word (a name), punctuation or a line break between them breaks it. So every word of
    a bigram passes the same rules as a single token, and no bigram spans a removed name.

    >>> terms("Right chest tube in place. Chest tube, Dr. Quill")
    ['right', 'chest', 'tube', 'place', 'chest', 'tube', 'right chest', 'chest tube', 'chest tube']
    """
    clean = scrub(text)
    words: list[str] = []
    pairs: list[str] = []
    previous: tuple[str, int] | None = None
    for match in _WORD.finditer(clean):
        low = match.group().lower()
        if len(low) < 3 or low in STOP_WORDS or _PLACEHOLDER.match(low) or low in blocked:
            previous = None
            continue
        words.append(low)
        if bigrams and previous is not None and _JOIN.fullmatch(clean[previous[1] : match.start()]):
            pairs.append(f"{previous[0]} {low}")
        previous = (low, match.end())
    return words + pairs
