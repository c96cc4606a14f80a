"""Fixtures every test folder may use: a real PostgreSQL server on 127.0.0.1 (Debian's postgresql-15,
started by ``deploy/postgres/pg-local``), one per test session, with a fresh database per test."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
PG_LOCAL = ROOT / "deploy" / "postgres" / "pg-local"

# Property tests draw the same examples on every run (derived from each test), so the test command
# passes or fails the same way each time; `HYPOTHESIS_PROFILE=explore` draws new ones, to hunt.
settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The admin URL of a PostgreSQL server of this session's own; stopped at the end. A server that
    cannot start fails the tests that need it (`make system-deps` installs postgresql-15)."""
    base = Path(tempfile.mkdtemp(prefix="slice-agent-pg-"))
    base.chmod(0o755)  # the server runs as `postgres` when the tests run as root
    started = subprocess.run(
        [str(PG_LOCAL), "start", str(base / "pg"), str(_free_port())], capture_output=True, text=True
    )
    if started.returncode != 0:
        log = base / "pg" / "server.log"
        detail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"PostgreSQL did not start: {started.stderr.strip()}\n{detail}")
    try:
        yield started.stdout.strip()
    finally:
        subprocess.run([str(PG_LOCAL), "stop", str(base / "pg")], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A new, empty database for one test (dropped at the end)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield postgres_server.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()
