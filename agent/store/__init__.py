"""The agent's durable state, behind one interface with two backends.

SQLite on the sidecar's volume is the embedded default (one worker, the demo, replay, ``audit``);
PostgreSQL is shared by every worker of a consumer group, so that any worker can join any event and
take over any model. Everything the agent must not lose or count twice lives here: event ids seen,
inferences waiting for labels, labels waiting for inferences, reports, the windows of labeled
samples, the dead-letter outbox, counters, the refit schedule and leases, every refit's report and
slice history, tracker state, drift events, and the store's embedding vectors.

Every change an input causes is made in one transaction with the rest of its batch; inputs are
applied idempotently (an ``event_id`` seen before is a no-op; a dead letter is keyed by where its
input came from). The caller commits its consumer offsets only after :meth:`Store.apply` returned.

The parts, by concern: :mod:`~agent.store.schema` (tables, migrations), :mod:`~agent.store.db`
(connections, transactions, locks), :mod:`~agent.store.join` (the one join, expiry, windows),
:mod:`~agent.store.window` (reads), :mod:`~agent.store.outbox` (dead letters),
:mod:`~agent.store.work` (embedding bookkeeping, the vector cache) and :mod:`~agent.store.history`
(refit schedule, leases, reports, slice history, drift) and :mod:`~agent.store.warning` (the early
warning's slice descriptions, live assignments and bucket tests) and :mod:`~agent.store.samples`
(the weekly embedding samples of embedding drift).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from agent.config import StreamSettings
from agent.store.db import StoreError, store_url
from agent.store.history import HistoryMixin
from agent.store.logs import LogMixin
from agent.store.records import (
    ApplyResult,
    DeadLetter,
    EmbedWork,
    Incoming,
    JoinedSample,
    LogMark,
    StorePolicy,
)
from agent.store.samples import EmbeddedCase, SampleMixin
from agent.store.warning import BucketRow, LiveCase, LiveOutcome, WarningMixin
from agent.store.window import WindowMixin
from agent.store.work import VectorCache

__all__ = [
    "ApplyResult",
    "BucketRow",
    "DeadLetter",
    "EmbedWork",
    "EmbeddedCase",
    "Incoming",
    "JoinedSample",
    "LiveCase",
    "LiveOutcome",
    "LogMark",
    "Store",
    "StoreError",
    "StorePolicy",
    "VectorCache",
    "store_url",
]


class Store(HistoryMixin, WindowMixin, LogMixin, WarningMixin, SampleMixin):
    """The agent's state: SQLite (a file path or ``":memory:"``) or PostgreSQL (a URL).

    Parameters
    ----------
    location
        A SQLite file (created 0600, in a folder created 0700), ``":memory:"`` for tests, or a
        ``postgresql+psycopg://user@host:port/db`` URL.
    policy
        Join, expiry, window and retention rules.
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
        location: str | Path,
        policy: StorePolicy | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy or StorePolicy()
        self._clock = clock
        super().__init__(location)
        self._open_name_key()

    @classmethod
    def from_settings(cls, s: StreamSettings, *, clock: Callable[[], float] = time.time) -> Store:
        """The store a :class:`~agent.config.StreamSettings` section names (``store_url`` or
        ``store_path``), with its policy."""
        return cls(s.store_url or s.store_path, StorePolicy.from_settings(s), clock=clock)
