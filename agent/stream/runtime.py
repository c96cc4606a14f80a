"""The faust-streaming shell: Kafka topics in, the :class:`~agent.stream.sidecar.Sidecar` in the middle.

The app is built by :func:`build_app` from the settings (never at import time), so tests and workers
make their own. One agent per topic (inference, label, report), each with ``concurrency=1``, takes
batches with manual acknowledgement, and for each batch:

1. applies it to the store in one transaction (durable on return; idempotent by event id);
2. acknowledges every event of the batch in order;
3. commits the consumer offsets (a failed commit, say during a rebalance, only means the batch is
   delivered again and recognised as such);
4. hands the dead letters the store recorded to the dead-letter topic, then marks them delivered.

Offsets therefore never run ahead of the state they cover. A one-second timer delivers dead letters
found off the loop (unreadable images) and starts due refits in a worker thread, one at a time, so
the consumer never waits for a refit or for the embedding model. These are the settings and the
shape that were crash-tested on the Tansu broker: no faust Tables (their changelogs cannot be
restored there), no ``exactly_once``, no agent concurrency.

Every batch keeps, per partition, a mark of its last message; a timer (and every assignment) asks
the broker whether those marks and the topics' ids still hold (:mod:`agent.stream.continuity`). A
partition whose log is not the one the agent read is read again from the start of its current
log, between two batches: the consumer's bookkeeping for it is reset as on a revocation, its
position and committed offset are set to the log's first offset, and messages that were fetched
from the old position before the seek are passed over unacknowledged (by the agent, not by
faust's own read-offset filter, which they would otherwise raise above the new log's first
messages: :class:`ReadOffsets`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from agent.config import Settings, StreamSettings
from agent.exporter import shown
from agent.store import DeadLetter
from agent.stream.continuity import Continuity, LogProbe, Reset, batch_marks, rewinds
from agent.stream.ingest import Message
from agent.stream.sidecar import Sidecar

__all__ = ["build_app", "dead_letter_payload", "run_worker"]

log = logging.getLogger(__name__)


def dead_letter_payload(letter: DeadLetter) -> bytes:
    """The dead-letter topic's message: the reason, the message, where it came from, and the input.

    >>> dead_letter_payload(DeadLetter(1, "t:0:5", "invalid_json", "bad", b"{", 0.0))
    b'{"source": "t:0:5", "reason": "invalid_json", "message": "bad", "raw": "{"}'
    """
    record = {
        "source": letter.source,
        "reason": letter.reason,
        "message": letter.message,
        "raw": (letter.raw or b"").decode("utf-8", errors="replace"),
    }
    return json.dumps(record).encode("utf-8")


def build_app(settings: Settings, sidecar: Sidecar, probe: LogProbe | None = None) -> Any:
    """A faust app whose agents feed ``sidecar`` from the three event topics.

    ``probe`` asks the broker whether the logs are the ones the agent read (one of its own when
    None; the caller closes one it passes).

    Returns
    -------
    faust.App
        Not started; run it with :func:`run_worker` (or ``faust.Worker``).
    """
    import faust

    s = settings.stream
    # faust's own folder (it keeps nothing the agent needs): by the SQLite store, or one per
    # process in the temporary folder when the state is shared, so that workers never share it.
    if s.store_url is None:
        datadir = s.store_path.expanduser().resolve().parent / f".faust-{s.group_id}"
    else:
        datadir = Path(tempfile.gettempdir()) / f"slice-agent-faust-{s.group_id}-{os.getpid()}"
    app = faust.App(
        s.group_id,
        broker=[f"kafka://{host.strip()}" for host in s.bootstrap_servers.split(",") if host.strip()],
        store="memory://",
        web_enabled=False,
        topic_disable_leader=True,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=s.session_timeout_seconds,
        broker_heartbeat_interval=s.heartbeat_interval_seconds,
        broker_rebalance_timeout=s.rebalance_timeout_seconds,
        broker_request_timeout=s.request_timeout_seconds,
        producer_acks=-1,
        datadir=str(datadir),
    )
    dead_letter_topic = app.topic(s.dead_letter_topic, key_serializer="raw", value_serializer="raw")
    delivering = asyncio.Lock()
    refits: dict[str, asyncio.Future[Any] | None] = {"running": None}
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="refit")
    kinds = {s.inference_topic: "inference", s.label_topic: "label", s.report_topic: "report"}
    # Batches and log resets take turns: a reset never lands between a batch's apply and its commit.
    batch_lock = asyncio.Lock()
    if probe is None:
        probe = log_probe(s)
    continuity = Continuity(sidecar.store, probe)
    probing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="log-check")
    committed: dict[tuple[str, int], int] = {}  # what this process committed, per partition
    rereading: dict[tuple[str, int], tuple[int, int | None]] = {}  # (first offset, last passed over)
    app.consumer._read_offset = ReadOffsets(rereading)  # type: ignore[attr-defined]
    checks = {"due": 0.0, "running": False}

    async def deliver_dead_letters() -> None:
        async with delivering:
            while letters := sidecar.store.unsent_dead_letters():
                sent: list[int] = []
                try:
                    # Letters are acknowledged in order; whatever the broker took is marked sent
                    # even when a later one fails, so a retry never sends a letter twice.
                    pending = [
                        await dead_letter_topic.send(
                            key=letter.reason.encode("utf-8"),
                            value=dead_letter_payload(letter),
                            headers=[("reason", letter.reason.encode("utf-8"))],
                        )
                        for letter in letters
                    ]
                    for letter, acknowledged in zip(letters, pending, strict=True):
                        await acknowledged
                        sent.append(letter.id)
                finally:
                    sidecar.store.mark_dead_letters_sent(sent)

    def fresh(event: Any) -> bool:
        """False for a message fetched from a partition's old position before it was reset."""
        key = (event.message.topic, event.message.partition)
        held = rereading.get(key)
        if held is None:
            return True
        first, passed = held
        offset = event.message.offset
        if offset <= first or (passed is not None and offset <= passed):
            del rereading[key]  # the seek took effect: this is the new log from its start
            return True
        rereading[key] = (first, offset)
        return False

    async def handle(stream: Any, events: Sequence[Any]) -> None:
        async with batch_lock:
            await apply_batch(stream, [e for e in events if fresh(e)])
        try:
            await deliver_dead_letters()
        except Exception as err:
            log.warning("dead letters not delivered yet (%s); retrying", type(err).__name__)

    async def apply_batch(stream: Any, events: Sequence[Any]) -> None:
        if not events:
            return
        messages = [
            Message(f"{e.message.topic}:{e.message.partition}:{e.message.offset}", e.message.value)
            for e in events
        ]
        firsts: dict[tuple[str, int], int] = {}
        for e in events:
            key = (e.message.topic, e.message.partition)
            firsts[key] = min(firsts.get(key, e.message.offset), e.message.offset)
        for (topic, partition), (first, done) in rewinds(firsts, committed).items():
            log.error(
                "%s partition %d went back to offset %d, before the offset %d this worker committed:"
                " the group's offsets were reset or lost. Reading on; events already applied are"
                " recognised by their ids.",
                topic,
                partition,
                first,
                done,
            )
            count_reset(topic, "rewound", 1)
            committed[(topic, partition)] = first
        try:
            sidecar.ingest(messages, marks=batch_marks(messages))
        except Exception as err:
            # The store cannot take writes (disk full, file gone): stop rather than skip inputs.
            log.critical("the state store failed; stopping the worker: %s", err)
            await app.crash(err)
            raise
        for event in events:
            await stream.ack(event)
        try:
            await app.consumer.commit()
        except Exception as err:  # a rebalance or a broker away: the batch comes again, idempotently
            log.warning("offset commit failed (%s); the batch will be delivered again", type(err).__name__)
            return
        for key, offset in batch_ends(events).items():
            committed[key] = max(committed.get(key, 0), offset)

    def batch_ends(events: Sequence[Any]) -> dict[tuple[str, int], int]:
        ends: dict[tuple[str, int], int] = {}
        for e in events:
            key = (e.message.topic, e.message.partition)
            ends[key] = max(ends.get(key, 0), e.message.offset + 1)
        return ends

    def count_reset(topic: str, reason: str, partitions: int) -> None:
        if reason == "rewound":
            sidecar.store.count_rewind(partitions)
        if sidecar.exporter is not None and topic in kinds:
            sidecar.exporter.agent.log_reset(kinds[topic], reason, partitions)

    async def reset(found: Reset) -> None:
        """Read ``found``'s partitions again from the start of their current log."""
        from faust.types import TP

        loop = asyncio.get_running_loop()
        assignment = app.consumer.assignment()
        tps = [tp for tp in (TP(found.topic, p) for p in found.partitions) if tp in assignment]
        if not tps:
            return
        log.error(
            "%s: the log of partition(s) %s is not the one this agent read (%s: %s). Reading them"
            " again from the start of their current log; events already applied are recognised by"
            " their ids.",
            found.topic,
            ", ".join(str(tp.partition) for tp in tps),
            found.reason,
            found.detail,
        )
        async with batch_lock:
            starts = await app.consumer.earliest_offsets(*tps)
            forget_progress(app.consumer, tps)
            await app.consumer.seek_wait({tp: int(starts.get(tp) or 0) for tp in tps})
            # Committed before the marks are dropped: a crash in between finds the reset again.
            await app.consumer._commit({tp: int(starts.get(tp) or 0) for tp in tps})  # type: ignore[attr-defined]
            for tp in tps:
                first = int(starts.get(tp) or 0)
                committed[(tp.topic, tp.partition)] = first
                rereading[(tp.topic, tp.partition)] = (first, None)
            await loop.run_in_executor(
                None,
                sidecar.store.reset_log,
                found.topic,
                found.topic_id,
                [tp.partition for tp in tps],
                found.reason,
            )
        count_reset(found.topic, found.reason, len(tps))

    async def check_logs() -> None:
        """Compare the assigned partitions' logs with what the store read from them."""
        loop = asyncio.get_running_loop()
        assigned = [(tp.topic, tp.partition) for tp in app.consumer.assignment() if tp.topic in kinds]
        try:
            found = await loop.run_in_executor(probing, continuity.check, assigned)
        except Exception as err:  # the broker is away: the next check tries again
            log.debug("log check skipped (%s: %s)", type(err).__name__, err)
            return
        for each in found:
            await reset(each)

    def make_agent(kind: str, topic_name: str) -> None:
        topic = app.topic(topic_name, key_serializer="raw", value_serializer="raw")

        async def consume(stream: Any) -> None:
            async for events in stream.noack().noack_take(s.batch_size, within=s.batch_seconds):
                await handle(stream, events)

        app.agent(topic, name=f"slice-agent.{kind}", concurrency=1)(consume)

    make_agent("inference", s.inference_topic)
    make_agent("label", s.label_topic)
    make_agent("report", s.report_topic)

    async def run_refits(models: Sequence[str]) -> None:
        loop = asyncio.get_running_loop()
        for model in models:
            try:
                await loop.run_in_executor(pool, sidecar.refit, model)
            except Exception:
                log.exception("refit of %s failed", shown(model))

    async def consumer_lag() -> dict[str, int]:
        """Messages behind the partitions' high watermarks, by event type. The broker's high
        watermark as last fetched: a lower bound on Tansu, which under-reports it after batches."""
        lag = dict.fromkeys(kinds.values(), 0)
        for tp in app.consumer.assignment():
            kind = kinds.get(tp.topic)
            position = await app.consumer.position(tp) if kind is not None else None
            if kind is None or position is None:
                continue
            lag[kind] += max(0, app.consumer.highwater(tp) - position)
        return lag

    @app.timer(interval=5.0)
    async def refresh() -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, sidecar.refresh)
            if sidecar.exporter is not None:
                for kind, behind in (await consumer_lag()).items():
                    sidecar.exporter.agent.set_consumer_lag(kind, behind)
        except Exception as err:  # metrics lag a tick; the stream goes on
            log.warning("metrics not refreshed (%s)", type(err).__name__)

    @app.timer(interval=1.0)
    async def tick() -> None:
        sidecar.heartbeat = sidecar.clock()
        try:
            await deliver_dead_letters()
        except Exception as err:
            log.warning("dead letters not delivered yet (%s); retrying", type(err).__name__)
        now = asyncio.get_running_loop().time()
        if not checks["running"] and now >= checks["due"]:
            checks["running"], checks["due"] = True, now + s.log_check_seconds
            try:
                await check_logs()
            finally:
                checks["running"] = False
        running = refits["running"]
        if running is not None and not running.done():
            return
        due = sidecar.due_models()
        refits["running"] = asyncio.ensure_future(run_refits(due)) if due else None

    async def assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
        partitions = sorted((tp.topic, tp.partition) for tp in assigned)
        sidecar.store.record_assignment(partitions, worker=sidecar.worker)
        sidecar.assigned_at = sidecar.clock()
        checks["due"] = 0.0  # check the new partitions' logs at the next tick
        continuity.forget(set(continuity.strikes) - set(partitions))
        log.info("assigned %d partition(s): %s", len(partitions), partitions)
        topics = {s.inference_topic, s.label_topic, s.report_topic}
        mine = sum(1 for t, _ in partitions if t in topics)
        if not sidecar.store.postgres and 0 < mine < len(topics) * s.partitions:
            log.error(
                "this worker was given %d of the %d event partitions but keeps its state in SQLite (%s):"
                " the other workers of group %s cannot join its events, nor it theirs. Run one worker"
                " per group on SQLite, or share a PostgreSQL store (stream.store_url).",
                mine,
                len(topics) * s.partitions,
                sidecar.store.describe(),
                s.group_id,
            )

    app.on_partitions_assigned.connect(assigned)  # type: ignore[arg-type]

    return app


def log_probe(settings: StreamSettings) -> LogProbe:
    """The probe that checks the event topics' logs (see :mod:`agent.stream.continuity`)."""
    return LogProbe(
        settings.bootstrap_servers, request_timeout_seconds=min(settings.request_timeout_seconds, 10.0)
    )


class ReadOffsets(defaultdict[Any, int | None]):
    """faust's read offset of each partition, except for partitions being read again.

    faust's fetch loop passes a message on only if its offset is at least the partition's read
    offset, and sets that offset to each message's after handing it on. A message fetched from
    the old position before a reset's seek, and handed on after it, therefore raises the read
    offset again, and faust then silently drops the messages of the new log below it: they were
    lost (a broker restart that recreated a topic while a batch was in flight lost the first
    tens of messages of some partitions, now and then). While a partition is in ``rereading``
    (until the agent sees the first message from its new start) faust reads no offset for it:
    every message reaches the agent, which passes over the ones from before the seek itself.

    >>> offsets = ReadOffsets({("t", 1): (0, None)})
    >>> offsets[("t", 0)], offsets[("t", 1)]
    (None, None)
    >>> offsets[("t", 0)] = offsets[("t", 1)] = 40
    >>> offsets[("t", 0)], offsets[("t", 1)]
    (40, None)
    """

    __slots__ = ("rereading",)

    def __init__(self, rereading: Mapping[tuple[str, int], object]) -> None:
        super().__init__(lambda: None)
        self.rereading = rereading

    def __getitem__(self, tp: Any) -> int | None:
        if (tp[0], tp[1]) in self.rereading:
            return None
        return super().__getitem__(tp)


def forget_progress(consumer: Any, partitions: Sequence[Any]) -> None:
    """Reset faust's acknowledgement bookkeeping for ``partitions``, as it does itself when they are
    revoked, so that offsets of a new log are acknowledged and committed from its start (faust
    otherwise ignores acknowledgements below the offset it last committed)."""
    for tp in partitions:
        for kept in (consumer._gap, consumer._acked, consumer._acked_index, consumer._read_offset):
            kept.pop(tp, None)
        consumer._committed_offset.pop(tp, None)


def run_worker(settings: Settings, sidecar: Sidecar, *, loglevel: str = "WARNING") -> None:
    """Run the agent until SIGTERM or SIGINT (blocking); exits the process when done."""
    import faust

    from agent.stream.topics import ensure_topics

    if settings.stream.create_topics:
        ensure_topics(settings.stream)
    sidecar.start()
    probe = log_probe(settings.stream)
    app = build_app(settings, sidecar, probe)
    worker = faust.Worker(
        app,
        loglevel=loglevel.upper(),
        quiet=True,
        redirect_stdouts=False,
        override_logging=False,
    )
    try:
        worker.execute_from_commandline()
    finally:
        probe.close()
        sidecar.close()
