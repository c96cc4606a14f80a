"""Logging set-up for the entry point: one format, and a rate limit on what a broker outage floods.

With the broker down, the Kafka clients log a reconnect error several times a second (52-77 ERROR
lines a second were measured: some 275,000 an hour), which drowns every other line. Records of the
client libraries are let through once per interval and per message template; the next one that
passes says how many were held back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["RateLimit", "configure_logging"]

#: Loggers whose records are rate-limited (the clients that report every reconnect attempt).
NOISY = ("aiokafka", "kafka", "faust.transport", "mode.")


class RateLimit(logging.Filter):
    """Pass a record once per ``interval`` seconds per (logger, level, message template); count
    the rest and report the count on the next record that passes.

    Examples
    --------
    >>> now = [0.0]
    >>> limit = RateLimit(interval=10.0, clock=lambda: now[0])
    >>> def make():
    ...     return logging.LogRecord("kafka.conn", logging.ERROR, "", 0, "connect to %s failed", ("b",), None)
    >>> [limit.filter(make()) for _ in range(3)]
    [True, False, False]
    >>> now[0] = 11.0
    >>> record = make(); limit.filter(record), record.getMessage()
    (True, 'connect to b failed (2 more like this in the last 11 s)')
    """

    def __init__(self, interval: float = 30.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        with self._lock:
            last, held = self._last.get(key, (float("-inf"), 0))
            if now - last < self.interval:
                self._last[key] = (last, held + 1)
                return False
            self._last[key] = (now, 0)
            if len(self._last) > 10_000:  # templates are few; never let the table grow unbounded
                self._last.clear()
        if held:
            record.msg = f"{record.msg} ({held} more like this in the last {now - last:.0f} s)"
        return True


def configure_logging(level: str, *, interval: float = 30.0) -> None:
    """Configure the root handler (the entry point's job) and rate-limit the client libraries."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    limit = RateLimit(interval)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_OnlyNoisy(limit))


class _OnlyNoisy(logging.Filter):
    """Apply a rate limit to records of the :data:`NOISY` loggers only, at WARNING and above."""

    def __init__(self, limit: RateLimit) -> None:
        super().__init__()
        self.limit = limit

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(NOISY):
            return True
        return self.limit.filter(record)
