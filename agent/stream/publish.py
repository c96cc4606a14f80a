"""``slice-agent publish``: produce a JSONL event file to the topics, keyed by study (kafka-python)."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import StreamSettings
from agent.ingest import bounded_lines
from agent.stream.topics import TopicError, ensure_topics, message_key, topic_for

__all__ = ["PublishSummary", "publish_file"]

log = logging.getLogger(__name__)


@dataclass
class PublishSummary:
    """What was sent: messages per topic, how many lines could not be routed by type, and how many
    were longer than a message may be (not sent: the broker would refuse them)."""

    sent: Counter[str] = field(default_factory=Counter)
    lines: int = 0
    unroutable: int = 0
    oversized: int = 0
    seconds: float = 0.0


def _lines(path: Path, limit: int) -> Iterator[tuple[int, bytes]]:
    """Numbered non-blank lines, none held beyond ``limit + 1`` bytes (a longer one comes cut)."""
    with path.open("rb") as fh:
        for number, line in enumerate(bounded_lines(fh, limit), start=1):
            stripped = line.rstrip(b"\r\n")
            if stripped.strip():
                yield number, stripped


def _parse(line: bytes) -> Any:
    try:
        return json.loads(line)
    except (ValueError, RecursionError):
        return None


def _confirm(producer: Any, pending: list[Any]) -> None:
    """Wait until the broker has acknowledged every message sent so far; raise on the first failure."""
    producer.flush(timeout=60)
    for future in pending:
        if future.failed():
            raise future.exception
    pending.clear()


def publish_file(
    path: str | Path,
    settings: StreamSettings,
    *,
    create_topics: bool = True,
    start_line: int = 1,
    stop_line: int | None = None,
    max_message_bytes: int = 2**20,
) -> PublishSummary:
    """Send every line of a JSONL file to the topic of its type, keyed as :mod:`agent.stream.topics` says.

    Lines are sent as they are (the agent decodes them); a line that is not an event of a known type
    goes to the inference topic, where the agent dead-letters it; a line longer than
    ``max_message_bytes`` is counted and not sent (no line is read into memory whole beyond it).
    ``start_line`` and ``stop_line``
    (1-based, inclusive start, exclusive stop) send part of a file.

    Raises
    ------
    TopicError
        If the broker cannot be reached or does not acknowledge the messages.
    """
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    path = Path(path)
    started = time.perf_counter()
    if create_topics:
        ensure_topics(settings)
    summary = PublishSummary()
    pending: list[Any] = []
    try:
        producer = KafkaProducer(
            bootstrap_servers=settings.bootstrap_servers.split(","),
            client_id="slice-agent-publish",
            acks="all",
            linger_ms=5,
            retries=5,
            max_in_flight_requests_per_connection=1,
        )
    except KafkaError as err:
        raise TopicError(f"cannot reach the broker at {settings.bootstrap_servers}: {err}") from err
    try:
        for number, line in _lines(path, max_message_bytes):
            if number < start_line or (stop_line is not None and number >= stop_line):
                continue
            summary.lines += 1
            if len(line) > max_message_bytes:
                summary.oversized += 1
                log.warning("line %d is longer than %d bytes: not sent", number, max_message_bytes)
                continue
            obj = _parse(line)
            kind = obj.get("type") if isinstance(obj, dict) else None
            if kind not in ("inference", "label", "report"):
                summary.unroutable += 1
            topic = topic_for(kind, settings)
            pending.append(producer.send(topic, key=message_key(obj), value=line))
            summary.sent[topic] += 1
            if len(pending) >= 10_000:
                _confirm(producer, pending)
        _confirm(producer, pending)
    except KafkaError as err:
        raise TopicError(f"publishing to {settings.bootstrap_servers} failed: {err}") from err
    finally:
        producer.close(timeout=10)
    summary.seconds = time.perf_counter() - started
    log.info("published %d message(s) from %s in %.1f s", sum(summary.sent.values()), path, summary.seconds)
    return summary
