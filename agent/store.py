"""The streaming agent's durable state in one SQLite file: joins, window, dead letters, slice history.

Everything the agent must not lose or count twice lives here, and every change an input causes is
made in one transaction with the rest of its batch, so a batch is either fully applied or not at all.
Inputs are applied idempotently: an ``event_id`` seen before is a no-op, and a dead letter is keyed
by where its input came from (topic, partition and offset, or file and line). The caller commits
its consumer offsets only after :meth:`Store.apply` has returned, so a crash between the two
re-delivers a batch that is then recognised and skipped.

Join rules (the batch join of :mod:`agent.join`, kept in tables):

- An inference waits for its label (``pending``) until the watermark, the newest event time seen,
  has moved ``label_delay`` past it; then it ``expires`` and is counted. It stays as a tombstone
  for one more delay, so that a label arriving after that is recognised as ``late_label``.
- A label joins every waiting inference of its study (of its ``model`` only, when it names one),
  or waits itself for an inference yet to come. A label never used by the time it expires is an
  ``orphan_label`` (no inference of its study was ever seen), a ``late_label`` (its inference had
  expired) or an extra label of a study labeled before (counted, ignored: the first label wins).
- A report is kept for its study (the first report wins) and read when the window is read, so a
  report arriving after the label still reaches the audit. A report whose study has no inference
  by the time it expires is an ``orphan_report``.
- A label outside a model's configured classes (``stream.classes``) is ``unknown_class``. Without
  configured classes every label is taken: the batch join's rule, "every class the model predicted",
  depends in a stream on what has arrived so far, and would reject good labels early in a stream
  or on one worker and not another.

The window of a model is the ``window_size`` newest labeled samples (by inference time, then study)
no older than ``window_max_age`` before the model's newest sample. It is the same for every target
class of the model, since a target class only re-labels it as target-vs-rest; samples that fall out
of it are deleted. Times are event times, so a replay of a file behaves as the live stream did.

Tables: ``seen`` (event ids, for idempotency), ``inferences``, ``labels``, ``reports``, ``samples``
(the windows; ``seq`` gives join order), ``dead_letters`` (an outbox: written with the state,
marked ``sent`` once the dead-letter topic or file has it), ``counters``, ``models`` (refit
schedule and the classes each model predicted), ``refits`` and ``slice_history`` (every refit's
report and slices), ``trackers`` (slice tracking state per model and target class),
``drift_events``, ``assignments`` (partitions this worker was given) and ``positions`` (how far a
replayed file was read). Embeddings are not stored here: they live in the content-addressed
embedding cache, and ``embedded`` flags say which rows have been through it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.config import StreamSettings
from agent.errors import AgentError
from agent.events import ClassLabel, Event, InferenceEvent, LabelEvent, ReportEvent
from agent.sample import Sample

__all__ = [
    "ApplyResult",
    "DeadLetter",
    "EmbedWork",
    "Incoming",
    "JoinedSample",
    "Store",
    "StoreError",
    "StorePolicy",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# What an input that passed the contract can still raise when stored; anything else (a full disk,
# a lost file) stops the batch, so that its offsets are not committed.
_UNSTORABLE = (sqlite3.IntegrityError, sqlite3.DataError, ValueError, OverflowError, TypeError)
# Dead letters already sent are kept this long (newest first) for idempotency of re-deliveries.
_KEEP_SENT_DEAD_LETTERS = 100_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS seen (
    event_id TEXT PRIMARY KEY, kind TEXT NOT NULL, source TEXT NOT NULL, ts REAL NOT NULL);
CREATE INDEX IF NOT EXISTS seen_ts ON seen (ts);
CREATE TABLE IF NOT EXISTS inferences (
    model TEXT NOT NULL, study_uid TEXT NOT NULL, event_id TEXT NOT NULL, ts REAL NOT NULL,
    prediction TEXT NOT NULL, score REAL, metadata TEXT, image TEXT,
    state TEXT NOT NULL CHECK (state IN ('pending', 'joined', 'expired')),
    embedded INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (model, study_uid));
CREATE INDEX IF NOT EXISTS inferences_study ON inferences (study_uid);
CREATE INDEX IF NOT EXISTS inferences_state_ts ON inferences (state, ts);
CREATE INDEX IF NOT EXISTS inferences_unembedded ON inferences (embedded) WHERE embedded = 0;
CREATE TABLE IF NOT EXISTS labels (
    event_id TEXT PRIMARY KEY, study_uid TEXT NOT NULL, model TEXT, label TEXT NOT NULL,
    ts REAL NOT NULL, used INTEGER NOT NULL DEFAULT 0, source TEXT NOT NULL, raw BLOB);
CREATE INDEX IF NOT EXISTS labels_study ON labels (study_uid);
CREATE INDEX IF NOT EXISTS labels_ts ON labels (ts);
CREATE TABLE IF NOT EXISTS reports (
    study_uid TEXT PRIMARY KEY, event_id TEXT NOT NULL, ts REAL NOT NULL, text TEXT NOT NULL,
    source TEXT NOT NULL, raw BLOB, embedded INTEGER NOT NULL DEFAULT 0,
    matched INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS reports_unmatched ON reports (ts) WHERE matched = 0;
CREATE INDEX IF NOT EXISTS reports_unembedded ON reports (embedded) WHERE embedded = 0;
CREATE TABLE IF NOT EXISTS samples (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL, study_uid TEXT NOT NULL,
    prediction TEXT NOT NULL, label TEXT NOT NULL, label_event_id TEXT NOT NULL, ts REAL NOT NULL,
    UNIQUE (model, study_uid));
CREATE INDEX IF NOT EXISTS samples_window ON samples (model, ts, study_uid);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT NOT NULL UNIQUE, reason TEXT NOT NULL,
    message TEXT NOT NULL, raw BLOB, at REAL NOT NULL, sent INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS dead_letters_unsent ON dead_letters (sent) WHERE sent = 0;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS models (
    model TEXT PRIMARY KEY, predicted TEXT NOT NULL DEFAULT '[]',
    labels_total INTEGER NOT NULL DEFAULT 0, labels_at_refit INTEGER NOT NULL DEFAULT 0,
    refit_clock REAL, refits INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS refits (
    model TEXT NOT NULL, target TEXT NOT NULL, number INTEGER NOT NULL, at REAL NOT NULL,
    window_n INTEGER NOT NULL, n_errors INTEGER NOT NULL, n_slices INTEGER NOT NULL,
    report TEXT NOT NULL, PRIMARY KEY (model, target, number));
CREATE TABLE IF NOT EXISTS slice_history (
    model TEXT NOT NULL, target TEXT NOT NULL, number INTEGER NOT NULL, slice_id TEXT NOT NULL,
    rank INTEGER, status TEXT NOT NULL, size INTEGER, error_rate REAL, rest_error_rate REAL,
    p_value REAL, PRIMARY KEY (model, target, number, slice_id));
CREATE TABLE IF NOT EXISTS trackers (
    model TEXT NOT NULL, target TEXT NOT NULL, state TEXT NOT NULL, PRIMARY KEY (model, target));
CREATE TABLE IF NOT EXISTS drift_events (
    model TEXT NOT NULL, class TEXT NOT NULL, seq INTEGER NOT NULL, error_rate REAL NOT NULL,
    at REAL NOT NULL, PRIMARY KEY (model, class, seq));
CREATE TABLE IF NOT EXISTS assignments (
    id INTEGER PRIMARY KEY AUTOINCREMENT, partitions TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS positions (source TEXT PRIMARY KEY, position INTEGER NOT NULL);
"""


class StoreError(AgentError, RuntimeError):
    """The state store cannot be opened or written."""


@dataclass(frozen=True)
class StorePolicy:
    """The join, expiry and window rules the store applies (see the module docstring)."""

    label_delay_seconds: float = 14 * 24 * 3600
    window_size: int = 5000
    window_max_age_seconds: float = 90 * 24 * 3600
    max_future_seconds: float = 7 * 24 * 3600
    classes: Mapping[str, tuple[ClassLabel, ...]] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, s: StreamSettings) -> StorePolicy:
        """The policy a :class:`~agent.config.StreamSettings` section describes."""
        return cls(
            label_delay_seconds=s.label_delay_seconds,
            window_size=s.window_size,
            window_max_age_seconds=s.window_max_age_seconds,
            max_future_seconds=s.max_future_seconds,
            classes={m: tuple(c) for m, c in s.classes.items()},
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


def _epoch(t: datetime) -> float:
    return (t if t.tzinfo is not None else t.replace(tzinfo=UTC)).timestamp()


def _dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class Store:
    """The agent's state in SQLite (WAL, synchronous=FULL); safe to share between threads.

    Parameters
    ----------
    path
        The database file, created with its folder if missing; ``":memory:"`` for tests.
    policy
        Join, expiry and window rules.
    clock
        Wall-clock time source (seconds); injectable for tests.

    Examples
    --------
    >>> from agent.events import decode_event
    >>> store = Store(":memory:")
    >>> t = "2026-11-29T10:00:00Z"
    >>> inf = {"type": "inference", "event_id": "i1", "study_uid": "s1", "model": "m",
    ...        "prediction": "pos", "timestamp": t}
    >>> lab = {"type": "label", "event_id": "l1", "study_uid": "s1", "label": "pos", "timestamp": t}
    >>> batch = [Incoming(f"x:{i}", b"", decode_event(e)) for i, e in enumerate([inf, lab])]
    >>> len(store.apply(batch).joined), [s.study_uid for s in store.window("m")]
    (1, ['s1'])
    >>> store.apply(batch).redelivered  # the same inputs again change nothing
    2
    """

    def __init__(
        self,
        path: str | Path,
        policy: StorePolicy | None = None,
        *,
        clock: Any = time.time,
    ) -> None:
        self.path = str(path)
        self.policy = policy or StorePolicy()
        self._clock = clock
        self._lock = threading.RLock()
        try:
            if self.path != ":memory:":
                Path(self.path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            target = self.path if self.path == ":memory:" else str(Path(self.path).expanduser())
            self._conn = sqlite3.connect(target, timeout=30.0, isolation_level=None, check_same_thread=False)
            if self.path != ":memory:":
                self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(_SCHEMA)
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None:
                self._conn.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise StoreError(
                    f"expected store schema {SCHEMA_VERSION} in {self.path}, got {row[0]}; "
                    "use a new store_path or migrate the file"
                )
        except sqlite3.Error as err:
            raise StoreError(f"cannot open the state store at {self.path}: {err}") from err

    def __repr__(self) -> str:
        return f"Store({self.path!r})"

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()

    # ------------------------------------------------------------------ transactions

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _bump(self, conn: sqlite3.Connection, name: str, n: int = 1) -> None:
        conn.execute(
            "INSERT INTO counters VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = value + ?",
            (name, n, n),
        )

    def _dead_letter(
        self,
        conn: sqlite3.Connection,
        result: ApplyResult,
        source: str,
        reason: str,
        message: str,
        raw: bytes | None,
    ) -> None:
        cur = conn.execute(
            "INSERT OR IGNORE INTO dead_letters (source, reason, message, raw, at) VALUES (?, ?, ?, ?, ?)",
            (source, reason, message, raw, self._clock()),
        )
        if cur.rowcount:
            self._bump(conn, f"dead_letter:{reason}")
            result.dead_lettered[reason] += 1

    # ------------------------------------------------------------------ ingest

    def apply(self, items: Sequence[Incoming], *, position: tuple[str, int] | None = None) -> ApplyResult:
        """Apply a batch of inputs in one transaction; return what changed.

        Parameters
        ----------
        items
            Decoded events and undecodable inputs, in arrival order.
        position
            ``(source, offset)`` to record with the batch (a replayed file's next line), so that
            reading can resume exactly where the durable state ends.
        """
        result = ApplyResult()
        touched: set[str] = set()
        with self._transaction() as conn:
            watermark = self._watermark(conn)
            for item in items:
                conn.execute("SAVEPOINT item")
                try:
                    wm = self._apply_one(conn, item, result, touched, watermark)
                    watermark = max(watermark, wm)
                except _UNSTORABLE as err:
                    # Valid by the contract but not storable (say, an integer SQLite cannot hold):
                    # the input is dead-lettered, the batch goes on.
                    conn.execute("ROLLBACK TO item")
                    log.warning("input at %s could not be stored: %s", item.source, type(err).__name__)
                    self._dead_letter(conn, result, item.source, "unprocessable", str(err), item.raw)
                conn.execute("RELEASE item")
            conn.execute(
                "INSERT INTO meta VALUES ('watermark', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (repr(watermark),),
            )
            result.expired += self._expire(conn, watermark, result)
            for model in touched:
                self._prune_window(conn, model)
            if position is not None:
                conn.execute(
                    "INSERT INTO positions VALUES (?, ?) ON CONFLICT (source) DO UPDATE SET position = ?",
                    (position[0], position[1], position[1]),
                )
        return result

    def _watermark(self, conn: sqlite3.Connection) -> float:
        row = conn.execute("SELECT value FROM meta WHERE key = 'watermark'").fetchone()
        return float(row[0]) if row else float("-inf")

    def _apply_one(
        self,
        conn: sqlite3.Connection,
        item: Incoming,
        result: ApplyResult,
        touched: set[str],
        watermark: float,
    ) -> float:
        event = item.event
        if event is None:
            self._dead_letter(
                conn, result, item.source, item.reason or "unprocessable", item.message, item.raw
            )
            return watermark
        ts = _epoch(event.timestamp)
        seen = conn.execute("SELECT source FROM seen WHERE event_id = ?", (event.event_id,)).fetchone()
        if seen is not None:
            if seen[0] == item.source:
                result.redelivered += 1
            else:
                result.duplicates += 1
                self._bump(conn, "duplicate")
            return watermark
        conn.execute("INSERT INTO seen VALUES (?, ?, ?, ?)", (event.event_id, event.type, item.source, ts))
        if isinstance(event, InferenceEvent):
            self._on_inference(conn, item, event, ts, result, touched)
        elif isinstance(event, LabelEvent):
            self._on_label(conn, item, event, ts, result, touched)
        elif isinstance(event, ReportEvent):
            self._on_report(conn, item, event, ts, result)
        if ts <= self._clock() + self.policy.max_future_seconds:
            return ts
        log.debug("event time %s is too far ahead of the clock to move the watermark", event.timestamp)
        return watermark

    def _known(self, model: str, label: ClassLabel) -> bool:
        """Whether ``label`` is a configured class of ``model`` (True when none are configured)."""
        classes = self.policy.classes.get(model)
        # Labels and classes come from JSON and YAML: 1 and 1 compare equal, "1" and 1 do not.
        return not classes or label in classes

    def _on_inference(
        self,
        conn: sqlite3.Connection,
        item: Incoming,
        event: InferenceEvent,
        ts: float,
        result: ApplyResult,
        touched: set[str],
    ) -> None:
        existing = conn.execute(
            "SELECT event_id FROM inferences WHERE model = ? AND study_uid = ?",
            (event.model, event.study_uid),
        ).fetchone()
        if existing is not None and existing[0] == event.event_id:
            # The same inference again, after its event id was forgotten: a duplicate.
            result.duplicates += 1
            self._bump(conn, "duplicate")
            return
        if existing is not None:
            self._dead_letter(
                conn,
                result,
                item.source,
                "conflicting_inference",
                "second inference for this study and model; ignored",
                item.raw,
            )
            return
        row = conn.execute("SELECT predicted FROM models WHERE model = ?", (event.model,)).fetchone()
        predicted = set(json.loads(row[0])) if row else set()
        if row is None:
            conn.execute("INSERT INTO models (model) VALUES (?)", (event.model,))
        if event.prediction not in predicted:
            predicted.add(event.prediction)
            conn.execute(
                "UPDATE models SET predicted = ? WHERE model = ?",
                (_dump(sorted(predicted, key=lambda c: (type(c).__name__, str(c)))), event.model),
            )
        conn.execute(
            "INSERT INTO inferences (model, study_uid, event_id, ts, prediction, score, metadata, image,"
            " state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending')",
            (
                event.model,
                event.study_uid,
                event.event_id,
                ts,
                _dump(event.prediction),
                event.score,
                _dump(event.metadata) if event.metadata is not None else None,
                event.image,
            ),
        )
        conn.execute("UPDATE reports SET matched = 1 WHERE study_uid = ?", (event.study_uid,))
        result.accepted["inference"] += 1
        result.to_embed += 1
        for event_id, label_json, label_ts, source, raw in conn.execute(
            "SELECT event_id, label, ts, source, raw FROM labels WHERE study_uid = ? AND "
            "(model IS NULL OR model = ?) ORDER BY ts, event_id",
            (event.study_uid, event.model),
        ).fetchall():
            label = json.loads(label_json)
            if not self._known(event.model, label):
                self._dead_letter(
                    conn,
                    result,
                    source,
                    "unknown_class",
                    f"label {label!r} is not a class of model {event.model!r}",
                    raw,
                )
                conn.execute("DELETE FROM labels WHERE event_id = ?", (event_id,))
                continue
            self._join(conn, event.model, event.study_uid, event_id, label, label_ts, result, touched)
            return

    def _on_label(
        self,
        conn: sqlite3.Connection,
        item: Incoming,
        event: LabelEvent,
        ts: float,
        result: ApplyResult,
        touched: set[str],
    ) -> None:
        rows = conn.execute(
            "SELECT model, state FROM inferences WHERE study_uid = ? AND (? IS NULL OR model = ?)",
            (event.study_uid, event.model, event.model),
        ).fetchall()
        models = {m for m, _ in rows} | ({event.model} if event.model else set())
        known = [m for m in models if self._known(m, event.label)]
        if models and not known:
            self._dead_letter(
                conn,
                result,
                item.source,
                "unknown_class",
                f"label {event.label!r} is not a class of model(s) {sorted(models)}",
                item.raw,
            )
            return
        if rows and all(state == "expired" for _, state in rows):
            self._dead_letter(
                conn,
                result,
                item.source,
                "late_label",
                "label arrived after its inference waited label_delay_seconds and expired",
                item.raw,
            )
            return
        result.accepted["label"] += 1
        used = 0
        for model, state in rows:
            if state == "pending" and model in known:
                self._join(conn, model, event.study_uid, event.event_id, event.label, ts, result, touched)
                used = 1
        conn.execute(
            "INSERT INTO labels (event_id, study_uid, model, label, ts, used, source, raw)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                event.event_id,
                event.study_uid,
                event.model,
                _dump(event.label),
                ts,
                used,
                item.source,
                item.raw,
            ),
        )

    def _on_report(
        self, conn: sqlite3.Connection, item: Incoming, event: ReportEvent, ts: float, result: ApplyResult
    ) -> None:
        states = [
            r[0] for r in conn.execute("SELECT state FROM inferences WHERE study_uid = ?", (event.study_uid,))
        ]
        if states and all(s == "expired" for s in states):
            self._dead_letter(
                conn,
                result,
                item.source,
                "late_report",
                "report arrived after its inference waited label_delay_seconds and expired",
                item.raw,
            )
            return
        if conn.execute("SELECT 1 FROM reports WHERE study_uid = ?", (event.study_uid,)).fetchone():
            self._bump(conn, "extra_report")
            result.accepted["report"] += 1
            return
        conn.execute(
            "INSERT INTO reports (study_uid, event_id, ts, text, source, raw, matched)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (event.study_uid, event.event_id, ts, event.text, item.source, item.raw, int(bool(states))),
        )
        result.accepted["report"] += 1
        result.to_embed += 1

    def _join(
        self,
        conn: sqlite3.Connection,
        model: str,
        study: str,
        label_event_id: str,
        label: ClassLabel,
        label_ts: float,
        result: ApplyResult,
        touched: set[str],
    ) -> None:
        prediction_json, inf_ts = conn.execute(
            "SELECT prediction, ts FROM inferences WHERE model = ? AND study_uid = ?", (model, study)
        ).fetchone()
        cur = conn.execute(
            "INSERT OR IGNORE INTO samples (model, study_uid, prediction, label, label_event_id, ts)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (model, study, prediction_json, _dump(label), label_event_id, inf_ts),
        )
        if not cur.rowcount:
            return
        conn.execute(
            "UPDATE inferences SET state = 'joined' WHERE model = ? AND study_uid = ?", (model, study)
        )
        conn.execute("UPDATE labels SET used = 1 WHERE event_id = ?", (label_event_id,))
        conn.execute(
            "UPDATE models SET labels_total = labels_total + 1, refit_clock = COALESCE(refit_clock, ?)"
            " WHERE model = ?",
            (self._clock(), model),
        )
        self._bump(conn, f"joined:{model}")
        touched.add(model)
        result.joined.append(
            JoinedSample(
                int(cur.lastrowid or 0), model, json.loads(prediction_json), label, label_ts - inf_ts, inf_ts
            )
        )

    # ------------------------------------------------------------------ expiry and pruning

    def _expire(self, conn: sqlite3.Connection, watermark: float, result: ApplyResult) -> int:
        cutoff = watermark - self.policy.label_delay_seconds
        expired = 0
        for (model,) in conn.execute(
            "SELECT model FROM inferences WHERE state = 'pending' AND ts < ?", (cutoff,)
        ).fetchall():
            self._bump(conn, f"expired_unlabeled:{model}")
            expired += 1
        conn.execute(
            "UPDATE inferences SET state = 'expired', metadata = NULL, embedded = 1"
            " WHERE state = 'pending' AND ts < ?",
            (cutoff,),
        )
        for event_id, study, model, used, source, raw in conn.execute(
            "SELECT event_id, study_uid, model, used, source, raw FROM labels WHERE ts < ?", (cutoff,)
        ).fetchall():
            if not used:
                states = {
                    r[0]
                    for r in conn.execute(
                        "SELECT state FROM inferences WHERE study_uid = ? AND (? IS NULL OR model = ?)",
                        (study, model, model),
                    )
                }
                if not states:
                    self._dead_letter(
                        conn, result, source, "orphan_label", "label for a study with no inference", raw
                    )
                elif states == {"expired"}:
                    self._dead_letter(
                        conn, result, source, "late_label", "its inference expired unlabeled", raw
                    )
                else:
                    self._bump(conn, "extra_label")
            conn.execute("DELETE FROM labels WHERE event_id = ?", (event_id,))
        for study, source, raw in conn.execute(
            "SELECT study_uid, source, raw FROM reports WHERE matched = 0 AND ts < ?",
            (cutoff,),
        ).fetchall():
            self._dead_letter(
                conn, result, source, "orphan_report", "report for a study with no inference", raw
            )
            conn.execute("DELETE FROM reports WHERE study_uid = ?", (study,))
        # Tombstones and event ids are kept one more delay, to recognise late and duplicate inputs.
        forget = cutoff - self.policy.label_delay_seconds
        gone = conn.execute(
            "SELECT DISTINCT study_uid FROM inferences WHERE state = 'expired' AND ts < ?", (forget,)
        ).fetchall()
        conn.execute("DELETE FROM inferences WHERE state = 'expired' AND ts < ?", (forget,))
        self._drop_orphaned_reports(conn, [g[0] for g in gone])
        conn.execute("DELETE FROM seen WHERE ts < ?", (forget,))
        return expired

    def _drop_orphaned_reports(self, conn: sqlite3.Connection, studies: Sequence[str]) -> None:
        for study in studies:
            if not conn.execute("SELECT 1 FROM inferences WHERE study_uid = ?", (study,)).fetchone():
                conn.execute("DELETE FROM reports WHERE study_uid = ?", (study,))

    def _prune_window(self, conn: sqlite3.Connection, model: str) -> None:
        p = self.policy
        newest = conn.execute("SELECT MAX(ts) FROM samples WHERE model = ?", (model,)).fetchone()[0]
        if newest is None:
            return
        doomed = conn.execute(
            "SELECT study_uid FROM samples WHERE model = ? AND ts < ? UNION "
            "SELECT study_uid FROM (SELECT study_uid FROM samples WHERE model = ? "
            "ORDER BY ts DESC, study_uid DESC LIMIT -1 OFFSET ?)",
            (model, newest - p.window_max_age_seconds, model, p.window_size),
        ).fetchall()
        if not doomed:
            return
        studies = [d[0] for d in doomed]
        conn.executemany(
            "DELETE FROM samples WHERE model = ? AND study_uid = ?", [(model, s) for s in studies]
        )
        conn.executemany(
            "DELETE FROM inferences WHERE model = ? AND study_uid = ?", [(model, s) for s in studies]
        )
        self._drop_orphaned_reports(conn, studies)
        log.debug("window of %s: %d sample(s) aged or pushed out", model, len(studies))

    # ------------------------------------------------------------------ reads

    def window(self, model: str) -> list[Sample]:
        """The model's window, oldest first (by inference time, then study): what a refit audits."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT s.study_uid, s.prediction, s.label, s.ts, i.score, i.metadata, i.image, i.event_id,"
                " r.text FROM samples s JOIN inferences i ON i.model = s.model AND i.study_uid = s.study_uid"
                " LEFT JOIN reports r ON r.study_uid = s.study_uid WHERE s.model = ?"
                " ORDER BY s.ts, s.study_uid",
                (model,),
            ).fetchall()
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
            )
            for study, prediction, label, ts, score, metadata, image, event_id, text in rows
        ]

    def window_size(self, model: str) -> int:
        """How many samples the model's window holds."""
        with self._lock:
            return int(
                self._conn.execute("SELECT COUNT(*) FROM samples WHERE model = ?", (model,)).fetchone()[0]
            )

    def models(self) -> list[str]:
        """Every model seen, sorted."""
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT model FROM models ORDER BY model")]

    def outcomes(self, model: str) -> list[tuple[int, ClassLabel, ClassLabel, float]]:
        """``(seq, label, prediction, event time)`` of the model's window in join order (to rebuild
        drift state)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, label, prediction, ts FROM samples WHERE model = ? ORDER BY seq", (model,)
            ).fetchall()
        return [(seq, json.loads(label), json.loads(pred), ts) for seq, label, pred, ts in rows]

    def backlog(self) -> dict[str, int]:
        """Per model, the inferences waiting for their label."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT m.model, COUNT(i.study_uid) FROM models m LEFT JOIN inferences i ON "
                "i.model = m.model AND i.state = 'pending' GROUP BY m.model"
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
        with self._lock:
            return {name: int(self._conn.execute(q).fetchone()[0]) for name, q in queries.items()}

    def counts(self) -> dict[str, int]:
        """Every counter: ``joined:<model>``, ``expired_unlabeled:<model>``, ``dead_letter:<reason>``,
        ``duplicate``, ``extra_label``, ``extra_report``."""
        with self._lock:
            return {n: int(v) for n, v in self._conn.execute("SELECT name, value FROM counters")}

    def dead_letter_counts(self) -> dict[str, int]:
        """Dead-lettered inputs by reason, since the store was created."""
        return {
            name.split(":", 1)[1]: n for name, n in self.counts().items() if name.startswith("dead_letter:")
        }

    def position(self, source: str) -> int:
        """How far a replayed source was read (0 when never)."""
        with self._lock:
            row = self._conn.execute("SELECT position FROM positions WHERE source = ?", (source,)).fetchone()
        return int(row[0]) if row else 0

    # ------------------------------------------------------------------ dead-letter outbox

    def unsent_dead_letters(self, limit: int = 500) -> list[DeadLetter]:
        """Dead letters not yet handed to the dead-letter topic or file, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, source, reason, message, raw, at FROM dead_letters WHERE sent = 0"
                " ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        return [DeadLetter(*r) for r in rows]

    def mark_dead_letters_sent(self, ids: Sequence[int]) -> None:
        """Record that these dead letters were delivered; old delivered ones are forgotten."""
        if not ids:
            return
        with self._transaction() as conn:
            conn.executemany("UPDATE dead_letters SET sent = 1 WHERE id = ?", [(i,) for i in ids])
            conn.execute(
                "DELETE FROM dead_letters WHERE sent = 1 AND id <= (SELECT MAX(id) FROM dead_letters) - ?",
                (_KEEP_SENT_DEAD_LETTERS,),
            )

    def dead_letter(self, source: str, reason: str, message: str, raw: bytes | None = None) -> bool:
        """Dead-letter an input outside a batch (an unreadable image found while embedding).

        Returns whether it was new (a second call for the same ``source`` is a no-op).
        """
        result = ApplyResult()
        with self._transaction() as conn:
            self._dead_letter(conn, result, source, reason, message, raw)
        return bool(result.dead_lettered)

    # ------------------------------------------------------------------ embedding bookkeeping

    def unembedded(self, limit: int = 256) -> list[EmbedWork]:
        """Inferences and reports whose modalities have not been embedded yet, oldest first."""
        epoch = datetime.fromtimestamp(0, UTC)
        with self._lock:
            infs = self._conn.execute(
                "SELECT model, study_uid, prediction, ts, metadata, image, event_id FROM inferences"
                " WHERE embedded = 0 LIMIT ?",
                (limit,),
            ).fetchall()
            reps = self._conn.execute(
                "SELECT study_uid, ts, text, event_id FROM reports WHERE embedded = 0 LIMIT ?", (limit,)
            ).fetchall()
        work = [
            EmbedWork(
                "inference",
                (model, study),
                Sample(
                    study,
                    model,
                    json.loads(pred),
                    json.loads(pred),
                    datetime.fromtimestamp(ts, UTC),
                    metadata=json.loads(meta) if meta is not None else None,
                    image=image,
                    event_id=event_id,
                ),
            )
            for model, study, pred, ts, meta, image, event_id in infs
        ]
        work += [
            EmbedWork("report", (study,), Sample(study, "", "", "", epoch, report=text, event_id=event_id))
            for study, _, text, event_id in reps
        ]
        return work

    def mark_embedded(self, work: Sequence[EmbedWork]) -> None:
        """Record that these rows have been through the embedding cache."""
        with self._transaction() as conn:
            for w in work:
                if w.kind == "inference":
                    conn.execute(
                        "UPDATE inferences SET embedded = 1 WHERE model = ? AND study_uid = ?", w.key
                    )
                else:
                    conn.execute("UPDATE reports SET embedded = 1 WHERE study_uid = ?", w.key)

    # ------------------------------------------------------------------ refit schedule and history

    def due_models(self, now: float, every_labels: int, every_seconds: float) -> list[str]:
        """Models with ``every_labels`` new labels since their last refit, or any new label and
        ``every_seconds`` passed since it (or since their first label)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT model FROM models WHERE labels_total - labels_at_refit >= ? OR "
                "(labels_total > labels_at_refit AND refit_clock IS NOT NULL AND ? - refit_clock >= ?)"
                " ORDER BY model",
                (every_labels, now, every_seconds),
            ).fetchall()
        return [r[0] for r in rows]

    def labels_since_refit(self, model: str) -> int:
        """New labels of the model since its last refit."""
        with self._lock:
            row = self._conn.execute(
                "SELECT labels_total - labels_at_refit FROM models WHERE model = ?", (model,)
            ).fetchone()
        return int(row[0]) if row else 0

    def snapshot(self, model: str) -> tuple[list[Sample], int]:
        """The model's window and the label count it covers, read together."""
        with self._lock:
            row = self._conn.execute("SELECT labels_total FROM models WHERE model = ?", (model,)).fetchone()
            return self.window(model), int(row[0]) if row else 0

    def mark_refit(self, model: str, labels_total: int, now: float) -> None:
        """Record that a refit covered the model's labels up to ``labels_total``."""
        with self._transaction() as conn:
            conn.execute(
                "UPDATE models SET labels_at_refit = MAX(labels_at_refit, ?), refit_clock = ?,"
                " refits = refits + 1 WHERE model = ?",
                (labels_total, now, model),
            )

    def tracker_state(self, model: str, target: ClassLabel) -> dict[str, Any] | None:
        """The saved slice-tracking state of a (model, target class), if any."""
        with self._lock:
            row = self._conn.execute(
                "SELECT state FROM trackers WHERE model = ? AND target = ?", (model, _dump(target))
            ).fetchone()
        return json.loads(row[0]) if row else None

    def next_refit_number(self, model: str, target: ClassLabel) -> int:
        """The number the next refit of a (model, target class) will get (1 for the first)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT MAX(number) FROM refits WHERE model = ? AND target = ?", (model, _dump(target))
            ).fetchone()
        return int(row[0] or 0) + 1

    def record_refit(
        self,
        model: str,
        target: ClassLabel,
        number: int,
        report: Mapping[str, Any],
        tracker_state: Mapping[str, Any],
    ) -> None:
        """Keep one refit's report, its slices' tracked ids and states, and the tracker state."""
        window = report.get("window", {})
        slices = report.get("slices", [])
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO refits VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    model,
                    _dump(target),
                    number,
                    self._clock(),
                    int(window.get("n", 0)),
                    int(window.get("n_errors", 0)),
                    len(slices),
                    json.dumps(report),
                ),
            )
            conn.executemany(
                "INSERT OR REPLACE INTO slice_history VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        model,
                        _dump(target),
                        number,
                        s["id"],
                        s.get("rank"),
                        s.get("status", ""),
                        s.get("size"),
                        s.get("error_rate"),
                        s.get("rest_error_rate"),
                        s.get("p_value"),
                    )
                    for s in slices
                ],
            )
            conn.execute(
                "INSERT INTO trackers VALUES (?, ?, ?) ON CONFLICT (model, target) DO UPDATE SET state = ?",
                (model, _dump(target), json.dumps(tracker_state), json.dumps(tracker_state)),
            )

    def slice_history(self, model: str, target: ClassLabel) -> list[dict[str, Any]]:
        """Every recorded slice of a (model, target class), by refit then rank."""
        with self._lock:
            cur = self._conn.execute(
                "SELECT number, slice_id, rank, status, size, error_rate, rest_error_rate, p_value"
                " FROM slice_history WHERE model = ? AND target = ? ORDER BY number, rank",
                (model, _dump(target)),
            )
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def latest_report(self, model: str, target: ClassLabel) -> dict[str, Any] | None:
        """The last refit's report of a (model, target class)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT report FROM refits WHERE model = ? AND target = ? ORDER BY number DESC LIMIT 1",
                (model, _dump(target)),
            ).fetchone()
        return json.loads(row[0]) if row else None

    # ------------------------------------------------------------------ drift and assignments

    def record_drift(self, model: str, cls: ClassLabel, seq: int, error_rate: float) -> bool:
        """Record a drift detection at a sample; returns False when it was recorded before."""
        with self._transaction() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO drift_events VALUES (?, ?, ?, ?, ?)",
                (model, _dump(cls), seq, error_rate, self._clock()),
            )
            return bool(cur.rowcount)

    def drift_events(self, model: str) -> list[tuple[ClassLabel, int, float]]:
        """``(class, seq, error_rate)`` of every drift detected for a model."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT class, seq, error_rate FROM drift_events WHERE model = ? ORDER BY seq", (model,)
            ).fetchall()
        return [(json.loads(c), int(s), float(e)) for c, s, e in rows]

    def record_assignment(self, partitions: Sequence[tuple[str, int]]) -> None:
        """Record the partitions this worker was just given (after a rebalance)."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO assignments (partitions, at) VALUES (?, ?)",
                (json.dumps(sorted([t, p] for t, p in partitions)), self._clock()),
            )

    def assignments(self) -> list[list[tuple[str, int]]]:
        """Every assignment recorded, oldest first."""
        with self._lock:
            rows = self._conn.execute("SELECT partitions FROM assignments ORDER BY id").fetchall()
        return [[(t, int(p)) for t, p in json.loads(r[0])] for r in rows]
