"""Reads of the windows: what a refit audits, and the counts the metrics show."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from agent.events import ClassLabel
from agent.sample import Sample
from agent.store.db import Database, q
from agent.store.records import StorePolicy

__all__ = ["WindowMixin"]


class WindowMixin(Database):
    """The model windows and the store's sizes and counters."""

    policy: StorePolicy

    def window(self, model: str) -> list[Sample]:
        """The model's window, oldest first (by inference time, then study): what a refit audits."""
        with self._read() as conn:
            return self._window(conn, model)

    def _oldest(self, conn: Any, model: str) -> float:
        """The oldest event time the model's window may hold (``window_max_age`` before its newest)."""
        newest = q(conn, "SELECT MAX(ts) FROM samples WHERE model = :m", {"m": model}).scalar()
        return float("inf") if newest is None else float(newest) - self.policy.window_max_age_seconds

    def _window(self, conn: Any, model: str) -> list[Sample]:
        # The window's rule is applied here as well as by pruning, which may lag a little behind.
        rows = q(
            conn,
            "SELECT s.study_uid, s.prediction, s.label, s.ts, i.score, i.metadata, i.image, i.event_id,"
            " r.text, i.image_key, i.series_uid, i.image_uid FROM samples s"
            " JOIN inferences i ON i.model = s.model AND i.study_uid = s.study_uid"
            " LEFT JOIN reports r ON r.study_uid = s.study_uid WHERE s.model = :m AND s.ts >= :oldest"
            " ORDER BY s.ts DESC, s.study_uid DESC LIMIT :n",
            {"m": model, "oldest": self._oldest(conn, model), "n": self.policy.window_size},
        ).fetchall()[::-1]
        return [
            Sample(
                study_uid=study,
                model=model,
                prediction=json.loads(prediction),
                label=json.loads(label),
                timestamp=datetime.fromtimestamp(ts, UTC),
                score=score,
                report=text,
                metadata=json.loads(metadata) if metadata is not None else None,
                image=image,
                event_id=event_id,
                image_key=key,
                series_uid=series,
                image_uid=instance,
            )
            for (
                study,
                prediction,
                label,
                ts,
                score,
                metadata,
                image,
                event_id,
                text,
                key,
                series,
                instance,
            ) in rows
        ]

    def snapshot(self, model: str) -> tuple[list[Sample], int]:
        """The model's window and the label count it covers, read from one snapshot."""
        with self._read() as conn:
            total = q(conn, "SELECT labels_total FROM models WHERE model = :m", {"m": model}).scalar()
            return self._window(conn, model), int(total or 0)

    def window_size(self, model: str) -> int:
        """How many samples the model's window holds."""
        with self._read() as conn:
            n = q(
                conn,
                "SELECT COUNT(*) FROM samples WHERE model = :m AND ts >= :oldest",
                {"m": model, "oldest": self._oldest(conn, model)},
            ).scalar()
        return min(int(n), self.policy.window_size)

    def models(self) -> list[str]:
        """Every model seen, sorted."""
        with self._read() as conn:
            return [r[0] for r in q(conn, "SELECT model FROM models ORDER BY model")]

    def outcomes(self, model: str) -> list[tuple[int, ClassLabel, ClassLabel, float]]:
        """``(seq, label, prediction, event time)`` of the model's window in join order (to rebuild
        drift state)."""
        with self._read() as conn:
            rows = q(
                conn,
                "SELECT seq, label, prediction, ts FROM samples WHERE model = :m ORDER BY seq",
                {"m": model},
            ).fetchall()
        return [(int(seq), json.loads(label), json.loads(pred), ts) for seq, label, pred, ts in rows]

    def backlog(self) -> dict[str, int]:
        """Per model, the inferences waiting for their label."""
        with self._read() as conn:
            rows = q(
                conn,
                "SELECT m.model, COUNT(i.study_uid) FROM models m LEFT JOIN inferences i ON "
                "i.model = m.model AND i.state = 'pending' GROUP BY m.model",
            ).fetchall()
        return {m: int(n) for m, n in rows}

    def sizes(self) -> dict[str, int]:
        """Rows held now: ``seen`` event ids, ``pending`` inferences, waiting ``labels``, ``reports``,
        ``samples`` in windows, ``unembedded`` rows and ``unsent`` dead letters."""
        queries = {
            "seen": "SELECT COUNT(*) FROM seen",
            "pending": "SELECT COUNT(*) FROM inferences WHERE state = 'pending'",
            "labels": "SELECT COUNT(*) FROM labels WHERE used = 0",
            "reports": "SELECT COUNT(*) FROM reports",
            "samples": "SELECT COUNT(*) FROM samples",
            "unembedded": "SELECT (SELECT COUNT(*) FROM inferences WHERE embedded = 0)"
            " + (SELECT COUNT(*) FROM reports WHERE embedded = 0)",
            "unsent": "SELECT COUNT(*) FROM dead_letters WHERE sent = 0",
        }
        with self._read() as conn:
            return {name: int(q(conn, sql).scalar()) for name, sql in queries.items()}

    def counts(self) -> dict[str, int]:
        """Every counter: ``joined:<model>``, ``expired_unlabeled:<model>``, ``dead_letter:<reason>``,
        ``duplicate``, ``extra_label``, ``extra_report``."""
        with self._read() as conn:
            return {n: int(v) for n, v in q(conn, "SELECT name, value FROM counters")}

    def dead_letter_counts(self) -> dict[str, int]:
        """Dead-lettered inputs by reason, since the store was created."""
        return {
            name.split(":", 1)[1]: n for name, n in self.counts().items() if name.startswith("dead_letter:")
        }

    def position(self, source: str) -> int:
        """How far a replayed source was read (0 when never)."""
        with self._read() as conn:
            value = q(conn, "SELECT position FROM positions WHERE source = :s", {"s": source}).scalar()
        return int(value or 0)
