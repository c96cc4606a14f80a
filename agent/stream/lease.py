"""A refit lease held while work runs: renewed in the background, given back at the end.

Workers of one group share the store; before refitting a model a worker takes the model's lease
(``refit:<model>``). While it holds it no other worker refits that model; when it dies the lease
lapses after ``seconds`` and the next worker whose timer finds the model due takes over.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from agent.exporter import shown
from agent.store import Store

__all__ = ["Lease"]

log = logging.getLogger(__name__)


class Lease:
    """Hold ``name`` in the store for ``holder`` while a ``with`` block runs.

    Enter only after :meth:`acquire` returned True. The lease is renewed every third of ``seconds``;
    ``lost`` turns True when a renewal was refused (the block should not publish what it made).
    """

    def __init__(self, store: Store, name: str, holder: str, seconds: float) -> None:
        self.store = store
        self.name = name
        self.holder = holder
        self.seconds = seconds
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"Lease({self.name!r}, holder={self.holder!r})"

    def acquire(self) -> bool:
        """Take the lease if it is free, lapsed or ours."""
        return self.store.acquire_lease(self.name, self.holder, self.seconds)

    def __enter__(self) -> Lease:
        self._thread = threading.Thread(target=self._renew, name=f"lease {self.name}", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.store.release_lease(self.name, self.holder)
        except Exception as err:  # it lapses on its own
            log.warning(
                "lease %s not released (%s); it lapses in %.0f s", shown(self.name), err, self.seconds
            )

    def _renew(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                if not self.store.acquire_lease(self.name, self.holder, self.seconds):
                    self.lost = True
                    log.warning("lease %s was taken by another worker", shown(self.name))
                    return
            except Exception as err:  # the store away for a moment: try again next time
                log.warning("lease %s not renewed yet: %s", shown(self.name), err)
