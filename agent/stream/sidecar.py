"""The agent's logic, whatever feeds it: store, arrival embedding, drift, refits and metrics.

Both shells drive one :class:`Sidecar`: the faust runtime (:mod:`agent.stream.runtime`) from
Kafka, and the replay (:mod:`agent.stream.replay`) from a file. They hand it batches of raw
messages (:meth:`Sidecar.ingest`, durable when it returns), ask which models are due for a refit
(:meth:`Sidecar.due_models`) and run :meth:`Sidecar.refit` where they like (the runtime in a worker
thread), and deliver the dead letters the store keeps in its outbox.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agent.config import Settings
from agent.drift import DriftMonitor, EmbeddingDrift
from agent.drift.weekly import EmbeddingSampler, weekly_drift
from agent.embed.base import Embedder
from agent.exporter import shown
from agent.images import ImageAccess
from agent.pacs import PacsClient, RetryPolicy
from agent.paths import open_private
from agent.store import ApplyResult, LogMark, Store
from agent.stream.embedding import ArrivalEmbedder, SerialEmbedder
from agent.stream.ingest import Message, decode_messages
from agent.stream.lease import Lease
from agent.stream.refit import RefitOutcome, Refitter
from agent.warn import EarlyWarning, WarningState

if TYPE_CHECKING:
    from agent.exporter import Exporter, Health

__all__ = ["Sidecar"]

log = logging.getLogger(__name__)


class Sidecar:
    """Everything the streaming agent does between reading a message and writing a report.

    Parameters
    ----------
    settings
        The agent's settings.
    embedder
        The embedder (wrap it in a cache: vectors embedded on arrival are read back by refits).
    exporter
        Where metrics go, if anywhere.
    store
        The state store (default: the one the settings name).
    clock
        Wall-clock time source.
    """

    def __init__(
        self,
        settings: Settings,
        embedder: Embedder,
        *,
        exporter: Exporter | None = None,
        store: Store | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.exporter = exporter
        self.clock = clock
        s = settings.stream
        self.store = store if store is not None else Store.from_settings(s, clock=clock)
        #: This worker's name in leases and assignments: unique per process start.
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.embedder = SerialEmbedder(embedder)
        self.drift = DriftMonitor(delta=s.drift_delta)
        self._drift_lock = threading.Lock()
        self._refit_lock = threading.Lock()
        access = ImageAccess.from_settings(settings.images)
        #: The early warning from unlabeled traffic (assignment on arrival, share tests, estimates).
        self.warning = EarlyWarning(self.store, settings.warn, beta=settings.audit.beta, clock=clock)
        #: The weekly embedding samples behind the embedding drift (none kept when the size is 0).
        self.sampler = EmbeddingSampler(self.store, settings.summary)
        self._embedding_drift_at: float | None = None
        self.arrival = ArrivalEmbedder(
            self.store,
            self.embedder,
            modalities=settings.modalities,
            batch_size=settings.embed.batch_size,
            image_size=settings.embed.image_size,
            on_problem=self._on_embed_problem,
            on_batch=self._on_embed_batch,
            # Several workers share a PostgreSQL store: each claims the rows it embeds.
            claim_seconds=s.embed_claim_seconds if self.store.postgres else None,
            images=access,
            pacs=PacsClient(settings.pacs, access, size=settings.embed.image_size),
            retry=RetryPolicy.from_settings(settings.pacs),
            on_fetch_failure=self._on_fetch_failure,
            clock=clock,
            on_inferences=self.warning.observe if settings.warn.enabled else None,
            on_vectors=self.sampler.observe if settings.summary.embedding_samples else None,
        )
        self.refitter = Refitter(
            self.store,
            self.embedder,
            settings,
            extras=self._extras,
            clock=clock,
            warning=self.warning if settings.warn.enabled else None,
        )
        self.refits = 0
        self._started = False
        #: When the event loop last ticked, and when a partition assignment last came (runtime).
        self.heartbeat = clock()
        self.assigned_at: float | None = None
        self.last_refit_at: float | None = None
        if exporter is not None:
            exporter.health = self.health
        self._published: dict[tuple[str, str], Any] = {}

    def __repr__(self) -> str:
        return f"Sidecar(store={self.store.describe()!r}, worker={self.worker!r})"

    def start(self) -> None:
        """Rebuild the drift detectors from the stored windows and start embedding on arrival."""
        if self._started:
            return
        self._started = True
        n = 0
        for model in self.store.models():
            for seq, label, prediction, ts in self.store.outcomes(model):
                self._update_drift(model, seq, label, prediction, ts)
                n += 1
        log.info(
            "state store %s opened: %d model(s), %d labeled sample(s) in windows",
            self.store.describe(),
            len(self.store.models()),
            n,
        )
        if self.settings.stream.embed_on_arrival:
            self.arrival.start()
            self.arrival.notify()
        self.refresh()

    def close(self) -> None:
        """Stop the arrival worker and close the store."""
        self.arrival.stop()
        self.store.close()

    # ------------------------------------------------------------------ ingest

    def ingest(
        self,
        messages: Sequence[Message],
        *,
        position: tuple[str, int] | None = None,
        marks: Sequence[LogMark] = (),
        maintain: bool | None = None,
    ) -> ApplyResult:
        """Decode and apply one batch; durable when this returns (commit offsets after it).
        ``maintain`` as for :meth:`~agent.store.Store.apply` (a replay expires after every batch, so
        that it behaves the same on every run)."""
        incoming = decode_messages(
            messages,
            max_report_chars=self.settings.audit.max_report_chars,
            naive=self.settings.stream.naive_timestamps,
            limits=self.settings.events,
        )
        result = self.store.apply(incoming, position=position, marks=marks, maintain=maintain)
        for joined in result.joined:
            self._update_drift(joined.model, joined.seq, joined.label, joined.prediction, joined.timestamp)
        if self.exporter is not None:
            metrics = self.exporter.agent
            for kind, n in result.accepted.items():
                metrics.consumed(kind, n)
            for reason, n in result.dead_lettered.items():
                metrics.dead_lettered(reason, n)
            for joined in result.joined:
                metrics.observe_label_delay(joined.model, joined.label_delay_seconds)
        if result.to_embed:
            self.arrival.notify()
        if result.dead_lettered:
            log.debug("dead-lettered %s", dict(result.dead_lettered))
        return result

    def health(self, *, stale_seconds: float = 60.0) -> Health:
        """Liveness: the event loop ticked within ``stale_seconds``. Readiness: alive, the store
        answers, and the consumer has been given its partitions (a replay is ready when started).
        Details are ages and counts only."""
        from agent.exporter import Health

        now = self.clock()
        live = now - self.heartbeat < stale_seconds
        detail: dict[str, object] = {"heartbeat_age_seconds": round(now - self.heartbeat, 1)}
        try:
            oldest = self.store.oldest_unembedded_age()
            store_ok = True
        except Exception as err:  # the store is away: not ready, and said so
            log.warning("health: the state store does not answer (%s)", type(err).__name__)
            oldest, store_ok = None, False
        detail["store"] = "ok" if store_ok else "unavailable"
        detail["oldest_unembedded_age_seconds"] = None if oldest is None else round(oldest, 1)
        detail["partitions_assigned"] = self.assigned_at is not None
        detail["last_refit_age_seconds"] = (
            None if self.last_refit_at is None else round(now - self.last_refit_at, 1)
        )
        return Health(live, live and store_ok and self.assigned_at is not None, detail)

    def watch(self) -> list[WarningState]:
        """Run the early warning's tests on the buckets completed since, and its estimates; the
        exporter, if any, shows them. Called by :meth:`refresh`."""
        try:
            states = self.warning.evaluate()
        except Exception:  # the early warning must not stop the metrics or the stream
            log.exception("the early warning's evaluation failed")
            return []
        if self.exporter is not None:
            self.exporter.publish_warnings(states)
        return states

    def watch_embeddings(self, *, force: bool = False) -> list[tuple[str, EmbeddingDrift]] | None:
        """Compare the newest weeks' embedding samples per modality (:func:`weekly_drift`), at most
        every ``summary.drift_every_seconds`` unless ``force``; the exporter, if any, shows the
        result. None when not due. Called by :meth:`refresh`."""
        now = self.clock()
        every = self.settings.summary.drift_every_seconds
        if not force and self._embedding_drift_at is not None and now - self._embedding_drift_at < every:
            return None
        self._embedding_drift_at = now
        try:
            drifts = weekly_drift(self.store, self.settings.summary)
        except Exception:  # the drift statistic must not stop the metrics or the stream
            log.exception("the embedding drift statistic failed")
            return None
        if self.exporter is not None:
            self.exporter.agent.set_embedding_drift(d for _, d in drifts)
        return drifts

    def refresh(self) -> None:
        """Bring the exporter up to the store: the latest report of every model (refitted by this
        worker or another, before a restart too, so dashboards never go blank in a quiet period),
        the backlogs, and models that left (their series are forgotten); run the early warning
        (:meth:`watch`) and, on its slower timer, the embedding drift (:meth:`watch_embeddings`).
        Called at start and on the runtime's timer (in a worker thread, off the event loop)."""
        self.watch()
        self.watch_embeddings()
        if self.exporter is None:
            return
        from agent.report import SliceReport

        models = set(self.store.models())
        exported = dict(self.exporter.slices.reports)
        for document in self.store.latest_reports():
            key = (str(document.get("model")), str(document.get("target_class")))
            if key in exported and self._published.get(key) == document.get("refit"):
                continue
            self._published[key] = document.get("refit")
            tracking = {
                s["id"]: (s.get("status") == "emerging", int(s.get("age_refits", 1)))
                for s in document.get("slices", [])
            }
            self.exporter.publish(SliceReport.from_dict(document), tracking)
        for model, _ in exported:
            if model not in models or not self.store.window_size(model):
                self.exporter.forget_model(model)
        metrics = self.exporter.agent
        sizes = self.store.sizes()
        metrics.set_join_waiting(inferences=sizes["pending"], labels=sizes["labels"])
        metrics.set_unsent_dead_letters(sizes["unsent"])
        metrics.set_oldest_unembedded_age(self.store.oldest_unembedded_age() or 0.0)
        metrics.set_pacs_waiting(self.store.waiting_fetches())
        for model, waiting in self.store.backlog().items():
            metrics.set_join_backlog(model, waiting)

    def _update_drift(self, model: str, seq: int, label: Any, prediction: Any, ts: float) -> None:
        """Feed one outcome to the drift monitor; a new detection is recorded, logged and appended
        to ``reports_dir/drift-events.jsonl`` (the weekly summary's ``--drift-events``).

        Replayed at start from the stored windows; detections recorded before are not repeated.
        """
        with self._drift_lock:
            self.drift.update(model, label=label, prediction=prediction)
            signal = self.drift.signal
        if signal is None or not self.store.record_drift(model, signal.cls, seq, signal.error_rate):
            return
        log.info(
            "error-rate drift of %s on class %s: now %.3f over the last %d outcomes",
            shown(model),
            shown(signal.cls),
            signal.error_rate,
            signal.window_length,
        )
        record = {
            "at": datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "model": model,
            "target_class": signal.cls,
            "statistic": round(signal.error_rate, 6),
            "threshold": None,
        }
        path = self.settings.stream.reports_dir / "drift-events.jsonl"
        with open_private(path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.exporter is not None:
            self.exporter.agent.drift_detected(model, signal.cls)

    def _extras(self, model: str) -> Mapping[str, Any]:
        with self._drift_lock:
            drift = {
                str(cls): {
                    "error_rate": round(d.error_rate, 6),
                    "n": d.n_seen,
                    "detections": d.n_detections,
                }
                for m, cls in self.drift.keys
                if m == model and (d := self.drift.detector(m, cls)) is not None
            }
        return {"drift": drift}

    def _on_embed_problem(self, source: str, reason: str, message: str) -> None:
        log.debug("dead-lettered %s while embedding: %s", source, message)
        if self.exporter is not None:
            self.exporter.agent.dead_lettered(reason)

    def _on_fetch_failure(self, reason: str) -> None:
        if self.exporter is not None:
            self.exporter.agent.pacs_fetch_failed(reason)

    def _on_embed_batch(self, modality: str, seconds: float) -> None:
        if self.exporter is not None:
            self.exporter.agent.observe_embedding(modality, seconds)

    # ------------------------------------------------------------------ refits

    def due_models(self, now: float | None = None) -> list[str]:
        """Models with ``refit_every_labels`` new labels, or new labels ``refit_every_seconds`` old."""
        s = self.settings.stream
        return self.store.due_models(
            self.clock() if now is None else now, s.refit_every_labels, s.refit_every_seconds
        )

    def refit(self, model: str, *, trigger: str = "schedule") -> list[RefitOutcome]:
        """Refit ``model`` now, if no other worker is refitting it and it has labels its last refit
        did not see (blocking; one refit at a time per worker), and publish what it found."""
        s = self.settings.stream
        lease = Lease(self.store, f"refit:{model}", self.worker, s.refit_lease_seconds)
        with self._refit_lock:
            if not lease.acquire():
                log.debug("refit of %s skipped: another worker holds its lease", model)
                return []
            with lease:
                # Another worker may have refitted it between our look at the schedule and the lease.
                if not self.store.labels_since_refit(model):
                    return []
                outcomes = self.refitter.refit(model, trigger=trigger, lease=lease)
            self.refits += len(outcomes)
            self.last_refit_at = self.clock()
        if self.exporter is not None:
            for outcome in outcomes:
                self.exporter.agent.refit_done(outcome.model, outcome.target, outcome.seconds)
                self.exporter.publish(outcome.report, outcome.tracking)
        return outcomes

    def counts(self) -> dict[str, int]:
        """The store's counters (joined per model, dead letters per reason, duplicates, ...)."""
        return self.store.counts()
