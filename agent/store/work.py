"""Embedding bookkeeping: which rows still need their vectors, claimed by one worker at a time, and
the store's own vector cache (shared by every worker on PostgreSQL)."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from agent.dicom import safe_metadata
from agent.sample import Sample
from agent.store.db import Database, q, q_in
from agent.store.outbox import OutboxMixin
from agent.store.records import EmbedWork

__all__ = ["VectorCache", "WorkMixin"]

_VEC = np.dtype("<f4")


class WorkMixin(OutboxMixin):
    """Rows whose modalities have not been through the embedding cache yet."""

    def unembedded(self, limit: int = 256, *, claim_seconds: float | None = None) -> list[EmbedWork]:
        """Inferences and reports whose modalities have not been embedded yet, oldest first.

        With ``claim_seconds``, the rows returned are claimed for that long: other workers calling
        this skip them until the claim lapses (a worker that dies mid-batch releases its rows that way).
        """
        now = self._clock()
        lapse = now - (claim_seconds or 0.0)
        skip = " FOR UPDATE SKIP LOCKED" if self.postgres else ""
        claim = "" if claim_seconds is None else " AND (claimed_at IS NULL OR claimed_at < :lapse)"
        due = " AND (next_fetch_at IS NULL OR next_fetch_at <= :now)"

        def work(conn: Any) -> tuple[list[Any], list[Any]]:
            p = {"n": limit, "lapse": lapse, "now": now}
            infs = q(
                conn,
                "SELECT model, study_uid, prediction, ts, metadata, image, event_id, score, series_uid,"
                " image_uid, fetch_failures, first_failure_at FROM inferences"
                f" WHERE embedded = 0{claim}{due} ORDER BY ts LIMIT :n{skip}",
                p,
            ).fetchall()
            reps = q(
                conn,
                f"SELECT study_uid, ts, text, event_id FROM reports WHERE embedded = 0{claim}"
                f" ORDER BY ts LIMIT :n{skip}",
                p,
            ).fetchall()
            if claim_seconds is not None:
                for model, study, *_ in infs:
                    q(
                        conn,
                        "UPDATE inferences SET claimed_at = :now WHERE model = :m AND study_uid = :s",
                        {"now": now, "m": model, "s": study},
                    )
                for study, *_ in reps:
                    q(
                        conn,
                        "UPDATE reports SET claimed_at = :now WHERE study_uid = :s",
                        {"now": now, "s": study},
                    )
            return infs, reps

        infs, reps = self._run(work)
        out = [
            EmbedWork(
                "inference",
                (model, study),
                Sample(
                    study,
                    model,
                    json.loads(pred),
                    json.loads(pred),
                    datetime.fromtimestamp(ts, UTC),
                    score=score,
                    metadata=json.loads(meta) if meta is not None else None,
                    image=image,
                    event_id=event_id,
                    series_uid=series,
                    image_uid=instance,
                ),
                fetch_failures=int(failures or 0),
                first_failure_at=first,
            )
            for (
                model,
                study,
                pred,
                ts,
                meta,
                image,
                event_id,
                score,
                series,
                instance,
                failures,
                first,
            ) in infs
        ]
        out += [
            EmbedWork(
                "report",
                (study,),
                Sample(study, "", "", "", datetime.fromtimestamp(ts, UTC), report=text, event_id=event_id),
            )
            for study, ts, text, event_id in reps
        ]
        return out

    def record_images(self, found: Mapping[tuple[str, str], tuple[str | None, Mapping[str, object]]]) -> None:
        """Keep what embedding an inference's image found, by ``(model, study)``: the key of its
        vector (so refits never decode the file again) and, where the event carried no metadata,
        the whitelisted tags of the file's header."""

        def run(conn: Any) -> None:
            for (model, study), (key, header) in sorted(found.items()):
                meta = safe_metadata(header) if header else None
                q(
                    conn,
                    "UPDATE inferences SET image_key = COALESCE(:k, image_key),"
                    " metadata = COALESCE(metadata, :meta) WHERE model = :m AND study_uid = :s",
                    {
                        "k": key,
                        "meta": json.dumps(meta, sort_keys=True) if meta else None,
                        "m": model,
                        "s": study,
                    },
                )

        if found:
            self._run(run)

    def defer_fetches(self, waits: Mapping[tuple[str, str], tuple[int, float, float]]) -> None:
        """Leave these inferences unembedded until their image can be fetched again: by ``(model,
        study)``, the failed fetches so far, when the first failed, and when to try next. Their
        claims are released, so that any worker takes them up when they are due."""

        def run(conn: Any) -> None:
            for (model, study), (failures, first, at) in sorted(waits.items()):
                q(
                    conn,
                    "UPDATE inferences SET fetch_failures = :f, first_failure_at = :first,"
                    " next_fetch_at = :at, claimed_at = NULL WHERE model = :m AND study_uid = :s",
                    {"f": failures, "first": first, "at": at, "m": model, "s": study},
                )

        if waits:
            self._run(run)

    def waiting_fetches(self) -> int:
        """Inferences whose image waits for another try at the PACS."""
        with self._read() as conn:
            return int(
                q(
                    conn, "SELECT COUNT(*) FROM inferences WHERE embedded = 0 AND next_fetch_at IS NOT NULL"
                ).scalar()
            )

    def oldest_unembedded_age(self) -> float | None:
        """Seconds since the oldest row still waiting for its vectors was claimed or stored
        (event time when never claimed); None when nothing waits."""
        with self._read() as conn:
            ts = q(
                conn,
                "SELECT MIN(t) FROM (SELECT MIN(ts) AS t FROM inferences WHERE embedded = 0"
                " UNION ALL SELECT MIN(ts) FROM reports WHERE embedded = 0) AS w",
            ).scalar()
        return None if ts is None else max(0.0, self._clock() - float(ts))

    def mark_embedded(self, work: Sequence[EmbedWork]) -> None:
        """Record that these rows have been through the embedding cache."""

        def run(conn: Any) -> None:
            for w in sorted(work, key=lambda w: (w.kind, w.key)):
                if w.kind == "inference":
                    q(
                        conn,
                        "UPDATE inferences SET embedded = 1, next_fetch_at = NULL"
                        " WHERE model = :m AND study_uid = :s",
                        {"m": w.key[0], "s": w.key[1]},
                    )
                else:
                    q(conn, "UPDATE reports SET embedded = 1 WHERE study_uid = :s", {"s": w.key[0]})

        self._run(run)


class VectorCache:
    """An :class:`~agent.embed.cache.EmbeddingCache` in the store's ``vectors`` table: the vectors one
    worker embeds are found by every worker's refits. Bounded by the policy's ``keep_vectors``
    (oldest first).
    """

    def __init__(self, db: Database, *, keep: int = 200_000) -> None:
        self.db = db
        self.keep = keep
        self.hits = 0
        self.misses = 0
        self._puts = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self.db._read() as conn:
            return int(q(conn, "SELECT COUNT(*) FROM vectors").scalar())

    def __repr__(self) -> str:
        return f"VectorCache({self.db.describe()!r})"

    def get_many(self, keys: Sequence[str]) -> list[NDArray[np.float32] | None]:
        """The vector stored under each key, or None where there is none."""
        found: dict[str, NDArray[np.float32]] = {}
        unique = list(dict.fromkeys(keys))
        with self.db._read() as conn:
            rows = q_in(conn, "SELECT key, vec FROM vectors WHERE key IN ({values})", unique)
            found.update((k, np.frombuffer(bytes(v), dtype=_VEC).astype(np.float32)) for k, v in rows)
        out = [found.get(k) for k in keys]
        with self._lock:
            hits = sum(v is not None for v in out)
            self.hits += hits
            self.misses += len(out) - hits
        return out

    def put_many(self, items: Mapping[str, NDArray[np.float32]]) -> None:
        """Store vectors; a key already present keeps its first vector."""
        if not items:
            return
        now = self.db._clock()

        def work(conn: Any) -> None:
            for key in sorted(items):
                vec = np.ascontiguousarray(items[key], dtype=_VEC).tobytes()
                q(
                    conn,
                    "INSERT INTO vectors (key, vec, at) VALUES (:k, :v, :at) ON CONFLICT (key) DO NOTHING",
                    {"k": key, "v": vec, "at": now},
                )

        self.db._run(work)
        with self._lock:
            self._puts += len(items)
            due = self._puts >= 1000
            if due:
                self._puts = 0
        if due:
            self.trim()

    def trim(self) -> int:
        """Drop the oldest vectors beyond ``keep``; returns how many went."""

        def work(conn: Any) -> int:
            n = int(q(conn, "SELECT COUNT(*) FROM vectors").scalar())
            if n <= self.keep:
                return 0
            return int(
                q(
                    conn,
                    "DELETE FROM vectors WHERE key IN (SELECT key FROM vectors ORDER BY at, key LIMIT :n)",
                    {"n": n - self.keep},
                ).rowcount
            )

        return int(self.db._run(work))
