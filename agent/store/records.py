"""What goes into the store and what comes out: inputs, batch results, dead letters, policy."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.config import StreamSettings
from agent.events import ClassLabel, Event, ReportEvent
from agent.sample import Sample

__all__ = [
    "MALFORMED",
    "ApplyResult",
    "DeadLetter",
    "EmbedWork",
    "Incoming",
    "JoinedSample",
    "LogMark",
    "StorePolicy",
    "excerpt",
    "withheld",
]

#: Reasons of inputs that broke the contract: only these keep (an excerpt of) their raw bytes.
MALFORMED = frozenset(
    {
        "invalid_json",
        "not_an_object",
        "unknown_type",
        "missing_field",
        "wrong_type",
        "oversized_report",
        "oversized_event",
        "oversized_field",
        "unprocessable",
    }
)


@dataclass(frozen=True)
class StorePolicy:
    """The join, expiry, window and retention rules the store applies."""

    label_delay_seconds: float = 14 * 24 * 3600
    window_size: int = 5000
    window_max_age_seconds: float = 90 * 24 * 3600
    max_future_seconds: float = 7 * 24 * 3600
    classes: Mapping[str, tuple[ClassLabel, ...]] = field(default_factory=dict)
    default_classes: tuple[ClassLabel, ...] = ()
    """Classes of a model not named in ``classes`` (none: the classes the model predicts)."""
    extra_classes: tuple[ClassLabel, ...] = ()
    """Classes taken beside those a model predicts (an audit's ``--target-class``)."""
    keep_refits: int = 50
    """Refits (reports and slice history) kept per model and target class."""
    keep_vectors: int = 200_000
    """Embedding vectors kept in the store's cache (oldest dropped first)."""
    keep_sent_dead_letters: int = 100_000
    """Delivered dead letters remembered (to recognise re-deliveries)."""
    dead_letter_excerpt_bytes: int = 4096
    """Raw bytes of a malformed input kept in its dead letter, at most."""
    maintenance_chunk: int = 500
    """Studies one maintenance transaction expires or prunes, at most."""
    maintenance_interval_seconds: float = 0.0
    """Expire and prune at most this often (0: after every batch); see :meth:`Store.apply`."""

    @classmethod
    def from_settings(cls, s: StreamSettings) -> StorePolicy:
        """The policy a :class:`~agent.config.StreamSettings` section describes."""
        return cls(
            label_delay_seconds=s.label_delay_seconds,
            window_size=s.window_size,
            window_max_age_seconds=s.window_max_age_seconds,
            max_future_seconds=s.max_future_seconds,
            classes={m: tuple(c) for m, c in s.classes.items()},
            keep_refits=s.keep_refits,
            keep_vectors=s.keep_vectors,
            maintenance_interval_seconds=s.maintenance_interval_seconds,
        )


@dataclass(frozen=True)
class Incoming:
    """One input as the store receives it: a decoded event, or the reason it could not be decoded.

    ``source`` says where it came from and must be unique per input (``topic:partition:offset``,
    ``replay:file:line``); it keys dead letters and tells a re-delivery from a true duplicate.
    """

    source: str
    raw: bytes
    event: Event | None = None
    reason: str | None = None
    message: str = ""


@dataclass(frozen=True)
class LogMark:
    """The last message of a batch applied from one partition: its offset and a digest of its bytes.

    Kept with the batch, so that the agent can later ask the broker whether that message is still
    where it was read (:mod:`agent.stream.continuity`).
    """

    topic: str
    partition: int
    offset: int
    digest: str


@dataclass(frozen=True)
class JoinedSample:
    """A sample that entered a window in this batch (for drift detection and metrics)."""

    seq: int
    model: str
    prediction: ClassLabel
    label: ClassLabel
    label_delay_seconds: float
    timestamp: float
    """Event time of the inference (seconds since the epoch)."""


@dataclass
class ApplyResult:
    """What one batch did; duplicates and re-deliveries changed nothing."""

    accepted: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    redelivered: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    joined: list[JoinedSample] = field(default_factory=list)
    expired: int = 0
    to_embed: int = 0
    models: set[str] = field(default_factory=set)
    """Models whose window changed."""


@dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered input, as kept in the outbox."""

    id: int
    source: str
    reason: str
    message: str
    raw: bytes | None
    at: float


@dataclass(frozen=True)
class EmbedWork:
    """A row whose modalities have not been through the embedding cache yet."""

    kind: str  # "inference" or "report"
    key: tuple[str, ...]
    sample: Sample
    fetch_failures: int = 0
    """Failed fetches of the image from the PACS so far (a row waits between tries)."""
    first_failure_at: float | None = None
    """When the first of those failed (store clock); the retry policy gives up some time after it."""


def excerpt(raw: bytes | None, limit: int) -> tuple[bytes | None, str]:
    """At most ``limit`` bytes of a raw input, and a note of its full size when it was cut.

    >>> excerpt(b"abcdef", 4)
    (b'abcd', ' (excerpt: 4 of 6 bytes)')
    >>> excerpt(b"ab", 4)
    (b'ab', '')
    """
    if raw is None or len(raw) <= limit:
        return raw, ""
    return raw[:limit], f" (excerpt: {limit} of {len(raw)} bytes)"


def withheld(event: Event) -> bytes:
    """A decoded event as a dead letter keeps it: every field but report text and metadata, which
    may carry identifiers and are replaced by their size.

    >>> from agent.events import decode_event
    >>> e = decode_event({"type": "report", "event_id": "r1", "study_uid": "s1", "text": "Dr X",
    ...                   "timestamp": "2026-11-29T10:00:00Z"})
    >>> json.loads(withheld(e))["text"]
    '<4 characters withheld>'
    """
    # The declared fields only: unknown ones are kept on the event and ignored, and are never
    # serialised (one nested 300 levels deep would fail the dump, and lose a valid event).
    declared = set(type(event).model_fields) - {"metadata"}
    data: dict[str, Any] = event.model_dump(mode="json", include=declared)
    data = {k: v for k, v in data.items() if v is not None}
    if isinstance(event, ReportEvent):
        data["text"] = f"<{len(event.text)} characters withheld>"
    data["timestamp"] = event.timestamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")
