"""Content-addressed embedding cache, so that no input is embedded twice.

:class:`CachedEmbedder` wraps any :class:`~agent.embed.base.Embedder`. Each input is keyed by
the SHA-256 of the inner embedder's name, the kind of input and the input's content (an
image's dtype, shape and bytes; a text's UTF-8), so a key never outlives the model that made
its vector, and the same image arriving twice under two study ids is embedded once.
Two stores: :class:`MemoryCache` (a dict, optionally bounded LRU) and :class:`SqliteCache`
(a durable table, safe to reopen and to share between processes).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol, TypeVar, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from agent.embed.base import Embedder, WrappedEmbedder
from agent.embed.default import check_texts
from agent.errors import ConfigError, EmbedderError

__all__ = [
    "CachedEmbedder",
    "EmbeddingCache",
    "MemoryCache",
    "SqliteCache",
    "cached_vectors",
    "image_key",
    "text_key",
]

log = logging.getLogger(__name__)

_VEC_DTYPE = np.dtype("<f4")
_T = TypeVar("_T")
# Stay well below SQLite's limit on host parameters per statement.
_SQL_CHUNK = 500


def _digest(embedder_name: str, kind: str, payload: Sequence[bytes]) -> str:
    h = hashlib.sha256()
    for part in (embedder_name.encode("utf-8"), kind.encode("ascii"), *payload):
        # Length-prefix every part so that no two different inputs share a byte stream.
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def image_key(embedder_name: str, image: np.ndarray) -> str:
    """Cache key of one image: SHA-256 over the embedder name, dtype, shape and pixel bytes.

    Examples
    --------
    >>> a = np.zeros((2, 2), dtype=np.float32)
    >>> image_key("m", a) == image_key("m", a.copy()) != image_key("m", a.astype(np.float64))
    True
    """
    arr = np.ascontiguousarray(image)
    shape = ",".join(str(n) for n in arr.shape).encode("ascii")
    return _digest(embedder_name, "image", (arr.dtype.str.encode("ascii"), shape, arr.tobytes()))


def text_key(embedder_name: str, text: str) -> str:
    """Cache key of one text: SHA-256 over the embedder name and the text's UTF-8.

    Examples
    --------
    >>> text_key("m", "chest tube") == text_key("other", "chest tube")
    False
    """
    return _digest(embedder_name, "text", (text.encode("utf-8"),))


@runtime_checkable
class EmbeddingCache(Protocol):
    """A store of float32 vectors by string key.

    ``hits`` and ``misses`` count the keys that :meth:`get_many` found and did not find.
    """

    hits: int
    misses: int

    def get_many(self, keys: Sequence[str]) -> list[NDArray[np.float32] | None]:
        """Return the vector stored under each key, or None where there is none."""
        ...

    def put_many(self, items: Mapping[str, NDArray[np.float32]]) -> None:
        """Store vectors; a key that is already present keeps its first vector."""
        ...

    def __len__(self) -> int: ...


class MemoryCache:
    """An in-process cache, optionally bounded to the ``max_entries`` most recently used keys.

    Parameters
    ----------
    max_entries
        Evict the least recently used vector beyond this many; None keeps everything.

    Examples
    --------
    >>> cache = MemoryCache(max_entries=1)
    >>> cache.put_many({"a": np.ones(2, np.float32)})
    >>> cache.put_many({"b": np.zeros(2, np.float32)})
    >>> [v is None for v in cache.get_many(["a", "b"])], cache.hits, cache.misses
    ([True, False], 1, 1)
    """

    def __init__(self, max_entries: int | None = None) -> None:
        if max_entries is not None and (isinstance(max_entries, bool) or max_entries < 1):
            raise ConfigError(f"expected max_entries to be None or a positive integer, got {max_entries!r}")
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._data: OrderedDict[str, NDArray[np.float32]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"MemoryCache(max_entries={self.max_entries}, size={len(self)})"

    def get_many(self, keys: Sequence[str]) -> list[NDArray[np.float32] | None]:
        """Return the vector stored under each key (marking it recently used), or None."""
        out: list[NDArray[np.float32] | None] = []
        with self._lock:
            for key in keys:
                vec = self._data.get(key)
                if vec is None:
                    self.misses += 1
                else:
                    self._data.move_to_end(key)
                    self.hits += 1
                out.append(vec)
        return out

    def put_many(self, items: Mapping[str, NDArray[np.float32]]) -> None:
        """Store read-only float32 copies; evict least recently used keys past ``max_entries``."""
        with self._lock:
            for key, vec in items.items():
                if key in self._data:
                    continue
                stored = np.array(vec, dtype=np.float32, copy=True).reshape(-1)
                stored.flags.writeable = False
                self._data[key] = stored
            if self.max_entries is not None:
                while len(self._data) > self.max_entries:
                    self._data.popitem(last=False)

    def clear(self) -> None:
        """Drop every vector and reset the counters."""
        with self._lock:
            self._data.clear()
            self.hits = 0
            self.misses = 0


class SqliteCache:
    """A durable cache in one SQLite table: ``embeddings(key TEXT PRIMARY KEY, vec BLOB)``.

    Vectors are stored as little-endian float32 bytes. Writes are ``INSERT OR IGNORE``, so
    storing the same key twice (after a crash, or from two workers) is harmless, and reopening
    the file finds everything stored before.

    Parameters
    ----------
    path
        The database file; created with its parent directory if missing. ``":memory:"`` gives
        a private in-memory database.
    timeout
        Seconds to wait for another process's write lock.

    Examples
    --------
    >>> with SqliteCache(":memory:") as cache:
    ...     cache.put_many({"k": np.arange(3, dtype=np.float32)})
    ...     cache.get_many(["k"])[0].tolist()
    [0.0, 1.0, 2.0]
    """

    def __init__(self, path: str | Path, *, timeout: float = 30.0) -> None:
        self.path = str(path)
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        try:
            if self.path != ":memory:":
                _private_file(Path(self.path).expanduser())
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                str(Path(self.path).expanduser()) if self.path != ":memory:" else self.path,
                timeout=timeout,
                check_same_thread=False,
            )
            if self.path != ":memory:":
                self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS embeddings (key TEXT PRIMARY KEY, vec BLOB NOT NULL)"
            )
            self._conn.commit()
        except (sqlite3.Error, OSError) as err:
            raise EmbedderError(
                f"expected a usable SQLite embedding cache at {self.path}, got: {err}"
            ) from err

    def __len__(self) -> int:
        with self._lock:
            row = self._connection().execute("SELECT COUNT(*) FROM embeddings").fetchone()
        return int(row[0])

    def __repr__(self) -> str:
        return f"SqliteCache({self.path!r})"

    def __enter__(self) -> SqliteCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the database; the object cannot be used afterwards."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def get_many(self, keys: Sequence[str]) -> list[NDArray[np.float32] | None]:
        """Return the vector stored under each key, or None."""
        found: dict[str, NDArray[np.float32]] = {}
        unique = list(dict.fromkeys(keys))
        with self._lock:
            conn = self._connection()
            for chunk in _chunks(unique, _SQL_CHUNK):
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(f"SELECT key, vec FROM embeddings WHERE key IN ({marks})", chunk)
                for key, blob in rows:
                    found[key] = np.frombuffer(blob, dtype=_VEC_DTYPE).astype(np.float32)
            out: list[NDArray[np.float32] | None] = [found.get(key) for key in keys]
            hit = sum(v is not None for v in out)
            self.hits += hit
            self.misses += len(out) - hit
        return out

    def put_many(self, items: Mapping[str, NDArray[np.float32]]) -> None:
        """Store vectors in one transaction; keys already present are left as they are."""
        rows = [
            (key, np.ascontiguousarray(vec, dtype=_VEC_DTYPE).reshape(-1).tobytes())
            for key, vec in items.items()
        ]
        if not rows:
            return
        with self._lock:
            conn = self._connection()
            with conn:
                conn.executemany("INSERT OR IGNORE INTO embeddings (key, vec) VALUES (?, ?)", rows)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise EmbedderError(f"expected an open SQLite embedding cache, got {self.path} closed")
        return self._conn


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def cached_vectors(embedder: Embedder, keys: Sequence[str]) -> list[NDArray[np.float32] | None]:
    """The vectors stored under ``keys`` in the cache of ``embedder`` or of an embedder it wraps
    (None where missing, or all None when no cache is found)."""
    current: object = embedder
    while current is not None:
        if isinstance(current, CachedEmbedder):
            return current.cache.get_many(keys) if keys else []
        current = getattr(current, "inner", None)
    return [None] * len(keys)


class CachedEmbedder(WrappedEmbedder):
    """An :class:`~agent.embed.base.Embedder` that asks ``inner`` only for inputs it has not seen.

    Each call hashes its inputs, looks them up in ``cache``, embeds the distinct misses in one
    call to ``inner``, stores them, and returns the rows in input order. Name, widths and
    ``shared_space`` are the inner embedder's.

    Parameters
    ----------
    inner
        The embedder that does the work.
    cache
        Where vectors are kept; may be shared by several wrappers (keys carry the inner
        embedder's name).

    Attributes
    ----------
    hits, misses : int
        Inputs this wrapper found in the cache, and inputs it did not (an input repeated
        within one call counts each time but is embedded once).

    Notes
    -----
    Keys carry ``inner.name``: an embedder whose weights change must change its name (the
    open_clip embedder's name carries its checkpoint path), or the cache be cleared.

    Examples
    --------
    >>> from agent.embed import OpenClipEmbedder
    >>> emb = CachedEmbedder(OpenClipEmbedder("ViT-S-32-alt", allow_random_weights=True), MemoryCache())
    >>> _ = emb.embed_texts(["effusion", "effusion"])
    >>> emb.hits, emb.misses
    (0, 2)
    >>> _ = emb.embed_texts(["effusion"])
    >>> emb.hits, emb.misses
    (1, 2)
    """

    def __init__(self, inner: Embedder, cache: EmbeddingCache) -> None:
        super().__init__(inner)
        self.cache = cache
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"CachedEmbedder({self.inner!r}, {self.cache!r})"

    def embed_images(self, images: Sequence[np.ndarray]) -> NDArray[np.float32]:
        """Embed images, asking the inner embedder only for those not cached.

        Returns
        -------
        numpy.ndarray
            float32 array of shape (len(images), image_dim).
        """
        name = self.inner.name
        keys = [image_key(name, image) for image in images]
        return self._lookup(keys, list(images), self.inner.embed_images, self.inner.image_dim, "image")

    def embed_texts(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Embed texts, asking the inner embedder only for those not cached.

        Returns
        -------
        numpy.ndarray
            float32 array of shape (len(texts), text_dim).
        """
        items = check_texts(texts)
        name = self.inner.name
        keys = [text_key(name, text) for text in items]
        return self._lookup(keys, items, self.inner.embed_texts, self.inner.text_dim, "text")

    def _lookup(
        self,
        keys: list[str],
        inputs: list[_T],
        embed: Callable[[list[_T]], np.ndarray],
        dim: int,
        kind: str,
    ) -> NDArray[np.float32]:
        out = np.empty((len(keys), dim), dtype=np.float32)
        cached = self.cache.get_many(keys)
        todo: dict[str, int] = {}  # key -> index of its first occurrence among the misses
        for i, (key, vec) in enumerate(zip(keys, cached, strict=True)):
            if vec is None:
                todo.setdefault(key, i)
                self.misses += 1
                continue
            if vec.shape != (dim,):
                raise EmbedderError(
                    f"expected cached {kind} vectors of width {dim} for {self.inner.name}, got width "
                    f"{vec.size} under key {key}; the cache is corrupt: delete it"
                )
            out[i] = vec
            self.hits += 1
        if todo:
            first = list(todo.values())
            fresh = np.asarray(embed([inputs[i] for i in first]), dtype=np.float32)
            if fresh.shape != (len(first), dim):
                raise EmbedderError(
                    f"expected {self.inner.name} to return {kind} vectors of shape ({len(first)}, {dim}), "
                    f"got {fresh.shape}"
                )
            by_key = dict(zip(todo, fresh, strict=True))
            self.cache.put_many(by_key)
            for i, key in enumerate(keys):
                if key in by_key:
                    out[i] = by_key[key]
            log.debug("embedded %d distinct new %s(s) for a call of %d", len(first), kind, len(keys))
        return out


def _private_file(path: Path) -> None:
    """Create ``path`` readable by its owner only (0600), in a folder made 0700 if it is made here.

    SQLite gives its ``-wal`` and ``-shm`` files the database file's permissions. A folder that
    already exists is left as it is: it may be shared (the working directory).
    """
    folder = path.parent
    if not folder.exists():
        folder.mkdir(parents=True, mode=0o700, exist_ok=True)
        folder.chmod(0o700)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    path.chmod(0o600)
