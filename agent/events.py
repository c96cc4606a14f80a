"""Typed events at the edge: the v1 contract of inference, label and report messages.

``decode_event`` is the one place raw bytes become typed events. Anything that does not
follow the contract raises :class:`agent.errors.EventError` with a bounded ``reason`` code
that the caller counts and dead-letters. Unknown fields are kept (``extra``) and ignored.

Timestamps leave here in UTC: a time with a zone or offset is converted, and a time without one is
read as UTC (``naive="utc"``, the default) or rejected as ``wrong_type`` (``naive="reject"``, the
``stream.naive_timestamps`` setting), so no later comparison mixes the two kinds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from agent.config import EventSettings
from agent.errors import EventError

__all__ = [
    "DICOM_UID",
    "REASONS",
    "ClassLabel",
    "Event",
    "InferenceEvent",
    "LabelEvent",
    "ReportEvent",
    "decode_event",
]

ClassLabel = StrictStr | StrictInt
NonEmpty = Annotated[StrictStr, Field(min_length=1, max_length=256)]

#: Every reason an input can be rejected for; bounded, so it can be a metric label.
REASONS = (
    "invalid_json",
    "not_an_object",
    "unknown_type",
    "missing_field",
    "wrong_type",
    "oversized_report",
    "duplicate",
    "orphan_label",
    "orphan_report",
    "unknown_class",
    "unreadable_image",
    "image_refused",
    "oversized_event",
    "oversized_field",
    "conflicting_inference",
    "late_label",
    "late_report",
    "future_event",
    "unembeddable",
    "unprocessable",
    "malformed_hl7",
    "malformed_fhir",
    "malformed_csv",
    "unknown_study",
    "unmapped_code",
    "pacs_not_configured",
    "pacs_unauthorized",
    "pacs_bad_response",
    "pacs_gave_up",
)

#: A DICOM UID: digits and dots, at most 64 characters (PS3.5 9.1).
DICOM_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow", strict=True)

    event_id: NonEmpty
    study_uid: NonEmpty
    # JSON has no datetime type: the timestamp alone is parsed leniently, from ISO-8601 text.
    timestamp: Annotated[datetime, Field(strict=False)]


class InferenceEvent(_Event):
    """What the deployed classifier predicted for one study."""

    type: Literal["inference"]
    model: NonEmpty
    prediction: ClassLabel
    model_version: StrictStr | None = None
    series_uid: StrictStr | None = None
    image_uid: StrictStr | None = None
    score: Annotated[float, Field(strict=False, ge=0.0, le=1.0)] | None = None
    image: StrictStr | None = None
    metadata: dict[str, Any] | None = None


class LabelEvent(_Event):
    """The confirmed label of a study (optionally for one model only, via ``model``)."""

    type: Literal["label"]
    label: ClassLabel
    model: StrictStr | None = None


class ReportEvent(_Event):
    """The radiology report of a study."""

    type: Literal["report"]
    text: StrictStr


Event = InferenceEvent | LabelEvent | ReportEvent
_BY_TYPE: dict[str, type[_Event]] = {
    "inference": InferenceEvent,
    "label": LabelEvent,
    "report": ReportEvent,
}


_DEFAULT_LIMITS = EventSettings()
_ID_FIELDS = ("event_id", "study_uid", "model", "model_version", "series_uid", "image_uid")
#: Fields that name an image on the PACS: DICOM UIDs or nothing, so that no event steers a request.
_UID_FIELDS = ("series_uid", "image_uid")
_LABEL_FIELDS = ("prediction", "label")


def _raw_size(raw: bytes | str, limit: int) -> int:
    """Bytes of ``raw`` (UTF-8 for text); a text already longer than ``limit`` is not encoded."""
    if isinstance(raw, str):
        return len(raw) if len(raw) > limit or raw.isascii() else len(raw.encode("utf-8", "surrogatepass"))
    return len(raw)


def _too_deep(value: object, depth: int) -> bool:
    """Whether ``value`` nests objects or arrays deeper than ``depth`` levels."""
    if not isinstance(value, dict | list):
        return False
    if depth <= 0:
        return True
    children = value.values() if isinstance(value, dict) else value
    return any(_too_deep(child, depth - 1) for child in children)


def _check_fields(obj: Mapping[str, Any], kind: str, limits: EventSettings) -> None:
    """Refuse a field over its size limit, naming the field and the limit, never the value."""

    def over(field: str, what: str, limit: int, setting: str) -> EventError:
        return EventError(
            f"field '{field}' of {kind} event: expected {what} at most {limit} ({setting}), got more",
            reason="oversized_field",
        )

    for field in _ID_FIELDS:
        value = obj.get(field)
        if isinstance(value, str) and len(value) > limits.max_id_chars:
            raise over(field, "characters", limits.max_id_chars, "events.max_id_chars")
    for field in _LABEL_FIELDS:
        value = obj.get(field)
        if isinstance(value, str) and len(value) > limits.max_label_chars:
            raise over(field, "characters", limits.max_label_chars, "events.max_label_chars")
    image = obj.get("image")
    if isinstance(image, str) and len(image) > limits.max_image_chars:
        raise over("image", "characters", limits.max_image_chars, "events.max_image_chars")
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        return
    if len(metadata) > limits.max_metadata_keys:
        raise over("metadata", "keys", limits.max_metadata_keys, "events.max_metadata_keys")
    for key, value in metadata.items():
        if isinstance(key, str) and len(key) > limits.max_metadata_key_chars:
            raise over(
                "metadata",
                "characters per key",
                limits.max_metadata_key_chars,
                "events.max_metadata_key_chars",
            )
        if _too_deep(value, limits.max_depth - 2):
            raise over("metadata", "nesting levels", limits.max_depth, "events.max_depth")
        text = value if isinstance(value, str) else json.dumps(value)
        if len(text) > limits.max_metadata_value_chars:
            raise over(
                "metadata",
                "characters per value",
                limits.max_metadata_value_chars,
                "events.max_metadata_value_chars",
            )


def _check_uids(event: InferenceEvent) -> None:
    """Refuse a series or instance UID that is not a DICOM UID (a URL, a path), naming the field."""
    for field in _UID_FIELDS:
        value = getattr(event, field)
        if value is not None and (len(value) > 64 or not DICOM_UID.match(value)):
            raise EventError(
                f"wrong type for field '{field}' in inference event: expected a DICOM UID "
                "(digits and dots, at most 64 characters), got another value",
                reason="wrong_type",
            )


def decode_event(
    raw: bytes | str | dict[str, Any],
    *,
    max_report_chars: int = 20_000,
    limits: EventSettings | None = None,
    naive: str = "utc",
) -> Event:
    """Parse one message or JSONL line into a typed event.

    The size of the whole message is checked before it is parsed (``oversized_event``), and the
    size of each field before it is validated (``oversized_field``): ids, labels, the image path,
    and the metadata's key count, key and value lengths and nesting (``limits``, the ``events``
    settings; their defaults when None). The report text is bounded by ``max_report_chars``.

    Raises
    ------
    EventError
        With ``reason`` one of :data:`REASONS` and a message that names the field.

    Examples
    --------
    >>> e = decode_event('{"type": "label", "event_id": "e1", "study_uid": "s1", '
    ...                  '"label": 1, "timestamp": "2026-11-29T10:00:00Z"}')
    >>> e.label
    1
    >>> decode_event('{"type": "label", "event_id": "e1", "study_uid": "s1", '
    ...              '"label": 1, "timestamp": "2026-11-29T11:00:00+01:00"}').timestamp.isoformat()
    '2026-11-29T10:00:00+00:00'
    >>> decode_event('{"type": "label"}')
    Traceback (most recent call last):
    ...
    agent.errors.EventError: missing field 'event_id' in label event
    """
    limits = limits if limits is not None else _DEFAULT_LIMITS
    if isinstance(raw, dict):
        obj: Any = raw
    else:
        size = _raw_size(raw, limits.max_message_bytes)
        if size > limits.max_message_bytes:
            raise EventError(
                f"expected a message of at most {limits.max_message_bytes} bytes "
                f"(events.max_message_bytes), got {size}",
                reason="oversized_event",
            )
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            raise EventError(f"invalid JSON: {err}", reason="invalid_json") from err
        except RecursionError as err:
            raise EventError("invalid JSON: nested too deeply", reason="invalid_json") from err
    if not isinstance(obj, dict):
        raise EventError(f"expected a JSON object, got {type(obj).__name__}", reason="not_an_object")
    kind = obj.get("type")
    cls = _BY_TYPE.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise EventError(
            f"expected type 'inference', 'label' or 'report', got {kind!r}", reason="unknown_type"
        )
    _check_fields(obj, str(kind), limits)
    try:
        event = cls.model_validate(obj)
    except ValidationError as err:
        first = err.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        if first["type"] == "missing":
            raise EventError(f"missing field '{field}' in {kind} event", reason="missing_field") from err
        raise EventError(
            f"wrong type for field '{field}' in {kind} event: {first['msg']}", reason="wrong_type"
        ) from err
    if isinstance(event, InferenceEvent):
        _check_uids(event)
    if event.timestamp.tzinfo is None:
        if naive == "reject":
            raise EventError(
                f"wrong type for field 'timestamp' in {kind} event: expected a time zone or offset "
                f"(such as Z or +01:00), got {event.timestamp.isoformat()!r}",
                reason="wrong_type",
            )
        event = event.model_copy(update={"timestamp": event.timestamp.replace(tzinfo=UTC)})
    elif event.timestamp.utcoffset():
        try:
            event = event.model_copy(update={"timestamp": event.timestamp.astimezone(UTC)})
        except OverflowError as err:
            raise EventError(
                f"wrong type for field 'timestamp' in {kind} event: out of range in UTC", reason="wrong_type"
            ) from err
    if isinstance(event, ReportEvent) and len(event.text) > max_report_chars:
        raise EventError(
            f"report of {len(event.text)} characters exceeds max_report_chars={max_report_chars}",
            reason="oversized_report",
        )
    return event  # type: ignore[return-value]
