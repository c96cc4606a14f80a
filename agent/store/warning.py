"""The early warning's state: slice descriptions, live assignments and bucket tests."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent.events import ClassLabel
from agent.store.db import Database, q

__all__ = ["BucketRow", "LiveCase", "LiveOutcome", "WarningMixin"]


def _dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class LiveCase:
    """One inference assigned on arrival: its calibrated error probability (space's calibration)
    and, per slice it fell in, the error probability by that slice's calibration."""

    model: str
    target: ClassLabel
    study_uid: str
    number: int
    ts: float
    p_error: float
    slices: dict[str, float]


@dataclass(frozen=True)
class LiveOutcome:
    """A live case as the estimates read it: labeled (and wrong) or not, still waiting or not."""

    study_uid: str
    number: int
    ts: float
    p_error: float
    slices: dict[str, float]
    pending: bool
    label: ClassLabel | None
    prediction: ClassLabel | None


@dataclass(frozen=True)
class BucketRow:
    """One complete bucket's share test of one slice."""

    slice_id: str
    bucket: float
    number: int
    rank: int
    n: int
    inside: int
    window_share: float
    p_value: float
    warned: bool
    at: float


class WarningMixin(Database):
    """Reads and writes of :mod:`agent.warn`."""

    def record_slice_space(
        self, model: str, target: ClassLabel, number: int, record: tuple[str, bytes, bytes, bytes]
    ) -> None:
        """Keep a refit's slice description, in place of an older one of the (model, target)."""
        document, center, basis, densities = record
        self._run(
            lambda conn: q(
                conn,
                "INSERT INTO slice_spaces (model, target, number, at, document, center, basis, densities)"
                " VALUES (:m, :t, :n, :at, :d, :c, :b, :x) ON CONFLICT (model, target) DO UPDATE SET"
                " number = excluded.number, at = excluded.at, document = excluded.document,"
                " center = excluded.center, basis = excluded.basis, densities = excluded.densities"
                " WHERE slice_spaces.number <= excluded.number",
                {
                    "m": model,
                    "t": _dump(target),
                    "n": number,
                    "at": self._clock(),
                    "d": document,
                    "c": center,
                    "b": basis,
                    "x": densities,
                },
            )
        )

    def slice_space_numbers(self) -> dict[tuple[str, str], int]:
        """The refit number of each stored description, by (model, target as stored)."""
        with self._read() as conn:
            rows = q(conn, "SELECT model, target, number FROM slice_spaces").fetchall()
        return {(m, t): int(n) for m, t, n in rows}

    def slice_spaces(self) -> list[tuple[str, bytes, bytes, bytes]]:
        """Every stored description as ``(document, center, basis, densities)``."""
        with self._read() as conn:
            rows = q(
                conn, "SELECT document, center, basis, densities FROM slice_spaces ORDER BY model, target"
            ).fetchall()
        return [(d, bytes(c), bytes(b), bytes(x)) for d, c, b, x in rows]

    def record_live_cases(self, cases: Sequence[LiveCase]) -> None:
        """Keep assignments; a case assigned before keeps its first assignment."""

        def work(conn: Any) -> None:
            for c in sorted(cases, key=lambda c: (c.model, _dump(c.target), c.study_uid)):
                q(
                    conn,
                    "INSERT INTO live_cases (model, target, study_uid, number, ts, p_error, slices)"
                    " VALUES (:m, :t, :s, :n, :ts, :p, :x) ON CONFLICT DO NOTHING",
                    {
                        "m": c.model,
                        "t": _dump(c.target),
                        "s": c.study_uid,
                        "n": c.number,
                        "ts": c.ts,
                        "p": c.p_error,
                        "x": _dump(c.slices),
                    },
                )

        if cases:
            self._run(work)

    def live_outcomes(self, model: str, target: ClassLabel, since: float) -> list[LiveOutcome]:
        """The live cases of a (model, target) from event time ``since``, with their label once joined."""
        with self._read() as conn:
            rows = q(
                conn,
                "SELECT c.study_uid, c.number, c.ts, c.p_error, c.slices, i.state, s.label, s.prediction"
                " FROM live_cases c LEFT JOIN inferences i ON i.model = c.model AND i.study_uid = c.study_uid"
                " LEFT JOIN samples s ON s.model = c.model AND s.study_uid = c.study_uid"
                " WHERE c.model = :m AND c.target = :t AND c.ts >= :since ORDER BY c.ts, c.study_uid",
                {"m": model, "t": _dump(target), "since": max(since, -1e300)},
            ).fetchall()
        return [
            LiveOutcome(
                str(study),
                int(number),
                float(ts),
                float(p),
                json.loads(slices),
                state == "pending",
                None if label is None else json.loads(label),
                None if prediction is None else json.loads(prediction),
            )
            for study, number, ts, p, slices, state, label, prediction in rows
        ]

    def prune_live_cases(self, before: float) -> int:
        """Drop live cases older than event time ``before``; returns how many."""
        return int(
            self._run(lambda conn: q(conn, "DELETE FROM live_cases WHERE ts < :b", {"b": before}).rowcount)
        )

    def inference_watermark(self) -> float | None:
        """The newest inference event time the store has seen."""
        with self._read() as conn:
            value = q(conn, "SELECT value FROM meta WHERE key = 'watermark:inference'").scalar()
        return None if value is None else float(value)

    def oldest_unembedded_ts(self) -> float | None:
        """Event time of the oldest inference not embedded yet (its bucket is not complete)."""
        with self._read() as conn:
            value = q(conn, "SELECT MIN(ts) FROM inferences WHERE embedded = 0").scalar()
        return None if value is None else float(value)

    def record_buckets(self, model: str, target: ClassLabel, rows: Sequence[BucketRow]) -> int:
        """Keep tested buckets (a bucket tested before keeps its first result); returns how many
        new warnings were recorded."""
        t = _dump(target)

        def work(conn: Any) -> int:
            new = 0
            for r in sorted(rows, key=lambda r: (r.slice_id, r.bucket)):
                written = q(
                    conn,
                    "INSERT INTO slice_buckets (model, target, slice_id, bucket, number, rank, n, inside,"
                    " window_share, p_value, warned, at) VALUES (:m, :t, :id, :b, :num, :rank, :n, :k,"
                    " :w, :p, :warned, :at) ON CONFLICT DO NOTHING",
                    {
                        "m": model,
                        "t": t,
                        "id": r.slice_id,
                        "b": r.bucket,
                        "num": r.number,
                        "rank": r.rank,
                        "n": r.n,
                        "k": r.inside,
                        "w": r.window_share,
                        "p": r.p_value,
                        "warned": int(r.warned),
                        "at": r.at,
                    },
                ).rowcount
                new += int(bool(written) and r.warned)
            return new

        return int(self._run(work)) if rows else 0

    def buckets(self, model: str, target: ClassLabel, since: float = float("-inf")) -> list[BucketRow]:
        """Tested buckets of a (model, target) from bucket start ``since``, by bucket then slice."""
        with self._read() as conn:
            rows = q(
                conn,
                "SELECT slice_id, bucket, number, rank, n, inside, window_share, p_value, warned, at"
                " FROM slice_buckets WHERE model = :m AND target = :t AND bucket >= :since"
                " ORDER BY bucket, slice_id",
                {"m": model, "t": _dump(target), "since": since if since > -1e300 else -1e300},
            ).fetchall()
        return [
            BucketRow(
                str(i), float(b), int(num), int(r), int(n), int(k), float(w), float(p), bool(x), float(a)
            )
            for i, b, num, r, n, k, w, p, x, a in rows
        ]
