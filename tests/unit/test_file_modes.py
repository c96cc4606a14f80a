"""Files the agent writes at rest are private to its user: 0600 files in 0700 folders."""

from __future__ import annotations

import re
import stat

import numpy as np

from agent.embed.cache import SqliteCache


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_embedding_cache_and_its_new_folder_are_private(tmp_path):
    folder = tmp_path / "state" / "cache"
    path = folder / "embeddings.sqlite"
    with SqliteCache(path) as cache:
        cache.put_many({"k": np.arange(3, dtype=np.float32)})
        assert cache.get_many(["k"])[0] is not None
        modes = {p.name: _mode(p) for p in folder.iterdir()}  # the database, SQLite's -wal and -shm
    assert _mode(folder) == 0o700
    assert len(modes) == 3 and set(modes.values()) == {0o600}, modes


def test_an_existing_readable_cache_file_is_made_private(tmp_path):
    path = tmp_path / "embeddings.sqlite"
    path.touch()
    path.chmod(0o644)
    tmp_path.chmod(0o755)
    SqliteCache(path).close()
    assert _mode(path) == 0o600
    assert _mode(tmp_path) == 0o755  # a folder that already existed (maybe shared) is left as it was


def test_slice_ids_are_random_not_derived_from_members():
    from agent.audit import _slice_id

    ids = {_slice_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"s-[0-9a-f]{10}", i) for i in ids)
