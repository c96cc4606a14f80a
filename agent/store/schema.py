"""The store's one schema, for both backends, and its migrations.

The tables are declared once with SQLAlchemy Core; SQLite and PostgreSQL get the same columns, keys
and indexes. ``meta.schema`` holds the version a database was last migrated to: an older database is
migrated forward in one transaction when it is opened, a newer one is refused (the code would not
know its columns).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    inspect,
    text,
)

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "metadata"]

SCHEMA_VERSION = 3

metadata = MetaData()


def _id() -> Column[int]:
    # BIGINT on PostgreSQL (an identity); INTEGER on SQLite, where only that type is the rowid.
    return Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True)


Table("meta", metadata, Column("key", Text, primary_key=True), Column("value", Text, nullable=False))
Table(
    "seen",
    metadata,
    Column("event_id", Text, primary_key=True),
    Column("kind", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("ts", Double, nullable=False),
    Index("seen_ts", "ts"),
)
_inferences = Table(
    "inferences",
    metadata,
    Column("model", Text, nullable=False),
    Column("study_uid", Text, nullable=False),
    Column("event_id", Text, nullable=False),
    Column("ts", Double, nullable=False),
    Column("prediction", Text, nullable=False),
    Column("score", Double),
    Column("metadata", Text),
    Column("image", Text),
    Column("state", Text, nullable=False),
    Column("embedded", Integer, nullable=False, server_default="0"),
    Column("claimed_at", Double),
    Column("image_key", Text),
    Column("series_uid", Text),
    Column("image_uid", Text),
    Column("fetch_failures", Integer, nullable=False, server_default="0"),
    Column("first_failure_at", Double),
    Column("next_fetch_at", Double),
    PrimaryKeyConstraint("model", "study_uid"),
    Index("inferences_study", "study_uid"),
    Index("inferences_state_ts", "state", "ts"),
)
Index(
    "inferences_unembedded",
    _inferences.c.embedded,
    sqlite_where=_inferences.c.embedded == 0,
    postgresql_where=_inferences.c.embedded == 0,
)
Table(
    "labels",
    metadata,
    Column("event_id", Text, primary_key=True),
    Column("study_uid", Text, nullable=False),
    Column("model", Text),
    Column("label", Text, nullable=False),
    Column("ts", Double, nullable=False),
    Column("used", Integer, nullable=False, server_default="0"),
    Column("source", Text, nullable=False),
    Column("raw", LargeBinary),
    Index("labels_study", "study_uid"),
    Index("labels_ts", "ts"),
)
_reports = Table(
    "reports",
    metadata,
    Column("study_uid", Text, primary_key=True),
    Column("event_id", Text, nullable=False),
    Column("ts", Double, nullable=False),
    Column("text", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("raw", LargeBinary),
    Column("embedded", Integer, nullable=False, server_default="0"),
    Column("matched", Integer, nullable=False, server_default="0"),
    Column("claimed_at", Double),
)
Index(
    "reports_unmatched",
    _reports.c.ts,
    sqlite_where=_reports.c.matched == 0,
    postgresql_where=_reports.c.matched == 0,
)
Index(
    "reports_unembedded",
    _reports.c.embedded,
    sqlite_where=_reports.c.embedded == 0,
    postgresql_where=_reports.c.embedded == 0,
)
Table(
    "samples",
    metadata,
    Column("seq", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("model", Text, nullable=False),
    Column("study_uid", Text, nullable=False),
    Column("prediction", Text, nullable=False),
    Column("label", Text, nullable=False),
    Column("label_event_id", Text, nullable=False),
    Column("ts", Double, nullable=False),
    UniqueConstraint("model", "study_uid"),
    Index("samples_window", "model", "ts", "study_uid"),
    sqlite_autoincrement=True,
)
_dead = Table(
    "dead_letters",
    metadata,
    _id(),
    Column("source", Text, nullable=False, unique=True),
    Column("reason", Text, nullable=False),
    Column("message", Text, nullable=False),
    Column("raw", LargeBinary),
    Column("at", Double, nullable=False),
    Column("sent", Integer, nullable=False, server_default="0"),
    sqlite_autoincrement=True,
)
Index("dead_letters_unsent", _dead.c.sent, sqlite_where=_dead.c.sent == 0, postgresql_where=_dead.c.sent == 0)
Table(
    "counters",
    metadata,
    Column("name", Text, primary_key=True),
    Column("value", BigInteger, nullable=False),
)
Table(
    "models",
    metadata,
    Column("model", Text, primary_key=True),
    Column("predicted", Text, nullable=False, server_default="[]"),
    Column("labels_total", BigInteger, nullable=False, server_default="0"),
    Column("labels_at_refit", BigInteger, nullable=False, server_default="0"),
    Column("refit_clock", Double),
    Column("refits", BigInteger, nullable=False, server_default="0"),
)
Table(
    "refits",
    metadata,
    Column("model", Text, nullable=False),
    Column("target", Text, nullable=False),
    Column("number", Integer, nullable=False),
    Column("at", Double, nullable=False),
    Column("window_n", Integer, nullable=False),
    Column("n_errors", Integer, nullable=False),
    Column("n_slices", Integer, nullable=False),
    Column("report", Text, nullable=False),
    PrimaryKeyConstraint("model", "target", "number"),
)
Table(
    "slice_history",
    metadata,
    Column("model", Text, nullable=False),
    Column("target", Text, nullable=False),
    Column("number", Integer, nullable=False),
    Column("slice_id", Text, nullable=False),
    Column("rank", Integer),
    Column("status", Text, nullable=False),
    Column("size", Integer),
    Column("error_rate", Double),
    Column("rest_error_rate", Double),
    Column("p_value", Double),
    PrimaryKeyConstraint("model", "target", "number", "slice_id"),
)
Table(
    "trackers",
    metadata,
    Column("model", Text, nullable=False),
    Column("target", Text, nullable=False),
    Column("state", Text, nullable=False),
    PrimaryKeyConstraint("model", "target"),
)
Table(
    "drift_events",
    metadata,
    Column("model", Text, nullable=False),
    Column("class", Text, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("error_rate", Double, nullable=False),
    Column("at", Double, nullable=False),
    PrimaryKeyConstraint("model", "class", "seq"),
)
Table(
    "assignments",
    metadata,
    _id(),
    Column("worker", Text, nullable=False, server_default=""),
    Column("partitions", Text, nullable=False),
    Column("at", Double, nullable=False),
    sqlite_autoincrement=True,
)
Table(
    "positions",
    metadata,
    Column("source", Text, primary_key=True),
    Column("position", BigInteger, nullable=False),
)
Table(
    "log_marks",
    metadata,
    Column("topic", Text, nullable=False),
    Column("part", Integer, nullable=False),
    Column("log_offset", BigInteger, nullable=False),
    Column("digest", Text, nullable=False),
    PrimaryKeyConstraint("topic", "part"),
)
Table(
    "leases",
    metadata,
    Column("name", Text, primary_key=True),
    Column("holder", Text, nullable=False),
    Column("expires_at", Double, nullable=False),
    Column("generation", BigInteger, nullable=False, server_default="1"),
)
Table(
    "name_digests",
    metadata,
    Column("digest", Text, primary_key=True),
    Column("at", Double, nullable=False),
    Index("name_digests_at", "at"),
)
Table(
    "warm_states",
    metadata,
    Column("model", Text, nullable=False),
    Column("target", Text, nullable=False),
    Column("number", Integer, nullable=False),
    Column("state", LargeBinary, nullable=False),
    PrimaryKeyConstraint("model", "target"),
)
_vectors = Table(
    "vectors",
    metadata,
    Column("key", Text, primary_key=True),
    Column("vec", LargeBinary, nullable=False),
    Column("at", Double, nullable=False),
    Index("vectors_at", "at"),
)

# The early warning (agent.warn): the latest description of each (model, target class)'s known
# slices, every inference assigned to them on arrival, and each complete time bucket's share test.
Table(
    "slice_spaces",
    metadata,
    Column("model", Text, nullable=False),
    Column("target", Text, nullable=False),
    Column("number", Integer, nullable=False),
    Column("at", Double, nullable=False),
    Column("document", Text, nullable=False),
    Column("center", LargeBinary, nullable=False),
    Column("basis", LargeBinary, nullable=False),
    Column("densities", LargeBinary, nullable=False),
    PrimaryKeyConstraint("model", "target"),
)
Table(
    "live_cases",
    metadata,
    Column("model", Text, nullable=False),
    Column("target", Text, nullable=False),
    Column("study_uid", Text, nullable=False),
    Column("number", Integer, nullable=False),
    Column("ts", Double, nullable=False),
    Column("p_error", Double, nullable=False),
    Column("slices", Text, nullable=False),
    PrimaryKeyConstraint("model", "target", "study_uid"),
    Index("live_cases_ts", "model", "target", "ts"),
)
Table(
    "slice_buckets",
    metadata,
    Column("model", Text, nullable=False),
    Column("target", Text, nullable=False),
    Column("slice_id", Text, nullable=False),
    Column("bucket", Double, nullable=False),
    Column("number", Integer, nullable=False),
    Column("rank", Integer, nullable=False),
    Column("n", Integer, nullable=False),
    Column("inside", Integer, nullable=False),
    Column("window_share", Double, nullable=False),
    Column("p_value", Double, nullable=False),
    Column("warned", Integer, nullable=False),
    Column("at", Double, nullable=False),
    PrimaryKeyConstraint("model", "target", "slice_id", "bucket"),
)

# Weekly embedding samples (agent.store.samples): per model, modality and ISO week of the event
# time, the cases of lowest priority (a keyed digest of the study uid), float32 vectors.
Table(
    "embedding_samples",
    metadata,
    Column("model", Text, nullable=False),
    Column("modality", Text, nullable=False),
    Column("week", Text, nullable=False),
    Column("priority", Double, nullable=False),
    Column("vec", LargeBinary, nullable=False),
    Column("at", Double, nullable=False),
    PrimaryKeyConstraint("model", "modality", "week", "priority"),
)


def _v1_to_v2(conn: Connection) -> None:
    """Version 1 (one SQLite worker) to 2: embedding claims, image vector keys, the worker of an
    assignment; the new
    tables (leases, vectors, name digests) are created with the rest."""
    columns = {t: {c["name"] for c in inspect(conn).get_columns(t)} for t in ("inferences", "reports")}
    for table in ("inferences", "reports"):
        if "claimed_at" not in columns[table]:
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN claimed_at DOUBLE PRECISION"))
    if "image_key" not in columns["inferences"]:
        conn.execute(text("ALTER TABLE inferences ADD COLUMN image_key TEXT"))
    if "worker" not in {c["name"] for c in inspect(conn).get_columns("assignments")}:
        conn.execute(text("ALTER TABLE assignments ADD COLUMN worker TEXT NOT NULL DEFAULT ''"))


def _v2_to_v3(conn: Connection) -> None:
    """Version 2 to 3: an inference's image on the PACS (series and SOP instance UIDs) and the
    retry schedule of its fetch."""
    columns = {c["name"] for c in inspect(conn).get_columns("inferences")}
    for name, kind in (
        ("series_uid", "TEXT"),
        ("image_uid", "TEXT"),
        ("fetch_failures", "INTEGER NOT NULL DEFAULT 0"),
        ("first_failure_at", "DOUBLE PRECISION"),
        ("next_fetch_at", "DOUBLE PRECISION"),
    ):
        if name not in columns:
            conn.execute(text(f"ALTER TABLE inferences ADD COLUMN {name} {kind}"))


#: ``MIGRATIONS[v]`` takes a database from version ``v`` to ``v + 1``.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _v1_to_v2, 2: _v2_to_v3}
