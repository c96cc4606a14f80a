"""HL7 v2 ORU^R01 radiology results as v1 report events, and their ACK or NAK.

The report text is the OBX segments of value type TX, FT or ST, in order, with HL7 escape
sequences and formatting commands undone. The study is the Study Instance UID of the IHE
Radiology ``ZDS`` segment, or of an OBX of type UI / code 113014 (DICOM "Study Instance
UID"), else the accession number (OBR-3 filler order number, else OBR-18) looked up in the
accession mapping. One event per OBR with a final (``F``) or corrected (``C``) result status;
other statuses give no event (and an AA: the message was understood).

Example
-------
>>> msg = "\\r".join([
...     "MSH|^~\\\\&|RIS|GENHOSP|SLICE|AI|20261129101500||ORU^R01|M1|P|2.5.1",
...     "OBR|1|O1|ACC9|71045^CHEST^CPT|||20261129100000|||||||||||||||20261129101000|||F",
...     "OBX|1|TX|&IMP^Impression^L||No pneumothorax.||||||F",
...     "ZDS|1.2.3.4^RIS^Application^DICOM"])
>>> [(e["study_uid"], e["text"], e["timestamp"]) for e in oru_report_events(msg)]
[('1.2.3.4', 'No pneumothorax.', '2026-11-29T10:10:00Z')]
>>> ack(msg).split("\\r")[1]
'MSA|AA|M1'
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, tzinfo
from typing import Any

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from agent.errors import EventError
from agent.messages.keys import event_id, hl7_time, study_key

__all__ = ["ack", "oru_report_events", "parse_hl7"]

_TEXT_TYPES = {"TX", "FT", "ST"}
_FINAL = frozenset({"F", "C"})
_FORMAT = re.compile(r"\\(?:E\\)?\.([a-z]{2})[+-]?\d*\\(?:E\\)?", re.IGNORECASE)
_ESCAPES = (("\\F\\", "|"), ("\\S\\", "^"), ("\\T\\", "&"), ("\\R\\", "~"), ("\\E\\", "\\"))
_STUDY_CODES = {"113014", "STUDY INSTANCE UID"}
_MAX_MESSAGE = 1 << 20
_MAX_ACK_TEXT = 80


def _unescape(text: str) -> str:
    text = _FORMAT.sub(lambda m: "\n" if m.group(1).lower() in ("br", "sp") else "", text)
    for escaped, plain in _ESCAPES:
        text = text.replace(escaped, plain)
    return text


def _normalise(raw: str | bytes) -> str:
    if isinstance(raw, bytes):
        if len(raw) > _MAX_MESSAGE:
            raise EventError(
                f"expected an HL7 message of at most {_MAX_MESSAGE} bytes, got more", reason="oversized_event"
            )
        raw = raw.decode("utf-8", errors="replace")
    if len(raw) > _MAX_MESSAGE:
        raise EventError(
            f"expected an HL7 message of at most {_MAX_MESSAGE} bytes, got more", reason="oversized_event"
        )
    text = raw.strip("\x0b\x1c\r\n ").replace("\r\n", "\r").replace("\n", "\r")
    return "\r".join(s for s in text.split("\r") if s.strip())


def parse_hl7(raw: str | bytes) -> Any:
    """Parse one HL7 v2 message (tolerantly); :class:`EventError` ``malformed_hl7`` if it is not one."""
    text = _normalise(raw)
    if not text.startswith("MSH") or len(text) < 9:
        raise EventError(
            "expected an HL7 v2 message starting with an MSH segment, got other text", reason="malformed_hl7"
        )
    try:
        return parse_message(text, find_groups=False, validation_level=VALIDATION_LEVEL.TOLERANT)
    except Exception as err:  # hl7apy raises its own and built-in types on bad input
        raise EventError(
            f"cannot parse the HL7 v2 message ({type(err).__name__})", reason="malformed_hl7"
        ) from err


def _field(segment: Any, name: str) -> str:
    try:
        return str(getattr(segment, name).to_er7()).strip()
    except Exception:  # an absent field in a tolerant parse
        return ""


def _first_component(value: str) -> str:
    return value.split("^", 1)[0].strip()


def _segments(msg: Any) -> list[Any]:
    return list(msg.children)


def oru_report_events(
    raw: str | bytes, *, accessions: Mapping[str, str] | None = None, tz: tzinfo = UTC
) -> list[dict[str, object]]:
    """The v1 report events of one ORU^R01 message (one per final or corrected OBR).

    Raises
    ------
    EventError
        ``malformed_hl7`` (not HL7, not ORU^R01, no OBR, no report text, bad time) or
        ``unknown_study`` (no Study Instance UID and no mapped accession number).
    """
    msg = parse_hl7(raw)
    msh = msg.msh
    kind = _field(msh, "msh_9").split("^")
    if kind[:2] != ["ORU", "R01"]:
        raise EventError(
            f"expected an ORU^R01 message, got {'^'.join(kind[:2])[:20]}", reason="malformed_hl7"
        )
    control_id = _field(msh, "msh_10")
    if not control_id:
        raise EventError("expected a message control id in MSH-10, got none", reason="malformed_hl7")
    sender = (_field(msh, "msh_3"), _field(msh, "msh_4"))
    message_time = _field(msh, "msh_7")
    study_from_zds = ""
    for seg in _segments(msg):
        if seg.name == "ZDS":
            study_from_zds = _first_component(str(seg.children[0].to_er7())) if seg.children else ""
    orders: list[dict[str, Any]] = []
    for seg in _segments(msg):
        if seg.name == "OBR":
            orders.append({"obr": seg, "texts": [], "study": ""})
        elif seg.name == "OBX" and orders:
            vtype = _field(seg, "obx_2").upper()
            code = _first_component(_field(seg, "obx_3")).upper()
            values = [str(r.value if isinstance(r.value, str) else r.to_er7()) for r in seg.obx_5]
            if vtype == "UI" or code in _STUDY_CODES:
                orders[-1]["study"] = _first_component(values[0]) if values else ""
            elif vtype in _TEXT_TYPES:
                orders[-1]["texts"].extend(_unescape(v) for v in values)
    if not orders:
        raise EventError(
            "expected at least one OBR segment in an ORU^R01 message, got none", reason="malformed_hl7"
        )
    events: list[dict[str, object]] = []
    for index, order in enumerate(orders):
        obr = order["obr"]
        status = _field(obr, "obr_25").upper()
        if status not in _FINAL:
            continue
        text = "\n".join(t for t in order["texts"]).strip()
        if not text:
            raise EventError(
                "expected report text in OBX segments of type TX, FT or ST, got none", reason="malformed_hl7"
            )
        accession = _first_component(_field(obr, "obr_3")) or _first_component(_field(obr, "obr_18"))
        study = study_key(order["study"] or study_from_zds, accession, accessions, reason="malformed_hl7")
        when = _field(obr, "obr_22") or _field(obr, "obr_7") or message_time
        if not when:
            raise EventError(
                "expected a result time in OBR-22, OBR-7 or MSH-7, got none", reason="malformed_hl7"
            )
        events.append(
            {
                "type": "report",
                "event_id": event_id("hl7", *sender, control_id, str(index), status),
                "study_uid": study,
                "text": text,
                "timestamp": hl7_time(when, tz=tz),
            }
        )
    return events


def _ack_text(text: str, separators: str) -> str:
    cleaned = re.sub(r"[\r\n\x0b\x1c]", " ", text)
    for ch in separators:
        cleaned = cleaned.replace(ch, " ")
    return cleaned[:_MAX_ACK_TEXT]


def ack(
    raw: str | bytes, error: EventError | None = None, *, now: datetime | None = None, reject: bool = False
) -> str:
    """The acknowledgement of ``raw``: AA when ``error`` is None, else AE (content) or AR (unreadable,
    or ``reject``: the message was not taken and may be sent again).

    The ACK mirrors the message's sender and receiver, version and processing id, and names the
    original control id in MSA-2. The error text (bounded, no message content) goes to MSA-3 and
    ERR-8. A message too broken to read its MSH gets an AR with what could be recovered.
    """
    text = _normalise(raw) if not isinstance(raw, bytes) or len(raw) <= _MAX_MESSAGE else ""
    line = text.split("\r", 1)[0] if text.startswith("MSH") else ""
    first = line if len(line) >= 8 else ""  # "MSH|^~\\&" at least: separators to read
    field_sep = first[3] if first else "|"
    encoding = first[4:8] if first else "^~\\&"
    fields = first.split(field_sep) if first else ["MSH", encoding]
    get = lambda i: fields[i] if len(fields) > i else ""  # noqa: E731  (MSH-n is fields[n - 1])
    rejected = error is not None and (reject or not first or not get(9))
    code = "AA" if error is None else ("AR" if rejected else "AE")
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")
    control = get(9)
    trigger = get(8).split(encoding[0])[1] if encoding[0] in get(8) else ""
    msh = field_sep.join(
        [
            "MSH", encoding, get(4), get(5), get(2), get(3), stamp, "",
            encoding[0].join(["ACK", trigger, "ACK"]) if trigger else "ACK",
            event_id("ack", control, stamp)[:20], get(10) or "P", get(11) or "2.5.1",
        ]
    )  # fmt: skip
    segments = [msh]
    if error is None:
        segments.append(field_sep.join(["MSA", code, control]))
    else:
        reason = _ack_text(str(error), field_sep + encoding)
        segments.append(field_sep.join(["MSA", code, control, reason]))
        hl7_code = "100" if code == "AR" else "207"  # segment sequence error / application internal error
        segments.append(
            field_sep.join(
                ["ERR", "", "", encoding[0].join([hl7_code, "", "HL70357"]), "E", "", "", "", reason]
            )
        )
    return "\r".join(segments) + "\r"
