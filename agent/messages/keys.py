"""What every converter shares: the study key, stable event ids, timestamps."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone, tzinfo

from agent.errors import EventError

__all__ = ["MESSAGE_REASONS", "event_id", "hl7_time", "study_key"]

#: Reasons a hospital message is refused (in addition to :data:`agent.events.REASONS`).
MESSAGE_REASONS = ("malformed_hl7", "malformed_fhir", "malformed_csv", "unknown_study", "unmapped_code")

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_HL7_TIME = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.\d+)?([+-]\d{4})?$")


def event_id(kind: str, *parts: str) -> str:
    """A stable event id from the message's own identifiers: a replayed message dedupes."""
    digest = hashlib.sha256("\x1f".join((kind, *parts)).encode("utf-8")).hexdigest()[:32]
    return f"{kind}-{digest}"


def study_key(
    study_uid: str | None, accession: str | None, accessions: Mapping[str, str] | None, *, reason: str
) -> str:
    """The Study Instance UID, given directly or through the accession -> study UID mapping.

    The error names neither value: accession numbers identify a patient's exam.
    """
    if study_uid:
        if len(study_uid) > 64 or not _UID.match(study_uid):
            raise EventError(
                "expected a Study Instance UID (digits and dots, at most 64 characters), got another value",
                reason=reason,
            )
        return study_uid
    if accession and accessions is not None:
        found = accessions.get(accession)
        if found:
            return study_key(found, None, None, reason=reason)
    raise EventError(
        "expected a Study Instance UID, or an accession number in the accession mapping; got neither",
        reason="unknown_study",
    )


def hl7_time(value: str, *, tz: tzinfo = UTC, reason: str = "malformed_hl7") -> str:
    """An HL7 DTM (``YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]``) as ISO 8601; no offset: ``tz``."""
    match = _HL7_TIME.match(value.strip())
    if not match:
        raise EventError(
            "expected an HL7 date/time YYYYMMDDHHMM[SS][+ZZZZ], got another value", reason=reason
        )
    y, mo, d, h, mi, s, off = match.groups()
    try:
        when = datetime(int(y), int(mo or 1), int(d or 1), int(h or 0), int(mi or 0), int(s or 0))
        if off:
            sign = 1 if off[0] == "+" else -1
            minutes = sign * (int(off[1:3]) * 60 + int(off[3:5]))
            when = when.replace(tzinfo=timezone(timedelta(minutes=minutes)))
        else:
            when = when.replace(tzinfo=tz)
    except ValueError as err:
        raise EventError("expected a valid HL7 date/time, got an impossible date", reason=reason) from err
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")
