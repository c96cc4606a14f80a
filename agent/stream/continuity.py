"""Is the log the agent reads still the log it read? Recreated topics, lost logs, rewound positions.

A consumer's offset means something only in the log it was taken from. When a topic is deleted and
created again, or a broker loses its data, a running consumer keeps its position in the old log:
where the new log is shorter, it waits until the new log grows past that offset and silently skips
everything before it (Kafka answers such a fetch with an error that the client turns into a reset;
other brokers simply wait). A consumer that is moved back re-reads what it applied.

The agent watches for each of these, per partition it is assigned:

``recreated``
    The broker's id of the topic is not the one the store recorded (Kafka 2.8+ gives each topic a
    random id; a topic created again gets a new one).
``reused``
    The message at the offset of the last applied batch (its :class:`~agent.store.LogMark`) is not
    the message that was applied: the offsets now number another log.
``truncated``
    The log ends before that offset, and the message is not there, on two checks in a row (one
    check could meet a broker that answers late).
``rewound``
    A batch starts before the offset this process last committed for its partition.

The first three are handled by one policy: the partition is read again from the start of its
current log, which idempotency makes safe (events already applied are recognised by their ids and
counted as re-deliveries, never applied twice). A rewind needs no action for the same reason. Each
is logged at ERROR and counted (``slice_agent_log_resets_total{event_type, reason}``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.store import LogMark

if TYPE_CHECKING:
    from agent.store import Store
    from agent.stream.ingest import Message

__all__ = [
    "Continuity",
    "LogProbe",
    "Reset",
    "batch_marks",
    "digest",
    "parse_source",
    "rewinds",
]

log = logging.getLogger(__name__)

_NO_ID = {"", "00000000-0000-0000-0000-000000000000", "AAAAAAAAAAAAAAAAAAAAAA"}


def digest(value: bytes | None) -> str:
    """A short digest of a message's bytes, to recognise it at its offset.

    >>> len(digest(b"{}")), digest(b"{}") == digest(b"{}"), digest(b"{}") == digest(b"[]")
    (32, True, False)
    """
    return hashlib.blake2b(value or b"", digest_size=16).hexdigest()


def parse_source(source: str) -> tuple[str, int, int] | None:
    """``topic:partition:offset`` as its parts; None for any other source (a replayed file).

    >>> parse_source("labels:3:1257")
    ('labels', 3, 1257)
    >>> parse_source("replay:/tmp/events.jsonl:4") is None
    True
    """
    parts = source.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    return parts[0], int(parts[1]), int(parts[2])


def batch_marks(messages: Iterable[Message]) -> list[LogMark]:
    """The last message of each partition in a batch, as marks to keep with it.

    >>> from agent.stream.ingest import Message
    >>> marks = batch_marks([Message("t:0:4", b"a"), Message("t:0:5", b"b"), Message("t:1:2", b"c")])
    >>> [(m.topic, m.partition, m.offset) for m in marks]
    [('t', 0, 5), ('t', 1, 2)]
    """
    last: dict[tuple[str, int], tuple[int, bytes | None]] = {}
    for message in messages:
        where = parse_source(message.source)
        if where is None:
            continue
        topic, partition, offset = where
        held = last.get((topic, partition))
        if held is None or offset > held[0]:
            last[(topic, partition)] = (offset, message.value)
    return [LogMark(t, p, o, digest(v)) for (t, p), (o, v) in sorted(last.items())]


@dataclass(frozen=True)
class Reset:
    """Partitions of one topic to read again from the start of their log, and why."""

    topic: str
    partitions: tuple[int, ...]
    reason: str
    topic_id: str | None = None
    detail: str = ""


class LogProbe:
    """Asks the broker about topics and single messages, outside the consumer group (blocking;
    use it from one thread). A kafka-python client, made on first use."""

    def __init__(self, bootstrap_servers: str, *, request_timeout_seconds: float = 10.0) -> None:
        self.bootstrap_servers = [h.strip() for h in bootstrap_servers.split(",") if h.strip()]
        self.timeout = request_timeout_seconds
        self._admin: Any = None
        self._consumer: Any = None

    def _clients(self) -> tuple[Any, Any]:
        from kafka import KafkaAdminClient, KafkaConsumer

        ms = int(self.timeout * 1000)
        if self._admin is None:
            self._admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap_servers, request_timeout_ms=ms, client_id="slice-agent-probe"
            )
        if self._consumer is None:
            self._consumer = KafkaConsumer(
                bootstrap_servers=self.bootstrap_servers,
                group_id=None,
                enable_auto_commit=False,
                request_timeout_ms=max(ms, 1000),
                fetch_max_wait_ms=200,
                client_id="slice-agent-probe",
            )
        return self._admin, self._consumer

    def topic_ids(self, topics: Sequence[str]) -> dict[str, str | None]:
        """The broker's id of each topic (None where it gives none, or the topic is missing)."""
        admin, _ = self._clients()
        ids: dict[str, str | None] = dict.fromkeys(topics)
        for described in admin.describe_topics(list(topics)):
            name, topic_id = described.get("name"), described.get("topic_id")
            if name in ids and described.get("error_code", 0) == 0:
                ids[name] = None if topic_id is None or str(topic_id) in _NO_ID else str(topic_id)
        return ids

    def verify(self, marks: Sequence[LogMark], *, wait_seconds: float = 2.0) -> dict[tuple[str, int], str]:
        """For each mark: ``intact`` (its message is at its offset), ``reused`` (another message is),
        ``short`` (the log ends before it and it is not there), or ``unknown`` (the broker would
        not say, or retention or compaction took the message)."""
        from kafka import TopicPartition

        if not marks:
            return {}
        _, consumer = self._clients()
        tps = {(m.topic, m.partition): TopicPartition(m.topic, m.partition) for m in marks}
        consumer.assign(list(tps.values()))
        try:
            begins = consumer.beginning_offsets(list(tps.values()))
            ends = consumer.end_offsets(list(tps.values()))
            for mark in marks:
                consumer.seek(tps[(mark.topic, mark.partition)], mark.offset)
            first: dict[Any, Any] = {}
            deadline = time.monotonic() + wait_seconds
            while len(first) < len(tps) and time.monotonic() < deadline:
                for tp, records in consumer.poll(timeout_ms=200).items():
                    if records and tp not in first:
                        first[tp] = records[0]
                        consumer.pause(tp)
        finally:
            consumer.unsubscribe()
        verdicts: dict[tuple[str, int], str] = {}
        for mark in marks:
            tp = tps[(mark.topic, mark.partition)]
            record = first.get(tp)
            if record is not None and record.offset == mark.offset:
                verdict = "intact" if digest(record.value) == mark.digest else "reused"
            elif record is None and begins.get(tp, 0) <= mark.offset and ends.get(tp, 0) <= mark.offset:
                verdict = "short"
            else:
                verdict = "unknown"
            verdicts[(mark.topic, mark.partition)] = verdict
        return verdicts

    def close(self) -> None:
        for client in (self._consumer, self._admin):
            if client is not None:
                try:
                    client.close()
                except Exception as err:  # closing is best effort
                    log.debug("probe client not closed cleanly: %s", err)
        self._admin = self._consumer = None


@dataclass
class Continuity:
    """Decides which assigned partitions must be read again (see the module docstring).

    ``check`` blocks on the broker and the store: run it off the event loop. ``strikes`` counts the
    checks in a row on which a partition's log looked short.
    """

    store: Store
    probe: LogProbe
    strikes: dict[tuple[str, int], int] = field(default_factory=dict)

    def check(self, assigned: Iterable[tuple[str, int]]) -> list[Reset]:
        """Resets due for ``assigned`` partitions, after comparing the broker with the store."""
        by_topic: dict[str, list[int]] = {}
        for topic, partition in sorted(set(assigned)):
            by_topic.setdefault(topic, []).append(partition)
        if not by_topic:
            return []
        resets: list[Reset] = []
        for topic, current in self.probe.topic_ids(sorted(by_topic)).items():
            known = self.store.topic_id(topic)
            if current is None or known == current:
                continue
            if known is None:
                self.store.record_topic_id(topic, current)
                continue
            resets.append(Reset(topic, tuple(by_topic.pop(topic)), "recreated", current, "its id changed"))
        marks = self.store.log_marks((t, p) for t, parts in by_topic.items() for p in parts)
        verdicts = self.probe.verify(list(marks.values()))
        due: dict[tuple[str, str], list[int]] = {}
        for (topic, partition), verdict in sorted(verdicts.items()):
            key = (topic, partition)
            strikes = self.strikes.pop(key, 0) + 1 if verdict == "short" else 0
            if verdict == "short" and strikes < 2:
                self.strikes[key] = strikes
                continue
            if verdict in ("reused", "short"):
                due.setdefault((topic, "reused" if verdict == "reused" else "truncated"), []).append(
                    partition
                )
        for (topic, reason), parts in sorted(due.items()):
            offsets = ", ".join(f"{p}@{marks[(topic, p)].offset}" for p in parts)
            what = "holds another message at" if reason == "reused" else "ends before"
            resets.append(
                Reset(topic, tuple(parts), reason, None, f"the log {what} partition@offset {offsets}")
            )
        return resets

    def forget(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Drop the strikes of partitions this worker no longer reads."""
        for key in partitions:
            self.strikes.pop(key, None)


def rewinds(
    first_offsets: Mapping[tuple[str, int], int], committed: Mapping[tuple[str, int], int]
) -> dict[tuple[str, int], tuple[int, int]]:
    """Partitions whose batch starts before the offset this process committed for them:
    ``{partition: (first offset, committed offset)}``.

    >>> rewinds({("t", 0): 5, ("t", 1): 40}, {("t", 0): 5, ("t", 1): 90})
    {('t', 1): (40, 90)}
    """
    return {
        key: (first, committed[key])
        for key, first in first_offsets.items()
        if key in committed and first < committed[key]
    }
