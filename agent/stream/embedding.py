"""Embedding on arrival, in a worker thread, through the embedding cache.

The consumer only writes rows to the store; :class:`ArrivalEmbedder` picks up the rows not yet
embedded (image and metadata of an inference, the text of a report), batches whatever has piled up,
and runs them through the same :func:`agent.audit.embed_samples` a refit uses, so the cache keys
match and a refit finds its vectors ready. The store's ``embedded`` flags make this restartable: a
crash loses at most the batch in flight, which is embedded again (or found in the cache) later.

An image named by UIDs is fetched from the PACS here (:class:`agent.pacs.PacsClient`, through the
image access boundary) and only its vector is kept. When the PACS is down or slow, the inference
waits in the store with its retry time (:class:`agent.pacs.RetryPolicy`) while the rest of the batch
goes on; once the policy gives up, the inference is embedded without its image and the image is
dead-lettered with its reason (``pacs_gave_up``, or the error's own when retrying cannot help).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from agent.audit import Embedded, embed_samples
from agent.embed.base import Embedder, WrappedEmbedder
from agent.errors import AgentError, ImageRefusedError
from agent.fuse import MODALITIES
from agent.images import ImageAccess
from agent.pacs import FetchedImage, PacsClient, PacsError, RetryPolicy
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
    pacs
        Where images named by UIDs are fetched from (None: such images are left without a vector).
    retry
        When a failed fetch is tried again, and when it is given up.
    on_fetch_failure
        Called with the reason of each failed fetch (for metrics).
    clock
        The store's wall clock: retry times are kept on it.
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
        pacs: PacsClient | None = None,
        retry: RetryPolicy | None = None,
        on_fetch_failure: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
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
        self.pacs = pacs
        self.retry = retry if retry is not None else RetryPolicy()
        self.on_fetch_failure = on_fetch_failure
        self.clock = clock
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
        """Embed everything pending now, in the calling thread; returns how many rows (a row whose
        image waits for the PACS is not one of them)."""
        done = 0
        while work := self.store.unembedded(self.batch_size * 4):
            done += self._embed(work)
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

    def _embed(self, work: Sequence[EmbedWork]) -> int:
        inferences = [w for w in work if w.kind == "inference"]
        reports = [w for w in work if w.kind == "report"]
        waiting: set[tuple[str, ...]] = set()
        if inferences:
            mods = [m for m in ("image", "metadata") if m in self.modalities]
            if mods:
                fetched, waiting = self._fetch(inferences, mods)
                ready = [w for w in inferences if w.key not in waiting]
                if ready:
                    emb = self._run_batch(ready, mods, fetched)
                    samples = [w.sample for w in ready]
                    self._hand_on(self.on_inferences, samples, emb, "assigning them to the known slices")
                    self._hand_on(self.on_vectors, samples, emb, "sampling their embeddings")
        if reports and "report" in self.modalities:
            emb = self._run_batch(reports, ["report"])
            self._hand_on(self.on_vectors, [w.sample for w in reports], emb, "sampling their embeddings")
        done = [w for w in work if w.key not in waiting or w.kind != "inference"]
        self.store.mark_embedded(done)
        self.embedded += len(done)
        return len(done)

    def _fetch(
        self, work: Sequence[EmbedWork], modalities: Sequence[str]
    ) -> tuple[dict[tuple[str, ...], FetchedImage], set[tuple[str, ...]]]:
        """Fetch the images named by UIDs: what came, by row key, and the rows left to wait.

        After the PACS is found down or slow, the rest of the batch waits without a request.
        """
        fetched: dict[tuple[str, ...], FetchedImage] = {}
        waits: dict[tuple[str, str], tuple[int, float, float]] = {}
        if self.pacs is None:
            return fetched, set()
        down: PacsError | None = None
        for w in work:
            uids = w.sample.pacs_uids
            if uids is None or w.sample.image or ("image" not in modalities and w.sample.metadata):
                continue
            try:
                if down is not None:
                    raise down
                fetched[w.key] = self.pacs.fetch(*uids)
            except PacsError as err:
                if err.reason in ("pacs_unavailable", "pacs_timeout"):
                    down = err
                self._failed(w, err, waits)
            except ImageRefusedError as err:
                self._problem(w, err.reason, str(err))
            except (AgentError, OSError) as err:
                self._problem(w, "unreadable_image", str(err))
            except ValueError as err:  # a study UID that is not a DICOM UID: never sent anywhere
                self._problem(w, "image_refused", str(err))
        self.store.defer_fetches(waits)
        return fetched, {(model, study) for model, study in waits}

    def _failed(
        self, w: EmbedWork, err: PacsError, waits: dict[tuple[str, str], tuple[int, float, float]]
    ) -> None:
        """Schedule the next try of a failed fetch, or give the image up (dead-lettered)."""
        if self.on_fetch_failure is not None:
            self.on_fetch_failure(err.reason)
        now = self.clock()
        first = w.first_failure_at if w.first_failure_at is not None else now
        failures = w.fetch_failures + 1
        at = self.retry.next_try(first_failure=first, failures=failures, now=now, error=err)
        if at is not None:
            waits[(w.key[0], w.key[1])] = (failures, first, at)
            log.debug("image fetch failed (%s); try %d in %.0f s", err.reason, failures + 1, at - now)
        elif not err.retryable:
            self._problem(w, err.reason, str(err))
        else:
            self._problem(
                w,
                "pacs_gave_up",
                f"image not fetched after {failures} tries over {now - first:.0f} s "
                f"(pacs.give_up_after_seconds); last: {err}",
            )

    def _problem(self, w: EmbedWork, reason: str, message: str) -> None:
        source = f"image:{w.sample.event_id}"
        if self.store.dead_letter(source, reason, message) and self.on_problem:
            self.on_problem(source, reason, message)

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

    def _run_batch(
        self,
        work: Sequence[EmbedWork],
        modalities: Sequence[str],
        fetched: Mapping[tuple[str, ...], FetchedImage] | None = None,
    ) -> Embedded:
        started = time.perf_counter()
        samples = [w.sample for w in work]
        fetched = fetched or {}
        if "image" in modalities and not any(w.sample.image or w.key in fetched for w in work):
            modalities = [m for m in modalities if m != "image"]
        emb = embed_samples(
            samples,
            modalities,
            self.embedder,
            batch_size=self.batch_size,
            image_size=self.image_size,
            images=self.images,
            fetched={i: fetched[w.key] for i, w in enumerate(work) if w.key in fetched},
        )
        seconds = time.perf_counter() - started
        if self.on_batch is not None:
            for modality in modalities:
                self.on_batch(modality, seconds / len(modalities))
        if "image" in modalities or "metadata" in modalities:
            self.store.record_images(
                {
                    (s.model, s.study_uid): (key, meta if s.metadata is None and s.has_image else {})
                    for s, key, meta in zip(samples, emb.image_keys, emb.metadata, strict=True)
                    if key is not None or (s.metadata is None and s.has_image and meta)
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
