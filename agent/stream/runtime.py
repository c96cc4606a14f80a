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
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from agent.config import Settings
from agent.store import DeadLetter
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


def build_app(settings: Settings, sidecar: Sidecar) -> Any:
    """A faust app whose agents feed ``sidecar`` from the three event topics.

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

    async def handle(stream: Any, events: Sequence[Any]) -> None:
        messages = [
            Message(f"{e.message.topic}:{e.message.partition}:{e.message.offset}", e.message.value)
            for e in events
        ]
        try:
            sidecar.ingest(messages)
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
        try:
            await deliver_dead_letters()
        except Exception as err:
            log.warning("dead letters not delivered yet (%s); retrying", type(err).__name__)

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
                log.exception("refit of %s failed", model)

    kinds = {s.inference_topic: "inference", s.label_topic: "label", s.report_topic: "report"}

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
        running = refits["running"]
        if running is not None and not running.done():
            return
        due = sidecar.due_models()
        refits["running"] = asyncio.ensure_future(run_refits(due)) if due else None

    async def assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
        partitions = sorted((tp.topic, tp.partition) for tp in assigned)
        sidecar.store.record_assignment(partitions, worker=sidecar.worker)
        sidecar.assigned_at = sidecar.clock()
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


def run_worker(settings: Settings, sidecar: Sidecar, *, loglevel: str = "WARNING") -> None:
    """Run the agent until SIGTERM or SIGINT (blocking); exits the process when done."""
    import faust

    from agent.stream.topics import ensure_topics

    if settings.stream.create_topics:
        ensure_topics(settings.stream)
    sidecar.start()
    app = build_app(settings, sidecar)
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
        sidecar.close()
