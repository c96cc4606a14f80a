"""Embedding on arrival, in a worker thread, through the embedding cache.

The consumer only writes rows to the store; :class:`ArrivalEmbedder` picks up the rows not yet
embedded (image and metadata of an inference, the text of a report), batches whatever has piled up,
and runs them through the same :func:`agent.audit.embed_samples` a refit uses, so the cache keys
match and a refit finds its vectors ready. The store's ``embedded`` flags make this restartable: a
crash loses at most the batch in flight, which is embedded again (or found in the cache) later.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from agent.audit import Embedded, embed_samples
from agent.embed.base import Embedder, WrappedEmbedder
from agent.fuse import MODALITIES
from agent.images import ImageAccess
from agent.sample import Sample
from agent.store import EmbedWork, Store

__all__ = ["ArrivalEmbedder", "SerialEmbedder"]

log = logging.getLogger(__name__)


class SerialEmbedder(WrappedEmbedder):
    """An :class:`~agent.embed.base.Embedder` that lets one thread at a time use ``inner``.

    The arrival worker and a refit share one model; this keeps their calls from overlapping.
    """

    def __init__(self, inner: Embedder) -> None:
        super().__init__(inner)
        self._lock = threading.Lock()

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Embed images with the inner embedder, alone."""
        with self._lock:
            return self.inner.embed_images(images)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts with the inner embedder, alone."""
        with self._lock:
            return self.inner.embed_texts(texts)


class ArrivalEmbedder:
    """Embeds newly stored inferences and reports in a background thread.

    Parameters
    ----------
    store
        Where the rows and their ``embedded`` flags are.
    embedder
        The (cached) embedder refits use too.
    modalities
        The modalities audits use; None for every one the stream carries.
    batch_size, image_size
        As for :func:`agent.audit.embed_samples`; up to ``4 * batch_size`` rows are taken at once.
    on_problem
        Called with ``(source, reason, message)`` for an input found bad while embedding (an
        unreadable image) after it was dead-lettered in the store.
    on_batch
        Called with ``(modality, seconds)`` after each embedded batch (for metrics).
    images
        Where image files may be read from (:class:`~agent.images.ImageAccess`; None refuses all).
    claim_seconds
        Claim the rows taken for that long, so that workers sharing a store split them (None: one
        worker, no claims).
    on_inferences
        Called with each batch of inferences and their blocks by modality (NaN rows where a case
        lacks one) once embedded, before they are marked so (the early warning's assignment). A
        failure there is logged and does not stop embedding.
    on_vectors
        Called likewise with every embedded batch, of inferences and of reports (the weekly
        embedding samples of embedding drift); a failure there is logged too.
    """

    def __init__(
        self,
        store: Store,
        embedder: Embedder,
        *,
        modalities: Sequence[str] | None = None,
        batch_size: int = 32,
        image_size: int = 224,
        on_problem: Callable[[str, str, str], None] | None = None,
        on_batch: Callable[[str, float], None] | None = None,
        claim_seconds: float | None = None,
        images: ImageAccess | None = None,
        on_inferences: Callable[[Sequence[Sample], Mapping[str, np.ndarray]], object] | None = None,
        on_vectors: Callable[[Sequence[Sample], Mapping[str, np.ndarray]], object] | None = None,
    ) -> None:
        self.store = store
        self.on_inferences = on_inferences
        self.on_vectors = on_vectors
        self.embedder = embedder
        self.modalities = tuple(modalities) if modalities else MODALITIES
        self.batch_size = batch_size
        self.image_size = image_size
        self.on_problem = on_problem
        self.on_batch = on_batch
        self.claim_seconds = claim_seconds
        self.images = images
        self.embedded = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the worker thread (a daemon: it holds nothing that a crash could lose)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="arrival-embedder", daemon=True)
            self._thread.start()

    def notify(self) -> None:
        """Say that new rows were stored."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batch in flight and stop."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def drain(self) -> int:
        """Embed everything pending now, in the calling thread; returns how many rows."""
        done = 0
        while work := self.store.unembedded(self.batch_size * 4):
            self._embed(work)
            done += len(work)
        return done

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            while not self._stop.is_set():
                try:
                    work = self.store.unembedded(self.batch_size * 4, claim_seconds=self.claim_seconds)
                    if not work:
                        break
                    self._embed(work)
                except Exception:  # a failing model must not kill the worker; retry later
                    log.exception("embedding on arrival failed; retrying in 5 s")
                    self._stop.wait(5.0)
                    break

    def _embed(self, work: Sequence[EmbedWork]) -> None:
        inferences = [w for w in work if w.kind == "inference"]
        reports = [w for w in work if w.kind == "report"]
        if inferences:
            mods = [m for m in ("image", "metadata") if m in self.modalities]
            if mods:
                emb = self._run_batch(inferences, mods)
                samples = [w.sample for w in inferences]
                self._hand_on(self.on_inferences, samples, emb, "assigning them to the known slices")
                self._hand_on(self.on_vectors, samples, emb, "sampling their embeddings")
        if reports and "report" in self.modalities:
            emb = self._run_batch(reports, ["report"])
            self._hand_on(self.on_vectors, [w.sample for w in reports], emb, "sampling their embeddings")
        self.store.mark_embedded(work)
        self.embedded += len(work)

    @staticmethod
    def _hand_on(
        to: Callable[[Sequence[Sample], Mapping[str, np.ndarray]], object] | None,
        samples: Sequence[Sample],
        emb: Embedded,
        what: str,
    ) -> None:
        if to is None:
            return
        try:
            to(samples, emb.blocks)
        except Exception:  # the early warning and the samples must not stop embedding
            log.exception("%d embedded row(s): %s failed", len(samples), what)

    def _run_batch(self, work: Sequence[EmbedWork], modalities: Sequence[str]) -> Embedded:
        started = time.perf_counter()
        samples = [w.sample for w in work]
        if "image" in modalities and not any(s.image for s in samples):
            modalities = [m for m in modalities if m != "image"]
        emb = embed_samples(
            samples,
            modalities,
            self.embedder,
            batch_size=self.batch_size,
            image_size=self.image_size,
            images=self.images,
        )
        seconds = time.perf_counter() - started
        if self.on_batch is not None:
            for modality in modalities:
                self.on_batch(modality, seconds / len(modalities))
        if "image" in modalities or "metadata" in modalities:
            self.store.record_images(
                {
                    (s.model, s.study_uid): (key, meta if s.metadata is None and s.image else {})
                    for s, key, meta in zip(samples, emb.image_keys, emb.metadata, strict=True)
                    if key is not None or (s.metadata is None and s.image and meta)
                }
            )
        by_study = {f"study {s.study_uid}": s for s in samples}
        for problem in emb.problems:
            sample = by_study.get(problem.where)
            source = f"image:{sample.event_id}" if sample is not None else f"image:{problem.where}"
            if self.store.dead_letter(source, problem.reason, problem.message) and self.on_problem:
                self.on_problem(source, problem.reason, problem.message)
        log.debug("embedded %d %s row(s) in %.2f s", len(samples), "+".join(modalities), seconds)
        return emb
