"""Where the event logs were read: per-partition marks, topic ids, and resets of either.

A Kafka offset means something only in the log it was read from. The store keeps, per partition,
the last message of the last applied batch (:class:`~agent.store.records.LogMark`, written in the
batch's own transaction) and, per topic, the id the broker gave the topic. When either no longer
matches the broker (:mod:`agent.stream.continuity`), the partition is read again from the start of
its new log, and the reset is counted here (``log_reset:<reason>``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import Connection

from agent.store.db import Database, flush_counters, q, q_in
from agent.store.records import LogMark

__all__ = ["LogMixin", "write_log_marks"]


def write_log_marks(conn: Connection, marks: Sequence[LogMark]) -> None:
    """Record each partition's mark, unless the store already holds a later offset of it (a batch
    delivered again after a crash does not move the mark back)."""
    for mark in sorted(marks, key=lambda m: (m.topic, m.partition)):
        q(
            conn,
            "INSERT INTO log_marks (topic, part, log_offset, digest) VALUES (:t, :p, :o, :d)"
            " ON CONFLICT (topic, part) DO UPDATE SET log_offset = excluded.log_offset,"
            " digest = excluded.digest WHERE log_marks.log_offset <= excluded.log_offset",
            {"t": mark.topic, "p": mark.partition, "o": mark.offset, "d": mark.digest},
        )


class LogMixin(Database):
    """Marks, topic ids and reset counts (see the module docstring)."""

    def log_marks(self, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], LogMark]:
        """The marks held for these ``(topic, partition)`` pairs (absent: nothing applied yet)."""
        wanted = set(partitions)
        topics = sorted({topic for topic, _ in wanted})
        if not topics:
            return {}
        with self._read() as conn:
            sql = "SELECT topic, part, log_offset, digest FROM log_marks WHERE topic IN ({values})"
            rows = list(q_in(conn, sql, topics))
        marks = {(r[0], int(r[1])): LogMark(r[0], int(r[1]), int(r[2]), r[3]) for r in rows}
        return {key: mark for key, mark in marks.items() if key in wanted}

    def topic_id(self, topic: str) -> str | None:
        """The broker's id of ``topic`` when the agent last checked it (None: never checked)."""
        with self._read() as conn:
            value = q(conn, "SELECT value FROM meta WHERE key = :k", {"k": f"topic_id:{topic}"}).scalar()
        return None if value is None else str(value)

    def reset_log(self, topic: str, topic_id: str | None, partitions: Iterable[int], reason: str) -> None:
        """Forget the marks of ``partitions`` of ``topic`` (their log is gone), record the topic's
        current id, and count the reset; one transaction."""
        parts = sorted(set(partitions))

        def reset(conn: Connection) -> None:
            for part in parts:
                q(conn, "DELETE FROM log_marks WHERE topic = :t AND part = :p", {"t": topic, "p": part})
            if topic_id is not None:
                self._write_topic_id(conn, topic, topic_id)
            flush_counters(conn, {f"log_reset:{reason}": len(parts)})

        self._run(reset)

    def count_rewind(self, partitions: int = 1) -> None:
        """Count partitions that went back before an offset the worker had committed."""
        self._run(flush_counters, {"log_reset:rewound": partitions})

    def record_topic_id(self, topic: str, topic_id: str) -> None:
        """Remember the broker's id of ``topic`` (first sight, or after a reset)."""
        self._run(lambda conn: self._write_topic_id(conn, topic, topic_id))

    @staticmethod
    def _write_topic_id(conn: Connection, topic: str, topic_id: str) -> None:
        q(
            conn,
            "INSERT INTO meta (key, value) VALUES (:k, :v)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            {"k": f"topic_id:{topic}", "v": topic_id},
        )
