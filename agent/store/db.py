"""Connections, transactions and locks over either backend.

SQLite (a file, or ``:memory:`` for tests) is the embedded default: WAL, ``synchronous=FULL``, and
write transactions that take the database's write lock when they begin (``BEGIN IMMEDIATE``), so
writers queue instead of failing half-way. PostgreSQL (``postgresql+psycopg://...``) is shared by the
workers of a group: writes run at READ COMMITTED, serialised where it matters by transaction-scoped
advisory locks (one per study, one per maintenance pass), and a transaction that loses a deadlock or
a serialisation race is retried whole.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, TextClause, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from agent.errors import AgentError
from agent.store.schema import MIGRATIONS, SCHEMA_VERSION, metadata

__all__ = ["Database", "StoreError", "lock_key", "store_url"]

log = logging.getLogger(__name__)

# Transactions retried after a deadlock or serialisation failure, at most.
_RETRIES = 8


class StoreError(AgentError, RuntimeError):
    """The state store cannot be opened or written."""


def store_url(location: str | Path) -> str:
    """The SQLAlchemy URL of a store: a URL as given, else a SQLite file path (or ``:memory:``).

    >>> store_url(":memory:"), store_url("/var/lib/agent/state.sqlite")
    ('sqlite://', 'sqlite:////var/lib/agent/state.sqlite')
    >>> store_url("postgresql+psycopg://agent@127.0.0.1:5432/agent")
    'postgresql+psycopg://agent@127.0.0.1:5432/agent'
    """
    location = str(location)
    if "://" in location:
        return location
    if location == ":memory:":
        return "sqlite://"
    return f"sqlite:///{Path(location).expanduser()}"


def lock_key(name: str) -> int:
    """A signed 64-bit advisory-lock key for a name (a study, a maintenance pass).

    >>> lock_key("1.2.3") == lock_key("1.2.3") != lock_key("1.2.4")
    True
    """
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "big", signed=True)


def _retryable(err: BaseException) -> bool:
    code = getattr(getattr(err, "orig", None), "sqlstate", None)
    return code in {"40001", "40P01"}  # serialization_failure, deadlock_detected


def _private_file(path: Path) -> None:
    """Create the SQLite file (and its folder) readable by the agent's user only."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)


class Database:
    """An engine, its transactions and the schema check; the base of :class:`~agent.store.Store`.

    Parameters
    ----------
    location
        A SQLite file path, ``":memory:"``, or a SQLAlchemy URL (``postgresql+psycopg://...``).
    """

    #: Wall-clock time source (seconds); the store injects its own.
    _clock: Callable[[], float] = time.time

    def __init__(self, location: str | Path) -> None:
        self.path = str(location)
        self.url = store_url(location)
        backend = make_url(self.url).get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise StoreError(f"expected a SQLite path or a postgresql+psycopg:// URL, got {backend!r}")
        self.postgres = backend == "postgresql"
        # SQLite has one writer at a time anyway; one lock keeps this process's threads from
        # queueing on the file lock (and makes the single in-memory connection safe to share).
        self._lock: threading.RLock | None = None if self.postgres else threading.RLock()
        try:
            self.engine = self._make_engine()
            self._migrate()
        except SQLAlchemyError as err:
            raise StoreError(f"cannot open the state store at {self.describe()}: {err}") from err

    def describe(self) -> str:
        """Where the store is, without credentials (for logs)."""
        return make_url(self.url).render_as_string(hide_password=True) if self.postgres else self.path

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()!r})"

    def _make_engine(self) -> Engine:
        if self.postgres:
            # Statement parameters (study ids, model names from events) never reach an error's text.
            return create_engine(
                self.url, pool_size=4, max_overflow=4, pool_pre_ping=True, hide_parameters=True
            )
        if self.url == "sqlite://":
            engine = create_engine(
                self.url,
                poolclass=StaticPool,
                connect_args={"check_same_thread": False},
                hide_parameters=True,
            )
        else:
            _private_file(Path(make_url(self.url).database or ""))
            engine = create_engine(
                self.url, connect_args={"check_same_thread": False, "timeout": 30.0}, hide_parameters=True
            )

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # transactions are begun below, not by the driver
            cur = dbapi_conn.cursor()
            if self.url != "sqlite://":
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            readonly = conn.get_execution_options().get("readonly", False)
            conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

        return engine

    def _migrate(self) -> None:
        with self._write() as conn:
            if self.postgres:
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key("schema")})
            metadata.create_all(conn, checkfirst=True)
            row = conn.execute(text("SELECT value FROM meta WHERE key = 'schema'")).fetchone()
            version = int(row[0]) if row else None
            if version is None:
                conn.execute(text("INSERT INTO meta VALUES ('schema', :v)"), {"v": str(SCHEMA_VERSION)})
                return
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the state store at {self.describe()} has schema {version}, newer than this "
                    f"agent's {SCHEMA_VERSION}; run a newer agent or point it at a new store"
                )
            for v in range(version, SCHEMA_VERSION):
                log.info("migrating the state store from schema %d to %d", v, v + 1)
                MIGRATIONS[v](conn)
            if version != SCHEMA_VERSION:
                conn.execute(
                    text("UPDATE meta SET value = :v WHERE key = 'schema'"), {"v": str(SCHEMA_VERSION)}
                )

    def close(self) -> None:
        """Release every connection."""
        with self._guard():
            self.engine.dispose()

    @contextmanager
    def _guard(self) -> Iterator[None]:
        if self._lock is None:
            yield
        else:
            with self._lock:
                yield

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction: committed on exit, rolled back on error."""
        with self._guard(), self.engine.connect() as conn, conn.begin():
            yield conn

    def _run(self, work: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``work(conn, *args)`` in a write transaction, again from the start after a deadlock
        or a serialisation failure (PostgreSQL)."""
        for attempt in range(_RETRIES):
            try:
                with self._write() as conn:
                    return work(conn, *args, **kwargs)
            except DBAPIError as err:
                if not _retryable(err) or attempt == _RETRIES - 1:
                    raise
                log.debug("transaction retried after %s", type(err.orig).__name__)
                time.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read-only transaction that sees one snapshot (SQLite deferred; PostgreSQL repeatable read)."""
        options: dict[str, Any] = {"readonly": True}
        if self.postgres:
            options = {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
        with self._guard(), self.engine.connect().execution_options(**options) as conn, conn.begin():
            yield conn

    def _lock_names(self, conn: Connection, names: Iterable[str]) -> None:
        """Take transaction-scoped advisory locks on names, in one global order (no deadlock between
        two transactions that both lock this way); a no-op on SQLite, which has one writer."""
        if not self.postgres:
            return
        keys = sorted({lock_key(n) for n in names})
        if keys:
            conn.execute(
                text("SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:keys AS bigint[])) AS k"),
                {"keys": keys},
            )

    def _try_lock(self, conn: Connection, name: str) -> bool:
        """Try a transaction-scoped advisory lock on a name; always granted on SQLite."""
        if not self.postgres:
            return True
        return bool(
            conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": lock_key(name)}).scalar()
        )


@lru_cache(maxsize=1024)
def _statement(sql: str) -> TextClause:
    """The statement for SQL text, built once: parsing its ``:name`` parameters costs more than
    SQLite takes to run most of the store's statements."""
    return text(sql)


def q(conn: Connection, sql: str, params: Mapping[str, Any] | None = None) -> Any:
    """Execute SQL text with named parameters (``:name``)."""
    return conn.execute(_statement(sql), dict(params or {}))


def q_in(conn: Connection, sql: str, values: Sequence[Any], *, chunk: int = 500) -> Iterator[Any]:
    """Run ``sql`` with its ``IN ({values})`` placeholder filled with ``values``, a chunk at a time
    (bounded statements on either backend); yields the rows of a query."""
    for start in range(0, len(values), chunk):
        part = values[start : start + chunk]
        marks = ", ".join(f":v{i}" for i in range(len(part)))
        result = conn.execute(_statement(sql.format(values=marks)), {f"v{i}": v for i, v in enumerate(part)})
        if result.returns_rows:
            yield from result


def bump(counters: dict[str, int], name: str, n: int = 1) -> None:
    """Add to a counter kept for the end of the transaction (see :func:`flush_counters`)."""
    counters[name] = counters.get(name, 0) + n


def flush_counters(conn: Connection, counters: Mapping[str, int]) -> None:
    """Add the transaction's counts, in name order (rows locked in one order: no deadlock)."""
    for name in sorted(counters):
        if counters[name]:
            q(
                conn,
                "INSERT INTO counters (name, value) VALUES (:n, :v)"
                " ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value",
                {"n": name, "v": counters[name]},
            )
