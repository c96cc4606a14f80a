"""A simulated chest X-ray inference stream: events with DICOM-style metadata and varied reports.

Each study draws attributes (view, support devices, sex, age band, scanner), a confirmed
label, a report written by a phrase grammar that mentions what the image would show the way
a radiologist does (not every report names every attribute; synonyms vary), and a
prediction from a simulated black-box classifier whose errors are uniform at ``base_error``
except on one planted group, where they occur at ``slice_error``. Reports and headers carry
invented names, record numbers and dates, so that scrubbing is exercised on every run.

The planted failures follow the paper's three modes:

``devices``   spurious correlation: cases without the finding but with support devices are
              called positive (the classifier learned devices as a shortcut);
``lateral``   rare-slice undertraining: positive lateral views are missed;
``portable``  noisy labels on frontal portable AP films: positives there are missed.

With ``signoffs=True`` each report also ends with a radiologist's sign-off, written the way
dictation systems do (all capitals or mixed case; ``Dr``, ``Dr.``, ``MD``, ``M.D.``, ``DO``;
``signed by``, ``dictated by``, ``discussed with``, ``read by``; a name alone on a line), with
a date of birth, a phone number and an accession number in the header; the planted group's
studies are nearly all signed by one radiologist (:data:`SHARED_SIGNER`, whose dictation system
writes in capitals), so that the name correlates with the error slice. The sign-offs come from
a random stream of their own: the rest of the stream is the same as without them.

:func:`radiology_report` writes the same kind of report for a case with several findings
(pneumothorax, cardiomegaly, pleural effusion), named support devices and sides; the
simulated image source (:mod:`agent.simulate.images`) uses it so that its reports describe
what its pixels show.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEVICE_KINDS",
    "FAILURES",
    "REFERRERS",
    "SHARED_SIGNER",
    "SIGNERS",
    "StreamSpec",
    "generate_stream",
    "radiology_report",
    "write_jsonl",
]

FAILURES = ("devices", "lateral", "portable")

_FIRST = ["Jane", "John", "Maria", "Wei", "Amir", "Olga", "Kwame", "Priya", "Lars", "Sofia", "Hiro", "Nadia"]
_LAST = ["Doe", "Okafor", "Larsen", "Nguyen", "Schmidt", "Haddad", "Kowalski", "Tanaka", "Moreau", "Silva"]
_DOCTORS = ["Whitfield", "Ramanathan", "Castellano", "Brennan", "Oyelaran", "Lindqvist"]
_SCANNERS = ["Philips", "Siemens", "Carestream", "Agfa", "Fujifilm"]
#: The radiologist who signs (nearly) every study of the planted group when ``signoffs`` is on.
SHARED_SIGNER = ("Thaddeus", "Quenneville")
#: The other signing radiologists.
SIGNERS = (
    ("Ingrid", "Achterberg"),
    ("Rafael", "Oyarzun"),
    ("Siobhan", "Nkemelu"),
    ("Dmitri", "Volkonsky"),
    ("Marisol", "Fairbrother"),
    ("Kenji", "Halvorsen"),
)
#: Referring doctors named in "discussed with" sentences of the sign-offs.
REFERRERS = ("Okwuosa", "Delacroix", "Pemberton", "Zubiri")

_DEVICES = [
    "Right-sided chest tube in place.",
    "Left chest drain with its tip at the apex.",
    "Endotracheal tube terminates above the carina.",
    "Right internal jugular central venous line, tip in the SVC.",
    "Nasogastric tube courses below the diaphragm.",
    "Left subclavian PICC line with tip in the distal SVC.",
    "Dual-lead pacemaker with leads in expected position.",
    "Tracheostomy tube in place.",
    "Support lines and tubes are unchanged in position.",
]
_PTX_TEMPLATES = (
    "Small {side} apical pneumothorax.",
    "Moderate {side} pneumothorax with visible pleural edge.",
    "There is a {side} pneumothorax measuring several centimetres.",
    "{Side} apical pneumothorax, new since the prior film.",
)
_PTX_POS = [
    t.format(side=side, Side=side.capitalize())
    for t, side in zip(_PTX_TEMPLATES, ("right", "left", "right", "left"), strict=True)
]
_PTX_NEG = [
    "No pneumothorax.",
    "No evidence of pneumothorax.",
    "Lungs are fully expanded without pneumothorax.",
    "",
]
_BACKGROUND = [
    "Heart size is normal.",
    "Cardiomediastinal silhouette within normal limits.",
    "Mild cardiomegaly.",
    "Lungs are clear.",
    "Minimal bibasilar atelectasis.",
    "No focal consolidation.",
    "Small left pleural effusion.",
    "No pleural effusion.",
    "Degenerative changes of the thoracic spine.",
    "Calcified granuloma in the right upper lobe.",
    "Hyperinflated lungs consistent with emphysema.",
]
_VIEW_TEXT = {
    "PA": ["PA and lateral views of the chest.", "Frontal PA radiograph.", "Two views of the chest.", ""],
    "AP": [
        "Portable AP view of the chest.",
        "Single portable frontal radiograph.",
        "AP semi-upright portable film.",
        "Bedside portable chest radiograph.",
    ],
    "LL": ["Lateral view of the chest.", "Left lateral radiograph.", "Lateral projection only.", ""],
}
_INDICATION = [
    "INDICATION: Shortness of breath.",
    "INDICATION: Chest pain, evaluate for pneumothorax.",
    "INDICATION: Post procedure check.",
    "INDICATION: Cough and fever.",
    "INDICATION: Trauma.",
    "INDICATION: Line placement.",
]

#: Support devices that :func:`radiology_report` can describe (and the image source can draw).
DEVICE_KINDS = ("chest_tube", "endotracheal_tube", "central_line", "enteric_tube", "pacemaker")

# Per device kind, the sentences a radiologist might write; ``{side}`` is the patient's side.
_DEVICE_PHRASES: dict[str, tuple[str, ...]] = {
    "chest_tube": (
        "{Side}-sided chest tube in place.",
        "{Side} chest drain with its tip at the apex.",
        "Pigtail catheter in the {side} pleural space.",
        "{Side} thoracostomy tube, tip projecting over the upper chest.",
    ),
    "endotracheal_tube": (
        "Endotracheal tube terminates above the carina.",
        "ET tube in satisfactory position.",
        "The patient is intubated, tube tip at the thoracic inlet.",
    ),
    "central_line": (
        "{Side} internal jugular central venous line, tip in the SVC.",
        "{Side} subclavian PICC line with tip in the distal SVC.",
        "Central venous catheter from the {side}, tip at the cavoatrial junction.",
    ),
    "enteric_tube": (
        "Nasogastric tube courses below the diaphragm.",
        "Enteric tube with tip in the stomach.",
        "Feeding tube passes below the left hemidiaphragm.",
    ),
    "pacemaker": (
        "Dual-lead pacemaker with leads in expected position.",
        "{Side} chest wall pacemaker, leads in the right atrium and ventricle.",
        "Cardiac device generator over the {side} chest.",
    ),
}
_DEVICES_UNCHANGED = (
    "Support lines and tubes are unchanged in position.",
    "Lines and tubes as above.",
    "Medical devices are stable.",
)
_CARDIO_POS = (
    "Mild cardiomegaly.",
    "The heart is enlarged.",
    "Enlarged cardiac silhouette.",
    "Moderate cardiomegaly, similar to prior.",
    "Cardiac silhouette is enlarged.",
)
_CARDIO_NEG = (
    "Heart size is normal.",
    "Cardiomediastinal silhouette within normal limits.",
    "Normal heart size.",
)
_EFFUSION_POS = (
    "Small {side} pleural effusion.",
    "Blunting of the {side} costophrenic angle, consistent with a small effusion.",
    "{Side} pleural effusion with meniscus.",
    "Layering {side} pleural fluid.",
)
_EFFUSION_BOTH = ("Small bilateral pleural effusions.", "Bilateral blunting of the costophrenic angles.")
_EFFUSION_NEG = ("No pleural effusion.", "Costophrenic angles are sharp.", "No effusion.")
_FINDING_WORDS = ("cardiomegaly", "heart", "cardiomediastinal", "effusion", "pneumothorax")
_NEUTRAL = tuple(b for b in _BACKGROUND if not any(w in b.lower() for w in _FINDING_WORDS))
_IMPRESSION_NORMAL = ("No acute cardiopulmonary process.", "No acute abnormality.", "Stable chest.")


@dataclass(frozen=True)
class StreamSpec:
    """What to simulate. Rates are probabilities.

    ``failure`` is one of :data:`FAILURES`, None, or a tuple of them (several failures planted
    at once; a study in any of their groups errs at ``slice_error``).
    """

    n_studies: int = 2000
    model: str = "pneumothorax"
    failure: str | tuple[str, ...] | None = "devices"
    prevalence: float = 0.3
    base_error: float = 0.08
    slice_error: float = 0.7
    device_rate: float = 0.25
    seed: int = 0
    bad_lines: bool = False
    start: datetime = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    signoffs: bool = False


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _pick(rng: np.random.Generator, items: Sequence[str]) -> str:
    return items[int(rng.integers(len(items)))]


def _header(rng: np.random.Generator, name: str) -> list[str]:
    """The identifying header lines a report starts with (invented, for scrubbing to remove)."""
    doctor = _pick(rng, _DOCTORS)
    return [
        f"Patient: {name}",
        f"MRN: {rng.integers(10**6, 10**7)}",
        f"Accession: A{rng.integers(10**7, 10**8)}",
        f"Referring physician: Dr. {doctor}",
        f"Exam date: 2026-11-{rng.integers(1, 28):02d}",
    ]


def _report(rng: np.random.Generator, view: str, devices: bool, positive: bool, name: str) -> str:
    header = _header(rng, name)
    body = [_pick(rng, _INDICATION), "FINDINGS:"]
    view_line = _pick(rng, _VIEW_TEXT[view])
    if view_line:
        body.append(view_line)
    if devices and rng.random() < 0.9:
        body.extend(rng.choice(_DEVICES, size=int(rng.integers(1, 3)), replace=False).tolist())
    body.append(_pick(rng, _PTX_POS) if positive else _pick(rng, _PTX_NEG))
    body.extend(rng.choice(_BACKGROUND, size=int(rng.integers(1, 4)), replace=False).tolist())
    impression = (
        "Pneumothorax as described."
        if positive
        else _pick(rng, ["No acute cardiopulmonary process.", "No acute abnormality.", "Stable chest."])
    )
    body.append(f"IMPRESSION: {impression}")
    if rng.random() < 0.3:
        body.append(f"Findings discussed with Dr. {_pick(rng, _DOCTORS)} at {rng.integers(0, 24):02d}:15.")
    return "\n".join([*header, " ".join(b for b in body if b)])


def _phone(rng: np.random.Generator) -> str:
    return f"({rng.integers(200, 999)}) {rng.integers(200, 999)}-{rng.integers(1000, 9999)}"


def _date(rng: np.random.Generator, years: tuple[int, int]) -> tuple[int, int, int]:
    return int(rng.integers(*years)), int(rng.integers(1, 13)), int(rng.integers(1, 29))


def _signoff(rng: np.random.Generator, report: str, signer: tuple[str, str], *, capitals: bool) -> str:
    """``report`` with identifying header lines added and a sign-off in one of several styles.

    With ``capitals``, only the styles in capitals (one dictation system's).
    """
    first, last = signer
    referrer = _pick(rng, REFERRERS)
    phone = _phone(rng)
    y, m, d = _date(rng, (1930, 2005))
    sy, sm, sd = _date(rng, (2026, 2027))
    us, eu = f"{sm:02d}/{sd:02d}/{sy}", f"{sd:02d}.{sm:02d}.{sy}"
    header = [f"DOB: {m:02d}/{d:02d}/{y}", f"Phone: {phone}", f"Accession No. {rng.integers(10**8, 10**9)}"]
    style = int(rng.choice([0, 5, 7])) if capitals else int(rng.integers(9))
    signoff = [
        f"FINDINGS DISCUSSED WITH DR {referrer} BY TELEPHONE AT {phone}. "
        f"ELECTRONICALLY SIGNED BY {first} {last}, MD {us}".upper(),
        f"Electronically signed by {first} {last}, MD on {us} at {rng.integers(0, 24):02d}:40",
        f"Dictated by: Dr. {last}\nDate: {eu}",
        f"{first} {last}, DO",
        f"Signed by\n{first} {last}\n{us}",
        f"SIGNED BY:\n{first} {last}".upper(),
        f"Discussed with Dr {referrer} at {phone}.\nReviewed by {first} {last} MD {eu}",
        f"READ BY: {first} {last}, M.D. {us}".upper(),
        f"Attending radiologist: {last}, {first}\nDr. {last} {us}",
    ][style]
    lines = report.split("\n")
    return "\n".join([*lines[:-1], *header, lines[-1], signoff])


def _sided(rng: np.random.Generator, templates: Sequence[str], side: str) -> str:
    return _pick(rng, templates).format(side=side, Side=side.capitalize())


def radiology_report(
    rng: np.random.Generator,
    *,
    view: str,
    devices: Sequence[tuple[str, str]] = (),
    pneumothorax: str | None = None,
    cardiomegaly: bool = False,
    effusion: str | None = None,
    name: str = "Doe Jane",
) -> str:
    """A report, with an identifying header, for a chest radiograph that shows the given findings.

    Positive findings are always described (with varied synonyms and their side); negatives,
    the view and devices are mentioned only most of the time, as in real reports.

    Parameters
    ----------
    rng
        Source of the phrase choices.
    view
        ``"PA"``, ``"AP"`` (portable) or ``"LL"`` (lateral).
    devices
        ``(kind, side)`` pairs, ``kind`` one of :data:`DEVICE_KINDS`, ``side`` the patient's
        ``"left"`` or ``"right"``.
    pneumothorax, effusion
        The patient's side (``"left"``, ``"right"``; ``"bilateral"`` for an effusion), or None.
    cardiomegaly
        Whether the heart is enlarged.
    name
        The invented patient name written into the header.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> text = radiology_report(rng, view="AP", devices=[("chest_tube", "left")], pneumothorax="left")
    >>> "pneumothorax" in text.lower(), text.startswith("Patient: Doe Jane")
    (True, True)
    """
    for kind, _ in devices:
        if kind not in _DEVICE_PHRASES:
            raise ValueError(f"expected a device kind in {DEVICE_KINDS}, got {kind!r}")
    body = [_pick(rng, _INDICATION), "FINDINGS:"]
    view_line = _pick(rng, _VIEW_TEXT[view])
    if view_line and rng.random() < 0.8:
        body.append(view_line)
    if devices and rng.random() < 0.9:
        body.extend(_sided(rng, _DEVICE_PHRASES[kind], side) for kind, side in devices)
        if rng.random() < 0.2:
            body.append(_pick(rng, _DEVICES_UNCHANGED))
    if cardiomegaly:
        body.append(_pick(rng, _CARDIO_POS))
    elif rng.random() < 0.7:
        body.append(_pick(rng, _CARDIO_NEG))
    if pneumothorax is not None:
        body.append(_sided(rng, _PTX_TEMPLATES, pneumothorax))
    elif rng.random() < 0.6:
        body.append(_pick(rng, [p for p in _PTX_NEG if p]))
    if effusion == "bilateral":
        body.append(_pick(rng, _EFFUSION_BOTH))
    elif effusion is not None:
        body.append(_sided(rng, _EFFUSION_POS, effusion))
    elif rng.random() < 0.6:
        body.append(_pick(rng, _EFFUSION_NEG))
    body.extend(rng.choice(_NEUTRAL, size=int(rng.integers(0, 3)), replace=False).tolist())
    named = [
        word
        for word, present in (
            ("pneumothorax", pneumothorax),
            ("cardiomegaly", cardiomegaly),
            ("pleural effusion", effusion),
        )
        if present
    ]
    impression = f"{', '.join(named).capitalize()} as described." if named else _pick(rng, _IMPRESSION_NORMAL)
    body.append(f"IMPRESSION: {impression}")
    header = _header(rng, name)
    if rng.random() < 0.3:
        body.append(f"Findings discussed with Dr. {_pick(rng, _DOCTORS)} at {rng.integers(0, 24):02d}:15.")
    return "\n".join([*header, " ".join(b for b in body if b)])


def generate_stream(spec: StreamSpec) -> tuple[list[dict[str, Any]], dict[str, bool]]:
    """Events (inference, report, label; in arrival order) and, per study, whether it is planted.

    Examples
    --------
    >>> events, planted = generate_stream(StreamSpec(n_studies=20, seed=1))
    >>> sorted({e["type"] for e in events})
    ['inference', 'label', 'report']
    >>> len(planted)
    20
    """
    failures = (spec.failure,) if isinstance(spec.failure, str) else tuple(spec.failure or ())
    if any(f not in FAILURES for f in failures):
        raise ValueError(f"expected failure in {FAILURES}, a tuple of them or None, got {spec.failure!r}")
    rng = np.random.default_rng(spec.seed)
    phi = np.random.default_rng([spec.seed, 10])  # sign-offs only: the main stream is unchanged
    positive_class, negative_class = spec.model, f"no_{spec.model}"
    timed: list[tuple[datetime, int, dict[str, Any]]] = []
    planted: dict[str, bool] = {}
    for i in range(spec.n_studies):
        study = f"1.2.826.0.1.3680043.{spec.seed}.{i}"
        view = str(rng.choice(["PA", "AP", "LL"], p=[0.5, 0.3, 0.2]))
        devices = bool(rng.random() < spec.device_rate * (2.0 if view == "AP" else 1.0))
        positive = bool(rng.random() < spec.prevalence)
        sex = str(rng.choice(["F", "M"]))
        age = int(np.clip(rng.normal(60, 16), 18, 98))
        name = f"{_pick(rng, _LAST)}^{_pick(rng, _FIRST)}"
        groups = {
            "devices": devices and not positive,
            "lateral": view == "LL" and positive,
            "portable": view == "AP" and positive,
        }
        in_group = any(groups[f] for f in failures)
        wrong = rng.random() < (spec.slice_error if in_group else spec.base_error)
        predicted_positive = positive != wrong
        planted[study] = in_group
        t0 = spec.start + timedelta(seconds=int(rng.integers(0, 7 * 24 * 3600)))
        metadata = {
            "Modality": str(rng.choice(["CR", "DX"])),
            "ViewPosition": view,
            "BodyPartExamined": "CHEST",
            "PatientSex": sex,
            "PatientAge": f"{age:03d}Y",
            "Manufacturer": _pick(rng, _SCANNERS),
            "SeriesDescription": {"PA": "CHEST PA", "AP": "CHEST PORTABLE AP", "LL": "CHEST LAT"}[view],
            "PatientName": name,
            "PatientID": f"MRN{rng.integers(10**6, 10**7)}",
            "StudyDate": t0.strftime("%Y%m%d"),
        }
        score = float(np.clip(rng.normal(0.8 if predicted_positive else 0.2, 0.1), 0.0, 1.0))
        timed.append(
            (
                t0,
                0,
                {
                    "type": "inference",
                    "event_id": f"inf-{spec.seed}-{i}",
                    "study_uid": study,
                    "model": spec.model,
                    "model_version": "3.1.0",
                    "timestamp": _iso(t0),
                    "prediction": positive_class if predicted_positive else negative_class,
                    "score": round(score, 4),
                    "metadata": metadata,
                },
            )
        )
        t1 = t0 + timedelta(minutes=int(rng.integers(10, 240)))
        text = _report(rng, view, devices, positive, name.replace("^", " "))
        if spec.signoffs:
            shared = phi.random() < (0.95 if in_group else 0.03)
            signer = SHARED_SIGNER if shared else SIGNERS[int(phi.integers(len(SIGNERS)))]
            text = _signoff(phi, text, signer, capitals=shared)
        timed.append(
            (
                t1,
                1,
                {
                    "type": "report",
                    "event_id": f"rep-{spec.seed}-{i}",
                    "study_uid": study,
                    "timestamp": _iso(t1),
                    "text": text,
                },
            )
        )
        t2 = t1 + timedelta(hours=int(rng.integers(1, 72)))
        timed.append(
            (
                t2,
                2,
                {
                    "type": "label",
                    "event_id": f"lab-{spec.seed}-{i}",
                    "study_uid": study,
                    "timestamp": _iso(t2),
                    "label": positive_class if positive else negative_class,
                },
            )
        )
    timed.sort(key=lambda item: (item[0], item[1]))
    events: list[dict[str, Any]] = [e for _, _, e in timed]
    if spec.bad_lines:
        events.extend(_bad_events(spec))
    return events, planted


def _bad_events(spec: StreamSpec) -> list[dict[str, Any]]:
    """One of each kind of bad input, appended after the good events."""
    t = _iso(spec.start + timedelta(days=8))
    return [
        {"type": "label", "event_id": "bad-orphan", "study_uid": "no-such-study", "timestamp": t, "label": 1},
        {
            "type": "inference",
            "event_id": "bad-missing",
            "study_uid": "x",
            "timestamp": t,
            "model": spec.model,
        },
        {"type": "label", "event_id": "bad-type", "study_uid": "x", "timestamp": t, "label": [1]},
        {
            "type": "label",
            "event_id": "bad-class",
            "study_uid": f"1.2.826.0.1.3680043.{spec.seed}.0",
            "timestamp": t,
            "label": "fracture",
            "model": spec.model,
        },
        {"type": "telemetry", "event_id": "bad-kind"},
    ]


def write_jsonl(events: Iterable[dict[str, Any]], path: str | Path, *, garbage: bool = False) -> None:
    """Write events one JSON object per line; ``garbage`` adds a line that is not JSON at all."""
    with Path(path).open("w", encoding="utf-8") as fh:
        for event in events:
            fh.write(json.dumps(event) + "\n")
        if garbage:
            fh.write('{"type": "label", "event_id": \n')
