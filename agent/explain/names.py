"""Where report text names a person, in any letter case, and the words a corpus uses only as names.

Names are found by their context, not by a list of names, so the rules hold in any language and
in any letter case (dictation systems often write sign-offs in capitals):

- after a title: ``Dr``, ``Dr.``, ``Dra``, ``Doctor``, ``Prof``, ``Mr``, ``Mrs``, ``Herr``, ``Frau``…;
- before a degree: ``MD``, ``M.D.``, ``DO`` (after a comma or at the end), ``MBBS``, ``PhD``, ``FRCR``…;
- after a sign-off phrase: ``signed by``, ``dictated by``, ``discussed with``, ``reviewed by``,
  ``read by``, ``attending``, ``radiologist`` (and their Spanish, German and French forms);
- as the value of a header field that names a person (``Radiologist: …``, ``Referring physician: …``);
- as a line made only of one to three capitalised words (``JOHN SMITH``, ``Jones``) among the
  last three lines of a text and after its first sentence, where sign-offs are: a *weak*
  context, since a heading such as ``PORTABLE CHEST`` looks the same;
- in DICOM person-name fields (``PatientName``, ``ReferringPhysicianName``…, every keyword whose
  value representation is PN), wherever those names then appear.

In a line where case says nothing (mostly capitals, or capitals only where sentences start) a
name word is any word; elsewhere it must start with a capital letter. A name runs for at most
three words (four in a header value) and stops at
punctuation, digits and small connecting words (``by``, ``at``, ``with``, ``por``, ``von``…).

:class:`NameBlocklist` learns, over the whole corpus an audit sees, the words that must never be
scored: every word seen in a strong context or in a person-name field, and every word seen in a
weak context in at least half of the studies that hold it. :func:`name_spans` gives the same
rules to the scrubber, which removes the spans from each text.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache

__all__ = ["NameBlocklist", "NameSpan", "name_spans", "name_words", "person_name_fields", "person_name_words"]

_TITLES = (
    r"dr|dra|drs|doctor|doctora|dott|dottssa|prof|profa|professor|pr|mr|mrs|ms|mx|miss|sir|dame|"
    r"herr|frau|sr|sra|srta|don|do[nñ]a|mme|mlle|nurse"
)
_DEGREES = r"m\.?d|mbbs|mbchb|ph\.?d|frcr|frcpc|facr|dabr|mph|rpa|np|pa-c|d\.o"
_PHRASES = (
    r"(?:electronically\s+|e-?)?signed(?:\s+electronically)?(?:\s+(?:off\s+)?by)?|dictated\s+by|"
    r"transcribed\s+by|reviewed\s+by|read\s+by|reported\s+by|verified\s+by|approved\s+by|"
    r"interpreted\s+by|authenticated\s+by|attested\s+by|finali[sz]ed\s+by|"
    r"(?:discussed|communicated|conveyed|reviewed|spoke)\s+with|(?:called|communicated|conveyed|given)\s+to|"
    r"d/w|attending(?:\s+(?:physician|radiologist))?|radiologist|resident|fellow|consultant|reader|"
    r"firmado(?:\s+electr[oó]nicamente)?\s+por|dictado\s+por|informado\s+por|revisado\s+por|"
    r"validado\s+por|comentado\s+con|hablado\s+con|"
    r"(?:elektronisch\s+)?unterschrieben\s+von|unterzeichnet\s+von|diktiert\s+von|befundet\s+von|"
    r"besprochen\s+mit|freigegeben\s+von|"
    r"sign[ée]\s+(?:[ée]lectroniquement\s+)?par|dict[ée]\s+par|valid[ée]\s+par|discut[ée]\s+avec"
)
_PERSON_KEYS = (
    r"patient\w*|pt|name|nombre|nom|vorname|nachname|paciente|referr\w*|physician|doctor|attending|"
    r"ordering|requesting|requested\s+by|signed\w*|dictated|transcribed|reported\s+by|radiologist|"
    r"reader|resident|technologist|tech|consultant|clinician|m[eé]dico|m[eé]decin|arzt|[aä]rztin|"
    r"radi[oó]log[oa]|radiologe|radiologue|interpreted\s+by|reviewed\s+by|verified\s+by|read\s+by"
)
_FLAGS = re.IGNORECASE | re.UNICODE
_TITLE = re.compile(rf"(?<![\w.])(?:{_TITLES})\.?(?=\s)", _FLAGS)
_TITLE_WORD = re.compile(rf"(?:{_TITLES}|med|univ|rer|nat|dent)\.?", _FLAGS)  # also "Dr. med."
_DEGREE = re.compile(rf"(?<![\w.])(?:{_DEGREES})\.?(?![\w])", _FLAGS)
_DO = re.compile(r"(?<=,)\s*D\.?O\.?(?![\w])|(?<=\s)D\.?O\.?\s*$", _FLAGS)
_PHRASE = re.compile(rf"(?<![\w])(?:{_PHRASES})(?![\w])\s*[:\-–]?", _FLAGS)
_HEADER = re.compile(rf"^[ \t]*(?:{_PERSON_KEYS})\b[^:\n]{{0,30}}:[ \t]*", _FLAGS | re.MULTILINE)
_NAME_WORD = re.compile(r"[^\W\d_](?:[^\W\d_]|['’\-][^\W\d_])*\.?", re.UNICODE)
_GAP = re.compile(r"[ \t]*[\^]?[ \t]*")
_LONE_WORD = r"[^\W\d_](?:[^\W\d_]|['’.\-])*"
_LINE = re.compile(rf"^[ \t]*((?:{_LONE_WORD}[ \t]+){{0,2}}{_LONE_WORD})[ \t]*[,.]?[ \t]*$", _FLAGS)
_TAIL_LINES = 3
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
#: A run of non-spaces holding a digit (dates, ids, numbers), tried from a run's start only: a
#: match inside a run also matches from its start, and trying every position is quadratic.
WITH_DIGIT = re.compile(r"(?<!\S)\S*\d\S*")
_HEADER_GAP = re.compile(r"[ \t]*[\^,]?[ \t]*")

#: Small words that end a name: English, Spanish, German and French connectors and articles.
CONNECTORS = frozenset(
    re.findall(
        r"\w+",
        "a al am an and as at au avec by con de del des du el en et for from i in la las le les los mit "
        "of on or par para per por re the to um und via vom von with y",
    )
)
#: Particles allowed inside a name when another name word follows (``van der Berg``, ``de la Cruz``).
_PARTICLES = frozenset(re.findall(r"\w+", "da de del der di dos du la le van von"))
_MAX_WORDS = 3
#: Words that name a role, not a person: skipped between a sign-off phrase and the name ("discussed
#: with the referring physician, John Roe"), and never taken for a name.
ROLE_WORDS = frozenset(
    re.findall(
        r"\S+",
        "the our your his her their referring ordering attending treating primary covering on-call "
        "requesting physician physicians provider clinician clinicians doctor resident fellow "
        "surgeon surgeons nurse practitioner team radiologist consultant registrar emergency "
        "department service staff family patient",
    )
)
_MAX_ROLE_WORDS = 4
#: Title words skipped before a name ("Prof. Dr. med."); "Dr. Dr. Dr. ..." does not walk a text.
_MAX_TITLES = 3


@dataclass(frozen=True)
class NameSpan:
    """Characters ``start:end`` of a text that name a person; ``strong`` unless only a lone line."""

    start: int
    end: int
    strong: bool = True


def _case_is_silent(line: str) -> bool:
    """Whether letter case says nothing about names on this line: mostly capitals, or capitals
    only where sentences start (``dictated by dr. okafor``)."""
    letters = [c for c in line if c.isalpha()]
    if not letters or sum(c.isupper() for c in letters) > 0.6 * len(letters):
        return True
    line = _TITLE.sub(lambda m: m.group().rstrip("."), line)  # "Prof. Haddad": no sentence starts
    last = 0
    for m in _WORD.finditer(line):
        if m.group()[0].isupper() and not _starts_sentence(line[last : m.start()], first=last == 0):
            return False
        last = m.end()
    return True


def _starts_sentence(gap: str, *, first: bool) -> bool:
    """Whether a word after ``gap`` (the characters since the last word, or since the line's
    start when ``first``) starts a sentence: the non-word characters that end the gap reach
    the line's start or hold one of ``.!?:;``. Only the gap is read, so a line is read once."""
    i = len(gap)
    while i and not (gap[i - 1].isalnum() or gap[i - 1] == "_"):
        i -= 1
    return (first and i == 0) or any(c in ".!?:;" for c in gap[i:])


def _is_body_line(line: str) -> bool:
    """A line of the report's body: it ends a sentence, or holds four words or more."""
    return line.rstrip()[-1:] in (".", "!", "?") or len(line.split(maxsplit=3)) > 3


def _is_name_word(word: str, any_case: bool) -> bool:
    bare = word.rstrip(".")
    if not bare or bare.lower() in CONNECTORS or bare.lower() in ROLE_WORDS:
        return False
    return any_case or bare[0].isupper()


def _forward(
    text: str, pos: int, any_case: bool, max_words: int = _MAX_WORDS, gap_re: re.Pattern[str] = _GAP
) -> tuple[int, int]:
    """Start and end of the run of name words from ``pos`` (empty at ``pos`` when there is none)."""
    start = end = pos
    count = particles = titles = roles = 0
    i = pos
    while count < max_words:
        gap = gap_re.match(text, i)
        j = gap.end() if gap else i
        m = _NAME_WORD.match(text, j)
        if m is None:
            break
        word = m.group()
        if count and word.lower() in _PARTICLES and particles < 2:
            particles += 1  # kept only if a name word follows
            i = m.end()
            continue
        if not count and titles < _MAX_TITLES and _TITLE_WORD.fullmatch(word):  # "discussed with Dr Jones"
            titles += 1
            i = m.end()
            continue
        if not count and roles < _MAX_ROLE_WORDS and word.rstrip(".").lower() in ROLE_WORDS:
            if word.endswith("."):  # "discussed with the team." ends there
                break
            roles += 1  # "discussed with the referring physician, John Roe"
            i = m.end() + (text.startswith(",", m.end()))
            continue
        if not _is_name_word(word, any_case):
            break
        if not count:
            start = m.start()
        count += 1
        particles = 0
        sentence_end = word.endswith(".") and len(word) > 2  # "Smith." ends a sentence; "J." is an initial
        end = i = m.end() - (1 if sentence_end else 0)
        if sentence_end:
            break
    return (start, end) if count else (pos, pos)


def _backward(text: str, pos: int, any_case: bool) -> tuple[int, int]:
    """Start and end of the run of up to three name words just before ``pos`` (empty at ``pos``)."""
    before = text[:pos].rstrip(" \t")
    if before.endswith(","):
        before = before[:-1].rstrip(" \t")
    words = list(_NAME_WORD.finditer(before[max(0, len(before) - 200) :]))
    offset = max(0, len(before) - 200)
    start = len(before)
    taken = 0
    for m in reversed(words):
        if taken == _MAX_WORDS or not _is_name_word(m.group(), any_case):
            break
        gap = before[offset + m.end() : start]
        if gap.strip(" \t.") or "\n" in gap:
            break
        start = offset + m.start()
        taken += 1
    return (start, len(before)) if taken else (pos, pos)


def _line_bounds(text: str, pos: int) -> tuple[int, int]:
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    return start, len(text) if end < 0 else end


def name_spans(text: str) -> list[NameSpan]:
    """Spans of ``text`` that name a person, found by context, merged and in order.

    >>> t = "FINDINGS DISCUSSED WITH DR JONES BY TELEPHONE. ELECTRONICALLY SIGNED BY JOHN SMITH, MD"
    >>> [t[s.start : s.end] for s in name_spans(t)]
    ['JONES', 'JOHN SMITH']
    >>> t = "Discussed with the team. Seen by Dr. Ana de la Cruz."
    >>> [t[s.start : s.end] for s in name_spans(t)]
    ['Ana de la Cruz']
    """
    found: list[NameSpan] = []
    caps_cache: dict[int, bool] = {}

    def any_case_at(pos: int) -> bool:
        start, end = _line_bounds(text, pos)
        if start not in caps_cache:
            caps_cache[start] = _case_is_silent(text[start:end])
        return caps_cache[start]

    def after(pos: int, max_words: int = _MAX_WORDS, any_case: bool | None = None) -> None:
        case = any_case_at(pos) if any_case is None else any_case
        start, end = _forward(text, pos, case, max_words, _HEADER_GAP if max_words > _MAX_WORDS else _GAP)
        if start < end:
            found.append(NameSpan(start, end))

    for m in _TITLE.finditer(text):
        after(m.end())
    for m in _PHRASE.finditer(text):
        after(m.end())
    for m in _HEADER.finditer(text):
        after(m.end(), max_words=4, any_case=True)
    for pattern in (_DEGREE, _DO):
        for m in pattern.finditer(text):
            start, end = _backward(text, m.start(), any_case_at(m.start()))
            if start < end:
                found.append(NameSpan(start, end))
    lines: list[tuple[int, str]] = []
    pos = 0
    body = False  # lone lines before the first sentence are headings, not sign-offs
    for line in text.split("\n"):
        if line.strip() and body:
            lines.append((pos, line))
        body = body or _is_body_line(line)
        pos += len(line) + 1
    for pos, line in lines[-_TAIL_LINES:]:
        lone = _LINE.match(line)
        if lone:
            words = _NAME_WORD.findall(lone.group(1))
            if words and all(_is_name_word(w, False) for w in words):
                found.append(NameSpan(pos + lone.start(1), pos + lone.end(1), strong=False))
    return _merge(found)


def _merge(spans: list[NameSpan]) -> list[NameSpan]:
    out: list[NameSpan] = []
    for s in sorted(spans, key=lambda s: (s.start, -s.end)):
        if out and s.start <= out[-1].end:
            last = out[-1]
            out[-1] = NameSpan(last.start, max(last.end, s.end), last.strong or s.strong)
        else:
            out.append(s)
    return out


def name_words(text: str) -> tuple[frozenset[str], frozenset[str]]:
    """Lower-case words of ``text`` in strong and in weak (lone-line only) name contexts.

    >>> strong, weak = name_words("Signed by: JOHN SMITH\\nJane Doe\\nCHEST PA")
    >>> sorted(strong), sorted(weak)
    (['john', 'smith'], ['chest', 'doe', 'jane', 'pa'])
    """
    strong: set[str] = set()
    weak: set[str] = set()
    for s in name_spans(text):
        words = {w.lower() for w in _WORD.findall(text[s.start : s.end])}
        (strong if s.strong else weak).update(words)
    return frozenset(strong), frozenset(weak)


@cache
def _person_name_keywords() -> frozenset[str]:
    """Normalised DICOM keywords whose value representation is PN (person name)."""
    from pydicom.datadict import DicomDictionary

    keys = {str(entry[4]) for entry in DicomDictionary.values() if entry[0] == "PN" and entry[4]}
    return frozenset(_normalise_key(k) for k in keys)


def _normalise_key(key: str) -> str:
    return re.sub(r"[\W_]+", "", key).lower()


def person_name_fields(metadata: Mapping[str, object]) -> list[str]:
    """Values of the person-name fields (every DICOM PN keyword, any spelling of its key).

    >>> person_name_fields({"PatientName": "DOE^JANE", "patient_name": "Roe", "Modality": "CR"})
    ['DOE^JANE', 'Roe']
    """
    keys = _person_name_keywords()
    out: list[str] = []
    for key, value in metadata.items():
        if _normalise_key(str(key)) not in keys or value is None:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        out.extend(str(v) for v in values if str(v).strip())
    return out


def person_name_words(metadata: Mapping[str, object]) -> frozenset[str]:
    """Lower-case words of the person-name fields of one study's metadata."""
    return frozenset(w.lower() for v in person_name_fields(metadata) for w in _WORD.findall(v))


class NameBlocklist:
    """Learns, over a corpus, the words that may name a person and so must never be scored.

    Parameters
    ----------
    weak_share
        A word seen only in weak contexts (a line of one to three capitalised words) is blocked
        when more than this share of the studies that hold it show it in such a line.

    Examples
    --------
    >>> reports = ["Tube.\\nSIGNED BY JOHN SMITH, MD", "Chest tube.\\nKim Lee", "Chest tube.\\nChest Tube"]
    >>> sorted(NameBlocklist().fit(reports, [{"PatientName": "Roe^Ann"}]).words_)
    ['ann', 'john', 'kim', 'lee', 'roe', 'smith']
    """

    def __init__(self, *, weak_share: float = 0.5) -> None:
        self.weak_share = weak_share

    def fit(
        self, reports: Iterable[str | None], metadata: Iterable[Mapping[str, object] | None] = ()
    ) -> NameBlocklist:
        strong: set[str] = set()
        weak: Counter[str] = Counter()
        seen: Counter[str] = Counter()
        for text in reports:
            if not text:
                continue
            # as the scrubber sees it: "JOHN SMITH 11/23/2026" is a lone name
            text = WITH_DIGIT.sub("", text)
            s, w = name_words(text)
            strong |= s
            weak.update(w)
            seen.update({x.lower() for x in _WORD.findall(text)})
        fields: set[str] = set()
        for meta in metadata:
            if meta:
                fields |= person_name_words(meta)
        lone = {x for x, n in weak.items() if n > self.weak_share * seen[x]}
        self.context_words_ = frozenset(strong | lone)
        self.field_words_ = frozenset(fields)
        self.words_ = self.context_words_ | self.field_words_
        return self
