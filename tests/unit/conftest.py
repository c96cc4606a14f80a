"""Fixtures of the unit tests: stores on both backends, and a guard that keeps a module offline."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from agent.store import Store, StorePolicy

#: The event time the store tests start at (test_store.T0).
T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
DAY = 24 * 3600.0


@pytest.fixture(scope="module")
def no_network() -> Iterator[list[str]]:
    """Record, and refuse, every attempt to resolve a host or open a connection during the module
    (use it with ``pytestmark = pytest.mark.usefixtures("no_network")``)."""
    attempts: list[str] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(repr(args[:2]))
        raise OSError("network access attempted in an offline test")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket, "getaddrinfo", refuse)
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket.socket, "connect_ex", refuse)
        yield attempts
    assert attempts == [], f"expected no network access, got {attempts}"


@pytest.fixture(params=["sqlite", "postgresql"])
def make_store(request):
    """Make stores on one backend (every test runs on both): SQLite in memory, or a fresh PostgreSQL
    database of the session's server."""
    made = []
    location = ":memory:" if request.param == "sqlite" else request.getfixturevalue("postgres_url")

    def make(policy=None, *, clock=lambda: T0.timestamp()):
        made.append(Store(location, policy, clock=clock))
        return made[-1]

    yield make
    for s in made:
        s.close()


@pytest.fixture
def store(make_store):
    policy = StorePolicy(
        label_delay_seconds=DAY, window_size=1000, window_max_age_seconds=365 * DAY, max_future_seconds=1e12
    )
    return make_store(policy, clock=lambda: T0.timestamp() + 3600)
