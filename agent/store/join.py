"""The one join: events become labeled samples here, and only here.

Rules (the same for ``slice-agent audit``, a replay and every worker of a group):

- An inference waits for its label (``pending``) until event time has moved ``label_delay`` past it;
  then it ``expires`` and is counted. It stays as a tombstone for one more delay, so that a label
  arriving after that is recognised as ``late_label``.
- Event time is tracked per event type (inference, label, report): a watermark each, the newest event
  time that type has carried. Inferences and waiting labels expire against the *lower* of the
  inference and label watermarks, and reports against the lower of the inference and report ones, so
  a topic that runs ahead (catching up after downtime, a backlog replayed) never expires what the
  other topic has not delivered yet. A type never seen holds its dependants back: with no label seen
  at all, nothing expires. An event dated more than ``max_future_seconds`` ahead of the store's
  clock is a ``future_event``, dead-lettered and not applied: the window's age is measured from
  its newest sample, and one sample dated years ahead would push every real one out.
- A label joins every waiting inference of its study (of its ``model`` only, when it names one), or
  waits itself for an inference yet to come. A label never used by the time it expires is an
  ``orphan_label`` (no inference of its study was ever seen), a ``late_label`` (its inference had
  expired) or an extra label of a study labeled before (counted, ignored: the first label wins).
- A report is kept for its study (the first report wins) and read when the window is read, so a
  report arriving after the label still reaches the audit. A report whose study has no inference
  by the time it expires is an ``orphan_report``.
- A label outside a model's classes is ``unknown_class``: the configured ones (``stream.classes``),
  else those the model has predicted so far. A class the model never predicts must be configured.
- Every input is applied once: an ``event_id`` seen before is a no-op (counted as a duplicate unless
  it is the same input delivered again from the same place).

Concurrency (PostgreSQL, several workers): a batch locks the studies it touches (advisory locks,
sorted) before reading them, so an inference and its label applied by two workers at once still
meet; counters and per-model totals are written once at the end of a transaction in key order.
Expiry and window pruning run in their own short transactions (:meth:`JoinMixin.maintain`), one
worker at a time, on the studies they lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import secrets
import time
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DataError, IntegrityError

from agent.dicom import safe_metadata
from agent.events import ClassLabel, Event, InferenceEvent, LabelEvent, ReportEvent
from agent.explain.names import person_name_words
from agent.store.db import Database, bump, flush_counters, q, q_in
from agent.store.logs import write_log_marks
from agent.store.records import (
    ApplyResult,
    Incoming,
    JoinedSample,
    LogMark,
    StorePolicy,
    excerpt,
    withheld,
)

__all__ = ["JoinMixin"]

log = logging.getLogger(__name__)

# What an input that passed the contract can still raise when stored; anything else (a full disk,
# a lost connection) stops the batch, so that its offsets are not committed.
_UNSTORABLE = (IntegrityError, DataError, ValueError, OverflowError, TypeError)
_KINDS = ("inference", "label", "report")


def _dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _epoch(t: datetime) -> float:
    return (t if t.tzinfo is not None else t.replace(tzinfo=UTC)).timestamp()


class _Batch:
    """What a batch transaction accumulates for its end: counters, model totals, watermarks."""

    def __init__(self, result: ApplyResult) -> None:
        self.result = result
        self.counters: dict[str, int] = {}
        self.labels: dict[str, int] = {}
        self.predicted: dict[str, set[ClassLabel]] = {}
        self.watermarks: dict[str, float] = {}
        self.stored_predictions: dict[str, list[ClassLabel]] = {}
        self.inferred: set[str] = set()


class JoinMixin(Database):
    """Applies batches of inputs and keeps expiry and windows (see the module docstring)."""

    policy: StorePolicy
    _maintained: float = float("-inf")
    _name_key: bytes

    # ------------------------------------------------------------------ batches

    def apply(
        self,
        items: Sequence[Incoming],
        *,
        position: tuple[str, int] | None = None,
        marks: Sequence[LogMark] = (),
        maintain: bool | None = None,
    ) -> ApplyResult:
        """Apply a batch of inputs in one transaction, then expire and prune; return what changed.

        Parameters
        ----------
        items
            Decoded events and undecodable inputs, in arrival order.
        position
            ``(source, offset)`` to record with the batch (a replayed file's next line), so that
            reading can resume exactly where the durable state ends.
        marks
            The last message read from each Kafka partition in the batch, recorded with it (see
            :mod:`agent.store.logs`).
        maintain
            Expire and prune after this batch (True), or not (False); by default when
            ``maintenance_interval_seconds`` have passed since the last time. Windows are read by
            their rule whatever was pruned, so skipping only delays expiry.
        """
        try:
            result: ApplyResult = self._run(self._apply_batch, items, position, marks, False)
        except _UNSTORABLE:
            # Some input is valid by the contract but not storable: the batch again, one savepoint
            # per input, so that only that input is dead-lettered.
            result = self._run(self._apply_batch, items, position, marks, True)
        now = time.monotonic()
        if maintain or (
            maintain is None and now - self._maintained >= self.policy.maintenance_interval_seconds
        ):
            self._maintained = now
            self.maintain(result)
        return result

    def _apply_batch(
        self,
        conn: Connection,
        items: Sequence[Incoming],
        position: tuple[str, int] | None,
        marks: Sequence[LogMark],
        careful: bool,
    ) -> ApplyResult:
        batch = _Batch(ApplyResult())
        self._lock_names(conn, (f"study:{i.event.study_uid}" for i in items if i.event is not None))
        fresh = None if careful else self._claim_event_ids(conn, items)
        for index, item in enumerate(items):
            if fresh is not None:
                self._apply_one(conn, item, batch, index in fresh)
                continue
            savepoint = conn.begin_nested()
            try:
                self._apply_one(conn, item, batch, None)
                savepoint.commit()
            except _UNSTORABLE as err:
                # Valid by the contract but not storable: dead-lettered, the batch goes on.
                savepoint.rollback()
                log.warning("input at %s could not be stored: %s", item.source, type(err).__name__)
                self._dead_letter(conn, batch, item.source, "unprocessable", str(err)[:500], item.raw)
        self._flush(conn, batch)
        if position is not None:
            q(
                conn,
                "INSERT INTO positions (source, position) VALUES (:s, :p)"
                " ON CONFLICT (source) DO UPDATE SET position = excluded.position",
                {"s": position[0], "p": position[1]},
            )
        write_log_marks(conn, marks)
        return batch.result

    def _flush(self, conn: Connection, batch: _Batch) -> None:
        """Write what the batch accumulated, each kind of row in key order."""
        for model in sorted(set(batch.predicted) | set(batch.labels)):
            q(conn, "INSERT INTO models (model) VALUES (:m) ON CONFLICT (model) DO NOTHING", {"m": model})
            if model in batch.predicted:
                row = q(conn, "SELECT predicted FROM models WHERE model = :m", {"m": model}).fetchone()
                known = set(json.loads(row[0])) | batch.predicted[model]
                ordered = sorted(known, key=lambda c: (type(c).__name__, str(c)))
                q(
                    conn,
                    "UPDATE models SET predicted = :p WHERE model = :m",
                    {"p": _dump(ordered), "m": model},
                )
            if batch.labels.get(model):
                q(
                    conn,
                    "UPDATE models SET labels_total = labels_total + :n,"
                    " refit_clock = COALESCE(refit_clock, :now) WHERE model = :m",
                    {"n": batch.labels[model], "now": self._clock(), "m": model},
                )
        for kind in sorted(batch.watermarks):
            q(
                conn,
                "INSERT INTO meta (key, value) VALUES (:k, :v) ON CONFLICT (key) DO UPDATE SET value ="
                " CASE WHEN CAST(meta.value AS DOUBLE PRECISION) < CAST(excluded.value AS DOUBLE PRECISION)"
                " THEN excluded.value ELSE meta.value END",
                {"k": f"watermark:{kind}", "v": repr(batch.watermarks[kind])},
            )
        sql = "UPDATE reports SET matched = 1 WHERE matched = 0 AND study_uid IN ({values})"
        for _ in q_in(conn, sql, sorted(batch.inferred)):  # runs the update, a chunk at a time
            pass
        flush_counters(conn, batch.counters)

    def _dead_letter(
        self,
        conn: Connection,
        batch: _Batch | None,
        source: str,
        reason: str,
        message: str,
        raw: bytes | None,
    ) -> bool:
        # Malformed inputs keep an excerpt of their bytes; decoded ones come in their withheld form.
        kept, note = excerpt(raw, self.policy.dead_letter_excerpt_bytes)
        inserted = q(
            conn,
            "INSERT INTO dead_letters (source, reason, message, raw, at) VALUES (:s, :r, :m, :raw, :at)"
            " ON CONFLICT (source) DO NOTHING",
            {"s": source, "r": reason, "m": message + note, "raw": kept, "at": self._clock()},
        ).rowcount
        if inserted:
            if batch is not None:
                bump(batch.counters, f"dead_letter:{reason}")
                batch.result.dead_lettered[reason] += 1
            else:
                flush_counters(conn, {f"dead_letter:{reason}": 1})
        return bool(inserted)

    def _claim_event_ids(self, conn: Connection, items: Sequence[Incoming]) -> set[int]:
        """Record the batch's event ids as seen, a few statements for the whole batch; return the
        indices of the inputs applied for the first time (the first of a repeated id only)."""
        first: dict[str, int] = {}
        for index, item in enumerate(items):
            # An event from the future is dead-lettered, never seen: its row would never be pruned.
            if item.event is not None and not self._from_the_future(_epoch(item.event.timestamp)):
                first.setdefault(item.event.event_id, index)
        new: set[str] = set()
        order = list(first.items())
        for start in range(0, len(order), 200):
            chunk = order[start : start + 200]
            params: dict[str, Any] = {}
            rows = []
            for n, (event_id, index) in enumerate(chunk):
                event = items[index].event
                assert event is not None
                params |= {f"e{n}": event_id, f"k{n}": event.type, f"s{n}": items[index].source}
                params[f"t{n}"] = _epoch(event.timestamp)
                rows.append(f"(:e{n}, :k{n}, :s{n}, :t{n})")
            inserted = q(
                conn,
                f"INSERT INTO seen (event_id, kind, source, ts) VALUES {', '.join(rows)}"
                " ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
                params,
            )
            new.update(r[0] for r in inserted)
        return {index for event_id, index in first.items() if event_id in new}

    def _apply_one(self, conn: Connection, item: Incoming, batch: _Batch, fresh: bool | None) -> None:
        """Apply one input; ``fresh`` says whether its event id was just recorded as seen (None:
        record it here)."""
        event = item.event
        result = batch.result
        if event is None:
            self._dead_letter(
                conn, batch, item.source, item.reason or "unprocessable", item.message, item.raw
            )
            return
        ts = _epoch(event.timestamp)
        if not math.isfinite(ts):
            raise ValueError("event time is not a finite number")
        if self._from_the_future(ts):
            ahead = self.policy.max_future_seconds
            message = f"event time {event.timestamp.isoformat()} is more than {ahead:g} s ahead of the clock"
            self._dead_letter(conn, batch, item.source, "future_event", message, withheld(event))
            return
        new = fresh
        if new is None:
            new = bool(
                q(
                    conn,
                    "INSERT INTO seen (event_id, kind, source, ts) VALUES (:e, :k, :s, :ts)"
                    " ON CONFLICT (event_id) DO NOTHING",
                    {"e": event.event_id, "k": event.type, "s": item.source, "ts": ts},
                ).rowcount
            )
        if not new:
            first = q(conn, "SELECT source FROM seen WHERE event_id = :e", {"e": event.event_id}).scalar()
            if first == item.source:
                result.redelivered += 1
            else:
                self._duplicate(conn, item, event, batch)
            return
        if isinstance(event, InferenceEvent):
            self._on_inference(conn, item, event, ts, batch)
        elif isinstance(event, LabelEvent):
            self._on_label(conn, item, event, ts, batch)
        elif isinstance(event, ReportEvent):
            self._on_report(conn, item, event, ts, batch)
        batch.watermarks[event.type] = max(batch.watermarks.get(event.type, ts), ts)

    def _from_the_future(self, ts: float) -> bool:
        """Whether an event time is further ahead of the clock than ``max_future_seconds``. Such an
        event is dead-lettered, not applied: a sample dated years ahead would age every real one
        out of its model's window (the window's age is measured from its newest sample), and
        would itself never expire."""
        return ts > self._clock() + self.policy.max_future_seconds

    def _duplicate(self, conn: Connection, item: Incoming, event: Event, batch: _Batch) -> None:
        """The same event again from another place: counted and dead-lettered, nothing applied."""
        batch.result.duplicates += 1
        bump(batch.counters, "duplicate")
        message = f"event_id {event.event_id!r} was applied before; ignored"
        self._dead_letter(conn, batch, item.source, "duplicate", message, withheld(event))

    def _known(self, conn: Connection, batch: _Batch, model: str, label: ClassLabel) -> bool:
        """Whether ``label`` is a class of ``model``: a configured class, else one the model has
        predicted (or an ``extra_classes`` one). Never a class named by labels alone, so a stray
        label (a record number in the label field) can neither join nor become the audited class."""
        classes = self.policy.classes.get(model) or self.policy.default_classes
        # Labels and classes come from JSON and YAML: 1 and 1 compare equal, "1" and 1 do not.
        if classes:
            return label in classes
        if label in self.policy.extra_classes or label in batch.predicted.get(model, ()):
            return True
        if model not in batch.stored_predictions:
            row = q(conn, "SELECT predicted FROM models WHERE model = :m", {"m": model}).scalar()
            batch.stored_predictions[model] = json.loads(row) if row else []
        return label in batch.stored_predictions[model]

    def _on_inference(
        self, conn: Connection, item: Incoming, event: InferenceEvent, ts: float, batch: _Batch
    ) -> None:
        result = batch.result
        metadata = safe_metadata(event.metadata) if event.metadata is not None else None
        stored = q(
            conn,
            "INSERT INTO inferences (model, study_uid, event_id, ts, prediction, score, metadata, image,"
            " series_uid, image_uid, state)"
            " VALUES (:m, :s, :e, :ts, :p, :score, :meta, :image, :series, :instance, 'pending')"
            " ON CONFLICT (model, study_uid) DO NOTHING RETURNING ts",
            {
                "m": event.model,
                "s": event.study_uid,
                "e": event.event_id,
                "ts": ts,
                "p": _dump(event.prediction),
                "score": event.score,
                "meta": _dump(metadata) if metadata is not None else None,
                "image": event.image,
                "series": event.series_uid,
                "instance": event.image_uid,
            },
        ).fetchone()
        if stored is None:
            existing = q(
                conn,
                "SELECT event_id FROM inferences WHERE model = :m AND study_uid = :s",
                {"m": event.model, "s": event.study_uid},
            ).scalar()
            if existing == event.event_id:
                # The same inference again, after its event id was forgotten: a duplicate.
                self._duplicate(conn, item, event, batch)
            else:
                message = "second inference for this study and model; ignored"
                self._dead_letter(conn, batch, item.source, "conflicting_inference", message, withheld(event))
            return
        batch.predicted.setdefault(event.model, set()).add(event.prediction)
        batch.inferred.add(event.study_uid)
        if event.metadata:
            # Only the whitelisted tags are stored; the words of person-name fields are kept as
            # keyed digests, so the explainer can block those names wherever they appear.
            for digest in sorted({self._digest(w) for w in person_name_words(event.metadata)}):
                q(
                    conn,
                    "INSERT INTO name_digests (digest, at) VALUES (:d, :at) ON CONFLICT (digest) DO NOTHING",
                    {"d": digest, "at": ts},
                )
        result.accepted["inference"] += 1
        result.to_embed += 1
        waiting = q(
            conn,
            "SELECT event_id, label, ts, source, raw FROM labels WHERE study_uid = :s AND "
            "(model IS NULL OR model = :m) ORDER BY ts, event_id",
            {"s": event.study_uid, "m": event.model},
        ).fetchall()
        for event_id, label_json, label_ts, source, raw in waiting:
            label = json.loads(label_json)
            if not self._known(conn, batch, event.model, label):
                self._dead_letter(
                    conn,
                    batch,
                    source,
                    "unknown_class",
                    f"label {label!r} is not a class of model {event.model!r}",
                    raw,
                )
                q(conn, "DELETE FROM labels WHERE event_id = :e", {"e": event_id})
                continue
            self._join(conn, event.model, event.study_uid, event_id, label, label_ts, batch)
            return

    def _on_label(
        self, conn: Connection, item: Incoming, event: LabelEvent, ts: float, batch: _Batch
    ) -> None:
        rows = q(
            conn,
            "SELECT model, state FROM inferences WHERE study_uid = :s"
            " AND (CAST(:m AS TEXT) IS NULL OR model = :m)",
            {"s": event.study_uid, "m": event.model},
        ).fetchall()
        models = {m for m, _ in rows} | ({event.model} if event.model else set())
        known = [m for m in models if self._known(conn, batch, m, event.label)]
        raw = withheld(event)
        if models and not known:
            self._dead_letter(
                conn,
                batch,
                item.source,
                "unknown_class",
                f"label {event.label!r} is not a class of model(s) {sorted(models)}",
                raw,
            )
            return
        if rows and all(state == "expired" for _, state in rows):
            self._dead_letter(
                conn,
                batch,
                item.source,
                "late_label",
                "label arrived after its inference waited label_delay_seconds and expired",
                raw,
            )
            return
        batch.result.accepted["label"] += 1
        used = 0
        for model, state in rows:
            if state == "pending" and model in known:
                used |= self._join(
                    conn, model, event.study_uid, event.event_id, event.label, ts, batch, stored_label=False
                )
        q(
            conn,
            "INSERT INTO labels (event_id, study_uid, model, label, ts, used, source, raw)"
            " VALUES (:e, :s, :m, :l, :ts, :u, :src, :raw)",
            {
                "e": event.event_id,
                "s": event.study_uid,
                "m": event.model,
                "l": _dump(event.label),
                "ts": ts,
                "u": used,
                "src": item.source,
                "raw": raw,
            },
        )

    def _on_report(
        self, conn: Connection, item: Incoming, event: ReportEvent, ts: float, batch: _Batch
    ) -> None:
        result = batch.result
        states = [
            r[0] for r in q(conn, "SELECT state FROM inferences WHERE study_uid = :s", {"s": event.study_uid})
        ]
        if states and all(s == "expired" for s in states):
            self._dead_letter(
                conn,
                batch,
                item.source,
                "late_report",
                "report arrived after its inference waited label_delay_seconds and expired",
                withheld(event),
            )
            return
        result.accepted["report"] += 1
        stored = q(
            conn,
            "INSERT INTO reports (study_uid, event_id, ts, text, source, matched)"
            " VALUES (:s, :e, :ts, :t, :src, :matched) ON CONFLICT (study_uid) DO NOTHING RETURNING ts",
            {
                "s": event.study_uid,
                "e": event.event_id,
                "ts": ts,
                "t": event.text,
                "src": item.source,
                "matched": int(bool(states)),
            },
        ).fetchone()
        if stored is None:  # the first report of a study wins
            bump(batch.counters, "extra_report")
            return
        result.to_embed += 1

    def _join(
        self,
        conn: Connection,
        model: str,
        study: str,
        label_event_id: str,
        label: ClassLabel,
        label_ts: float,
        batch: _Batch,
        *,
        stored_label: bool = True,
    ) -> int:
        """Turn a pending inference and its label into a sample; 1 when it did, 0 when it had gone.
        ``stored_label`` says whether the label already has its row (to mark used)."""
        claimed = q(
            conn,
            "UPDATE inferences SET state = 'joined' WHERE model = :m AND study_uid = :s AND state = 'pending'"
            " RETURNING prediction, ts",
            {"m": model, "s": study},
        ).fetchone()
        if claimed is None:
            return 0
        prediction_json, inf_ts = claimed
        seq = q(
            conn,
            "INSERT INTO samples (model, study_uid, prediction, label, label_event_id, ts)"
            " VALUES (:m, :s, :p, :l, :e, :ts) RETURNING seq",
            {
                "m": model,
                "s": study,
                "p": prediction_json,
                "l": _dump(label),
                "e": label_event_id,
                "ts": inf_ts,
            },
        ).scalar()
        if stored_label:
            q(conn, "UPDATE labels SET used = 1 WHERE event_id = :e", {"e": label_event_id})
        batch.labels[model] = batch.labels.get(model, 0) + 1
        bump(batch.counters, f"joined:{model}")
        batch.result.models.add(model)
        batch.result.joined.append(
            JoinedSample(int(seq), model, json.loads(prediction_json), label, label_ts - inf_ts, inf_ts)
        )
        return 1

    def _open_name_key(self) -> None:
        """Load the store's secret key for name digests, made on first use (kept in ``meta``)."""

        def work(conn: Connection) -> str:
            q(
                conn,
                "INSERT INTO meta (key, value) VALUES ('name_key', :v) ON CONFLICT (key) DO NOTHING",
                {"v": secrets.token_hex(32)},
            )
            return str(q(conn, "SELECT value FROM meta WHERE key = 'name_key'").scalar())

        self._name_key = bytes.fromhex(self._run(work))

    def _digest(self, word: str) -> str:
        return hashlib.blake2b(word.lower().encode("utf-8"), key=self._name_key, digest_size=16).hexdigest()

    def known_names(self, words: Collection[str]) -> set[str]:
        """The words among ``words`` seen in a DICOM person-name field of any stored inference."""
        by_digest = {self._digest(w): w for w in words}
        with self._read() as conn:
            sql = "SELECT digest FROM name_digests WHERE digest IN ({values})"
            return {by_digest[r[0]] for r in q_in(conn, sql, sorted(by_digest))}

    # ------------------------------------------------------------------ expiry and pruning

    def watermarks(self) -> dict[str, float]:
        """The newest event time each event type has carried (absent: none seen yet)."""
        with self._read() as conn:
            rows = q(conn, "SELECT key, value FROM meta WHERE key LIKE 'watermark:%'").fetchall()
        return {k.split(":", 1)[1]: float(v) for k, v in rows}

    def settle(self) -> ApplyResult:
        """The end of a finite input (a file): every label and report still waiting is resolved now
        (``orphan_label``, ``late_label``, ``orphan_report``, extra); inferences still without a label
        stay pending, counted by :meth:`sizes`."""
        with self._read() as conn:
            models = [r[0] for r in q(conn, "SELECT model FROM models ORDER BY model")]
        return self.maintain(models=models, final=True)

    def maintain(
        self, result: ApplyResult | None = None, *, models: Sequence[str] | None = None, final: bool = False
    ) -> ApplyResult:
        """Expire what waited too long and prune the windows of ``models`` (default: those the batch
        touched), in short transactions of at most ``maintenance_chunk`` studies; one worker at a time
        (another worker's pass is skipped, not waited for)."""
        result = result if result is not None else ApplyResult()
        targets = sorted(set(models if models is not None else result.models))
        while True:
            done = self._run(self._maintain_chunk, result, targets, final)
            if done is None or done < self.policy.maintenance_chunk:
                return result

    def _cutoffs(self, conn: Connection) -> tuple[float, float]:
        """(cutoff for inferences and labels, cutoff for reports): the lower watermark of the types
        each waits on, less one label delay."""
        marks = {
            k.split(":", 1)[1]: float(v)
            for k, v in q(conn, "SELECT key, value FROM meta WHERE key LIKE 'watermark:%'").fetchall()
        }
        low = float("-inf")
        joined = min(marks.get("inference", low), marks.get("label", low))
        reports = min(marks.get("inference", low), marks.get("report", low))
        delay = self.policy.label_delay_seconds
        return joined - delay, reports - delay

    def _maintain_chunk(
        self, conn: Connection, result: ApplyResult, models: Sequence[str], final: bool
    ) -> int | None:
        if not self._try_lock(conn, "maintenance"):
            return None
        cutoff, report_cutoff = self._cutoffs(conn)
        forget = cutoff - self.policy.label_delay_seconds
        label_cutoff = float("inf") if final else cutoff
        report_cutoff = float("inf") if final else report_cutoff
        limit = self.policy.maintenance_chunk
        p = {"c": cutoff, "lc": label_cutoff, "rc": report_cutoff, "f": forget, "n": limit}
        studies: set[str] = set()
        for sql in (
            "SELECT study_uid FROM inferences WHERE state = 'pending' AND ts < :c ORDER BY ts LIMIT :n",
            "SELECT study_uid FROM labels WHERE ts < :lc ORDER BY ts LIMIT :n",
            "SELECT study_uid FROM reports WHERE matched = 0 AND ts < :rc ORDER BY ts LIMIT :n",
            "SELECT study_uid FROM inferences WHERE state = 'expired' AND ts < :f ORDER BY ts LIMIT :n",
        ):
            studies.update(r[0] for r in q(conn, sql, p))
        doomed = {m: self._doomed(conn, m, limit) for m in models}
        studies.update(s for ss in doomed.values() for s in ss)
        if not studies:
            return 0
        self._lock_names(conn, (f"study:{s}" for s in studies))
        counters: dict[str, int] = {}
        batch = _Batch(result)
        for study in sorted(studies):
            self._expire_study(conn, study, (cutoff, label_cutoff, report_cutoff, forget), batch)
        for model, gone in doomed.items():
            for study in gone:
                q(conn, "DELETE FROM samples WHERE model = :m AND study_uid = :s", {"m": model, "s": study})
                q(
                    conn,
                    "DELETE FROM inferences WHERE model = :m AND study_uid = :s",
                    {"m": model, "s": study},
                )
                self._drop_orphaned_report(conn, study)
            if gone:
                log.debug("window of %s: %d sample(s) aged or pushed out", model, len(gone))
        counters.update(batch.counters)
        flush_counters(conn, counters)
        self._drop_departed_models(conn)
        # Names stay blocked as long as reports that may carry them can be in a window.
        q(
            conn,
            "DELETE FROM name_digests WHERE at < :old",
            {"old": forget - self.policy.window_max_age_seconds},
        )
        q(
            conn,
            "DELETE FROM seen WHERE event_id IN"
            " (SELECT event_id FROM seen WHERE ts < :f ORDER BY ts LIMIT :n)",
            p,
        )
        return len(studies)

    def _expire_study(
        self, conn: Connection, study: str, cutoffs: tuple[float, float, float, float], batch: _Batch
    ) -> None:
        cutoff, label_cutoff, report_cutoff, forget = cutoffs
        s = {"s": study, "c": cutoff, "lc": label_cutoff, "f": forget}
        for (model,) in q(
            conn, "SELECT model FROM inferences WHERE study_uid = :s AND state = 'pending' AND ts < :c", s
        ).fetchall():
            bump(batch.counters, f"expired_unlabeled:{model}")
            batch.result.expired += 1
        q(
            conn,
            "UPDATE inferences SET state = 'expired', metadata = NULL, embedded = 1"
            " WHERE study_uid = :s AND state = 'pending' AND ts < :c",
            s,
        )
        for event_id, model, used, source, raw in q(
            conn, "SELECT event_id, model, used, source, raw FROM labels WHERE study_uid = :s AND ts < :lc", s
        ).fetchall():
            if not used:
                states = {
                    r[0]
                    for r in q(
                        conn,
                        "SELECT state FROM inferences WHERE study_uid = :s"
                        " AND (CAST(:m AS TEXT) IS NULL OR model = :m)",
                        {"s": study, "m": model},
                    )
                }
                if not states:
                    self._dead_letter(
                        conn, batch, source, "orphan_label", "label for a study with no inference", raw
                    )
                elif states == {"expired"}:
                    self._dead_letter(
                        conn, batch, source, "late_label", "its inference expired unlabeled", raw
                    )
                else:
                    bump(batch.counters, "extra_label")
            q(conn, "DELETE FROM labels WHERE event_id = :e", {"e": event_id})
        row = q(
            conn,
            "SELECT source, event_id FROM reports WHERE study_uid = :s AND matched = 0 AND ts < :rc",
            {"s": study, "rc": report_cutoff},
        ).fetchone()
        if row is not None:
            note = f'{{"event_id":{json.dumps(row[1])},"study_uid":{json.dumps(study)},"type":"report"}}'
            self._dead_letter(
                conn, batch, row[0], "orphan_report", "report for a study with no inference", note.encode()
            )
            q(conn, "DELETE FROM reports WHERE study_uid = :s", s)
        # Tombstones are kept one more delay, to recognise late inputs.
        if q(
            conn, "DELETE FROM inferences WHERE study_uid = :s AND state = 'expired' AND ts < :f", s
        ).rowcount:
            self._drop_orphaned_report(conn, study)

    def _drop_departed_models(self, conn: Connection) -> None:
        """Forget models with nothing left in the store (every inference expired and forgotten: a
        name sent once and never labeled, say), with their refit history, so that junk model
        names cannot grow the tables without bound."""
        gone = [
            r[0]
            for r in q(
                conn,
                "SELECT model FROM models m WHERE NOT EXISTS"
                " (SELECT 1 FROM inferences i WHERE i.model = m.model) ORDER BY model",
            )
        ]
        for model in gone:
            for table in ("models", "refits", "slice_history", "trackers", "drift_events"):
                q(conn, f"DELETE FROM {table} WHERE model = :m", {"m": model})
            q(conn, "DELETE FROM leases WHERE name = :n", {"n": f"refit:{model}"})
        if gone:
            log.info("forgot %d model(s) with nothing left in the store", len(gone))

    def _drop_orphaned_report(self, conn: Connection, study: str) -> None:
        if not q(conn, "SELECT 1 FROM inferences WHERE study_uid = :s", {"s": study}).fetchone():
            q(conn, "DELETE FROM reports WHERE study_uid = :s", {"s": study})

    def _doomed(self, conn: Connection, model: str, limit: int) -> list[str]:
        """Studies of the model's window that aged out or were pushed out by newer ones."""
        p = self.policy
        newest = q(conn, "SELECT MAX(ts) FROM samples WHERE model = :m", {"m": model}).scalar()
        if newest is None:
            return []
        old = [
            r[0]
            for r in q(
                conn,
                "SELECT study_uid FROM samples WHERE model = :m AND ts < :t ORDER BY ts LIMIT :n",
                {"m": model, "t": newest - p.window_max_age_seconds, "n": limit},
            )
        ]
        over = [
            r[0]
            for r in q(
                conn,
                "SELECT study_uid FROM samples WHERE model = :m ORDER BY ts DESC, study_uid DESC"
                " LIMIT :n OFFSET :k",
                {"m": model, "n": limit, "k": p.window_size},
            )
        ]
        return sorted(set(old) | set(over))
