"""Refits: the schedule, the lease that lets one worker refit a model at a time, and what each refit
found (reports, slice history, tracker state, drift events), bounded by ``keep_refits``."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from agent.events import ClassLabel
from agent.store.db import q
from agent.store.work import WorkMixin

__all__ = ["HistoryMixin"]

_KEEP_ASSIGNMENTS = 1000


def _dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class HistoryMixin(WorkMixin):
    """The refit schedule, leases and history."""

    # ------------------------------------------------------------------ schedule

    def due_models(self, now: float, every_labels: int, every_seconds: float) -> list[str]:
        """Models with ``every_labels`` new labels since their last refit, or any new label and
        ``every_seconds`` passed since it (or since their first label)."""
        with self._read() as conn:
            rows = q(
                conn,
                "SELECT model FROM models WHERE labels_total - labels_at_refit >= :n OR "
                "(labels_total > labels_at_refit AND refit_clock IS NOT NULL AND :now - refit_clock >= :s)"
                " ORDER BY model",
                {"n": every_labels, "now": now, "s": every_seconds},
            ).fetchall()
        return [r[0] for r in rows]

    def labels_since_refit(self, model: str) -> int:
        """New labels of the model since its last refit."""
        with self._read() as conn:
            value = q(
                conn, "SELECT labels_total - labels_at_refit FROM models WHERE model = :m", {"m": model}
            ).scalar()
        return int(value or 0)

    def mark_refit(self, model: str, labels_total: int, now: float) -> None:
        """Record that a refit covered the model's labels up to ``labels_total``."""
        self._run(
            lambda conn: q(
                conn,
                "UPDATE models SET labels_at_refit = CASE WHEN labels_at_refit > :n THEN labels_at_refit"
                " ELSE :n END, refit_clock = :now, refits = refits + 1 WHERE model = :m",
                {"n": labels_total, "now": now, "m": model},
            )
        )

    # ------------------------------------------------------------------ leases

    def acquire_lease(self, name: str, holder: str, seconds: float) -> bool:
        """Take or renew the lease ``name`` for ``seconds``: granted when it is free, lapsed, or
        already ``holder``'s. Leases use the workers' clocks, which must agree to well within a lease."""
        now = self._clock()
        row = self._run(
            lambda conn: q(
                conn,
                "INSERT INTO leases (name, holder, expires_at) VALUES (:n, :h, :exp)"
                " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
                " expires_at = excluded.expires_at, generation = leases.generation"
                " + CASE WHEN leases.holder = excluded.holder THEN 0 ELSE 1 END"
                " WHERE leases.holder = excluded.holder OR leases.expires_at < :now RETURNING holder",
                {"n": name, "h": holder, "exp": now + seconds, "now": now},
            ).fetchone()
        )
        return row is not None

    def release_lease(self, name: str, holder: str) -> None:
        """Give the lease back (only ``holder`` can)."""
        self._run(
            lambda conn: q(
                conn,
                "UPDATE leases SET expires_at = 0 WHERE name = :n AND holder = :h",
                {"n": name, "h": holder},
            )
        )

    def lease(self, name: str) -> tuple[str, float, int] | None:
        """``(holder, expires_at, generation)`` of a lease, if it was ever taken."""
        with self._read() as conn:
            row = q(
                conn, "SELECT holder, expires_at, generation FROM leases WHERE name = :n", {"n": name}
            ).fetchone()
        return (row[0], float(row[1]), int(row[2])) if row else None

    # ------------------------------------------------------------------ history

    def tracker_state(self, model: str, target: ClassLabel) -> dict[str, Any] | None:
        """The saved slice-tracking state of a (model, target class), if any."""
        with self._read() as conn:
            value = q(
                conn,
                "SELECT state FROM trackers WHERE model = :m AND target = :t",
                {"m": model, "t": _dump(target)},
            ).scalar()
        return json.loads(value) if value else None

    def warm_state(self, model: str, target: ClassLabel) -> bytes | None:
        """What the last refit of a (model, target class) left for the next to start from, if any."""
        with self._read() as conn:
            value = q(
                conn,
                "SELECT state FROM warm_states WHERE model = :m AND target = :t",
                {"m": model, "t": _dump(target)},
            ).scalar()
        return bytes(value) if value is not None else None

    def next_refit_number(self, model: str, target: ClassLabel) -> int:
        """The number the next refit of a (model, target class) will get (1 for the first)."""
        with self._read() as conn:
            value = q(
                conn,
                "SELECT MAX(number) FROM refits WHERE model = :m AND target = :t",
                {"m": model, "t": _dump(target)},
            ).scalar()
        return int(value or 0) + 1

    def record_refit(
        self,
        model: str,
        target: ClassLabel,
        number: int,
        report: Mapping[str, Any],
        tracker_state: Mapping[str, Any],
        *,
        lease: tuple[str, str] | None = None,
        warm_state: bytes | None = None,
    ) -> bool:
        """Keep one refit's report, its slices' tracked ids and states, the tracker state and the
        state the next refit starts from (``warm_state``, when given); older refits beyond
        ``keep_refits`` go.

        With ``lease=(name, holder)`` nothing is written unless ``holder`` still holds the lease (a
        worker that lost it while refitting must not overwrite its successor's history); returns
        whether it was written.
        """
        window = report.get("window", {})
        slices = report.get("slices", [])
        t = _dump(target)

        def work(conn: Any) -> bool:
            if lease is not None:
                held = q(
                    conn,
                    "SELECT 1 FROM leases WHERE name = :n AND holder = :h AND expires_at >= :now",
                    {"n": lease[0], "h": lease[1], "now": self._clock()},
                ).fetchone()
                if held is None:
                    return False
            key = {"m": model, "t": t, "num": number}
            q(conn, "DELETE FROM refits WHERE model = :m AND target = :t AND number = :num", key)
            q(conn, "DELETE FROM slice_history WHERE model = :m AND target = :t AND number = :num", key)
            q(
                conn,
                "INSERT INTO refits (model, target, number, at, window_n, n_errors, n_slices, report)"
                " VALUES (:m, :t, :num, :at, :n, :e, :k, :r)",
                {
                    **key,
                    "at": self._clock(),
                    "n": int(window.get("n", 0)),
                    "e": int(window.get("n_errors", 0)),
                    "k": len(slices),
                    "r": json.dumps(report),
                },
            )
            for s in slices:
                q(
                    conn,
                    "INSERT INTO slice_history (model, target, number, slice_id, rank, status, size,"
                    " error_rate, rest_error_rate, p_value) VALUES (:m, :t, :num, :id, :rank, :status,"
                    " :size, :er, :rer, :p) ON CONFLICT DO NOTHING",
                    {
                        **key,
                        "id": s["id"],
                        "rank": s.get("rank"),
                        "status": s.get("status", ""),
                        "size": s.get("size"),
                        "er": s.get("error_rate"),
                        "rer": s.get("rest_error_rate"),
                        "p": s.get("p_value"),
                    },
                )
            q(
                conn,
                "INSERT INTO trackers (model, target, state) VALUES (:m, :t, :s)"
                " ON CONFLICT (model, target) DO UPDATE SET state = excluded.state",
                {"m": model, "t": t, "s": json.dumps(tracker_state)},
            )
            if warm_state is not None:
                q(
                    conn,
                    "INSERT INTO warm_states (model, target, number, state) VALUES (:m, :t, :num, :w)"
                    " ON CONFLICT (model, target) DO UPDATE SET number = excluded.number,"
                    " state = excluded.state",
                    {**key, "w": warm_state},
                )
            oldest = {"m": model, "t": t, "keep": number - self.policy.keep_refits}
            q(conn, "DELETE FROM refits WHERE model = :m AND target = :t AND number <= :keep", oldest)
            q(conn, "DELETE FROM slice_history WHERE model = :m AND target = :t AND number <= :keep", oldest)
            return True

        return bool(self._run(work))

    def slice_history(self, model: str, target: ClassLabel) -> list[dict[str, Any]]:
        """Every recorded slice of a (model, target class), by refit then rank."""
        with self._read() as conn:
            cur = q(
                conn,
                "SELECT number, slice_id, rank, status, size, error_rate, rest_error_rate, p_value"
                " FROM slice_history WHERE model = :m AND target = :t ORDER BY number, rank",
                {"m": model, "t": _dump(target)},
            )
            names = list(cur.keys())
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def latest_report(self, model: str, target: ClassLabel) -> dict[str, Any] | None:
        """The last refit's report of a (model, target class)."""
        with self._read() as conn:
            value = q(
                conn,
                "SELECT report FROM refits WHERE model = :m AND target = :t ORDER BY number DESC LIMIT 1",
                {"m": model, "t": _dump(target)},
            ).scalar()
        return json.loads(value) if value else None

    def latest_reports(self) -> list[dict[str, Any]]:
        """The last refit's report of every (model, target class), by model and target."""
        with self._read() as conn:
            rows = q(
                conn,
                "SELECT r.report FROM refits r JOIN (SELECT model, target, MAX(number) AS number FROM refits"
                " GROUP BY model, target) last ON last.model = r.model AND last.target = r.target"
                " AND last.number = r.number ORDER BY r.model, r.target",
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    # ------------------------------------------------------------------ drift and assignments

    def record_drift(self, model: str, cls: ClassLabel, seq: int, error_rate: float) -> bool:
        """Record a drift detection at a sample; returns False when it was recorded before."""
        return bool(
            self._run(
                lambda conn: (
                    q(
                        conn,
                        "INSERT INTO drift_events (model, class, seq, error_rate, at)"
                        " VALUES (:m, :c, :s, :e, :at) ON CONFLICT DO NOTHING",
                        {"m": model, "c": _dump(cls), "s": seq, "e": error_rate, "at": self._clock()},
                    ).rowcount
                )
            )
        )

    def drift_events(self, model: str) -> list[tuple[ClassLabel, int, float]]:
        """``(class, seq, error_rate)`` of every drift detected for a model."""
        with self._read() as conn:
            rows = q(
                conn,
                "SELECT class, seq, error_rate FROM drift_events WHERE model = :m ORDER BY seq",
                {"m": model},
            ).fetchall()
        return [(json.loads(c), int(s), float(e)) for c, s, e in rows]

    def drift_times(self, model: str) -> list[float]:
        """When (wall-clock time) each drift of a model was detected, in order."""
        with self._read() as conn:
            rows = q(
                conn, "SELECT at FROM drift_events WHERE model = :m ORDER BY at", {"m": model}
            ).fetchall()
        return [float(a) for (a,) in rows]

    def record_assignment(self, partitions: Sequence[tuple[str, int]], *, worker: str = "") -> None:
        """Record the partitions a worker was just given (after a rebalance); the last 1,000 are kept."""

        def work(conn: Any) -> None:
            q(
                conn,
                "INSERT INTO assignments (worker, partitions, at) VALUES (:w, :p, :at)",
                {"w": worker, "p": json.dumps(sorted([t, p] for t, p in partitions)), "at": self._clock()},
            )
            q(
                conn,
                "DELETE FROM assignments WHERE id <= (SELECT MAX(id) FROM assignments) - :k",
                {"k": _KEEP_ASSIGNMENTS},
            )

        self._run(work)

    def assigned_workers(self) -> list[str]:
        """Every worker that recorded an assignment (of those kept), sorted."""
        with self._read() as conn:
            return [r[0] for r in q(conn, "SELECT DISTINCT worker FROM assignments ORDER BY worker")]

    def assignments(self, worker: str | None = None) -> list[list[tuple[str, int]]]:
        """Every assignment recorded (of one worker, when named), oldest first."""
        with self._read() as conn:
            rows = q(
                conn,
                "SELECT partitions FROM assignments WHERE CAST(:w AS TEXT) IS NULL OR worker = :w"
                " ORDER BY id",
                {"w": worker},
            ).fetchall()
        return [[(t, int(p)) for t, p in json.loads(r[0])] for r in rows]
