"""Typed events at the edge: the v1 contract of inference, label and report messages.

``decode_event`` is the one place raw bytes become typed events. Anything that does not
follow the contract raises :class:`agent.errors.EventError` with a bounded ``reason`` code
that the caller counts and dead-letters. Unknown fields are kept (``extra``) and ignored.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from agent.errors import EventError

__all__ = [
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
    "conflicting_inference",
    "late_label",
    "late_report",
    "unprocessable",
)


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


def decode_event(raw: bytes | str | dict[str, Any], *, max_report_chars: int = 20_000) -> Event:
    """Parse one message or JSONL line into a typed event.

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
    >>> decode_event('{"type": "label"}')
    Traceback (most recent call last):
    ...
    agent.errors.EventError: missing field 'event_id' in label event
    """
    if isinstance(raw, dict):
        obj: Any = raw
    else:
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
    if isinstance(event, ReportEvent) and len(event.text) > max_report_chars:
        raise EventError(
            f"report of {len(event.text)} characters exceeds max_report_chars={max_report_chars}",
            reason="oversized_report",
        )
    return event  # type: ignore[return-value]
