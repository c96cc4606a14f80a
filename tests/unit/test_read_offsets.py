"""faust's fetch loop against the read offsets the agent gives it (``agent.stream.runtime``).

faust hands a message on only if its offset is at least the partition's read offset, and sets
that offset to each message's after handing it on. When the agent reads a partition again from
the start of a new log (a topic recreated by a broker restart), a message of the old log still
in flight must not raise that offset above the new log's first messages. These tests run
faust's own fetch loop (``Consumer._drain_messages``, the installed version's code) over one
batch, with the duck-typed consumer state it reads.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, MutableMapping
from types import SimpleNamespace
from typing import Any

from faust.transport.consumer import Consumer
from faust.types import TP

from agent.stream.runtime import ReadOffsets

PARTITION = TP("labels", 0)


class _Fetching:
    """What faust's fetch loop reads of its consumer: one batch of messages, then stop."""

    consumer_stopped_errors: tuple[type[BaseException], ...] = ()
    _commit_every = None
    should_stop = False

    def __init__(self, read_offset: MutableMapping[Any, int | None], offsets: Iterable[int]) -> None:
        self._read_offset = read_offset
        self._offsets = list(offsets)
        self._stopped = asyncio.Event()
        self.handed_on: list[int] = []
        self.diag = SimpleNamespace(set_flag=lambda flag: None, unset_flag=lambda flag: None)
        self.app = SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda topic: False))
        self.log = SimpleNamespace(dev=lambda *args, **kwargs: None)
        self.suspend_flow = asyncio.Event()

    async def callback(self, message: Any) -> None:
        self.handed_on.append(message.offset)

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        for offset in self._offsets:
            yield PARTITION, SimpleNamespace(offset=offset, topic=PARTITION.topic, key=None, value=None)
        self._stopped.set()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def wait_first(self, *coros: Any) -> None:
        for other in coros[1:]:
            other.close()
        await coros[0]


def _drain(read_offset: MutableMapping[Any, int | None], offsets: Iterable[int]) -> list[int]:
    consumer = _Fetching(read_offset, offsets)
    fetcher = SimpleNamespace(_stopped=asyncio.Event())
    asyncio.run(Consumer._drain_messages(consumer, fetcher))  # type: ignore[arg-type]
    return consumer.handed_on


# The old log's message 41 was fetched before the seek; the new log starts at 0.
AFTER_THE_SEEK = [41, 0, 1, 2, 3, 4]


def test_faust_drops_a_new_logs_messages_below_an_old_in_flight_offset():
    """The loss itself, with faust's own read offsets: the premise of the fix."""
    assert _drain(defaultdict(lambda: None), AFTER_THE_SEEK) == [41]


def test_a_partition_being_read_again_hands_every_message_to_the_agent():
    rereading = {(PARTITION.topic, PARTITION.partition): (0, None)}
    assert _drain(ReadOffsets(rereading), AFTER_THE_SEEK) == AFTER_THE_SEEK


def test_other_partitions_keep_fausts_filter():
    """Once the partition is no longer being read again, an offset below the read offset is a
    message faust has handed on already, and is passed over as faust does."""
    offsets = ReadOffsets({})
    offsets[PARTITION] = 40
    assert _drain(offsets, [39, 40, 41]) == [40, 41]
