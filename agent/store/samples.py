"""Weekly samples of embeddings, per model, modality and ISO week: the input of embedding drift.

Each (model, modality, week) keeps a **bottom-k sample**: every embedded case gets a priority, a
keyed hash of its study uid mapped to [0, 1), and the ``size`` cases of lowest priority are kept.
That is a uniform random sample without replacement of the week's studies, bounded whatever the
traffic, and it has three properties a counter-based reservoir lacks: a case embedded twice (a
retried batch, a second worker) is kept once; workers sharing a store need no shared counter; and
samples merge exactly, since the bottom-k of the union of bottom-k samples is the bottom-k of the
union, which is how :meth:`SampleMixin.embedding_sample` pools a modality over models (a study
seen by two models is one case). No study uid is kept: the priority is a keyed digest.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.store.db import Database, q

__all__ = ["EmbeddedCase", "SampleMixin"]


@dataclass(frozen=True)
class EmbeddedCase:
    """One case's embedding of one modality, with the ISO week of its event time."""

    model: str
    modality: str
    week: str
    study_uid: str
    vector: np.ndarray


class SampleMixin(Database):
    """Reads and writes of the weekly embedding samples."""

    _name_key: bytes

    def _priority(self, study_uid: str) -> float:
        digest = hashlib.blake2b(study_uid.encode("utf-8"), key=self._name_key, digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2.0**64

    def record_embedding_samples(self, cases: Sequence[EmbeddedCase], size: int) -> int:
        """Offer cases to the samples of their (model, modality, week), each bounded to ``size``;
        returns how many were kept (a case kept before counts once)."""
        groups: dict[tuple[str, str, str], dict[float, np.ndarray]] = {}
        for c in cases:
            vec = np.asarray(c.vector, dtype=np.float32).ravel()
            if vec.size and np.all(np.isfinite(vec)):
                groups.setdefault((c.model, c.modality, c.week), {})[self._priority(c.study_uid)] = vec

        def work(conn: Any) -> int:
            kept = 0
            self._lock_names(conn, [f"samples:{m}:{x}:{w}" for m, x, w in groups])
            for (model, modality, week), offered in sorted(groups.items()):
                p = {"m": model, "x": modality, "w": week, "k": size - 1}
                bound = q(
                    conn,
                    "SELECT priority FROM embedding_samples WHERE model = :m AND modality = :x AND week = :w"
                    " ORDER BY priority LIMIT 1 OFFSET :k",
                    p,
                ).scalar()
                for priority, vec in sorted(offered.items()):
                    if bound is not None and priority >= bound:
                        continue
                    kept += q(
                        conn,
                        "INSERT INTO embedding_samples (model, modality, week, priority, vec, at)"
                        " VALUES (:m, :x, :w, :p, :v, :at) ON CONFLICT DO NOTHING",
                        {**p, "p": priority, "v": vec.tobytes(), "at": self._clock()},
                    ).rowcount
                q(
                    conn,
                    "DELETE FROM embedding_samples WHERE model = :m AND modality = :x AND week = :w"
                    " AND priority >= (SELECT priority FROM embedding_samples WHERE model = :m"
                    " AND modality = :x AND week = :w ORDER BY priority LIMIT 1 OFFSET :n)",
                    {**p, "n": size},
                )
            return kept

        return int(self._run(work)) if groups and size > 0 else 0

    def embedding_sample(self, modality: str, week: str, size: int) -> np.ndarray:
        """The week's sample of one modality over every model (a study seen by several models
        counts once): at most ``size`` rows, float32, of the width most rows have."""
        with self._read() as conn:
            rows = q(
                conn,
                "SELECT priority, vec FROM embedding_samples WHERE modality = :x AND week = :w"
                " ORDER BY priority",
                {"x": modality, "w": week},
            ).fetchall()
        unique = {float(p): bytes(v) for p, v in rows}
        if not unique:
            return np.zeros((0, 0), dtype=np.float32)
        width = Counter(len(v) for v in unique.values()).most_common(1)[0][0]
        kept = [v for _, v in sorted(unique.items()) if len(v) == width][:size]
        return np.frombuffer(b"".join(kept), dtype=np.float32).reshape(len(kept), width // 4)

    def embedding_sample_keys(self) -> list[tuple[str, str]]:
        """Every ``(week, modality)`` that holds a sample, in order."""
        with self._read() as conn:
            rows = q(
                conn, "SELECT DISTINCT week, modality FROM embedding_samples ORDER BY week, modality"
            ).fetchall()
        return [(str(w), str(x)) for w, x in rows]

    def prune_embedding_samples(self, oldest_week: str) -> int:
        """Drop the samples of weeks before ``oldest_week`` (ISO week names sort in time order)."""
        return int(
            self._run(
                lambda conn: (
                    q(conn, "DELETE FROM embedding_samples WHERE week < :w", {"w": oldest_week}).rowcount
                )
            )
        )
