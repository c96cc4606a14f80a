"""One refit of one model's window: the batch audit's pipeline, slice tracking, and the report on disk.

:meth:`Refitter.refit` reads the window from the store, calls :func:`agent.audit.run_audit` (the
same code ``slice-agent audit`` runs) once per target class, gives the slices their tracked ids and
states (:mod:`agent.tracking`), writes the slice report to
``reports_dir/<model>/<target class>/refit-<n>.json``, and records the report,
the slice history and the tracker state in the store. It blocks; the runtime calls it off the
event loop.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.audit import FitView, default_target_class, embed_samples, run_audit
from agent.config import Settings
from agent.embed.base import Embedder
from agent.errors import AgentError
from agent.events import ClassLabel
from agent.exporter import shown
from agent.images import ImageAccess
from agent.paths import open_private, safe_component
from agent.report import SliceReport
from agent.sample import Sample
from agent.store import Store
from agent.stream.lease import Lease
from agent.tracking import SliceObservation, SliceTracker
from agent.warm import WarmStart, WarmState
from agent.warn import EarlyWarning

__all__ = ["RefitOutcome", "Refitter", "load_latest", "report_dir"]

log = logging.getLogger(__name__)


def report_dir(reports_dir: Path, model: str, target: ClassLabel) -> Path:
    """Where the reports of a (model, target class) are written: one safe folder per name, whatever
    the name (``..``, separators, thousands of characters)."""
    return reports_dir / safe_component(model) / safe_component(str(target))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open_private(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


@dataclass(frozen=True)
class RefitOutcome:
    """What one refit of one (model, target class) produced."""

    model: str
    target: ClassLabel
    number: int
    report: SliceReport
    document: dict[str, Any]
    path: Path
    emerged: tuple[str, ...]
    resolved: tuple[str, ...]
    seconds: float

    @property
    def tracking(self) -> dict[str, tuple[bool, int]]:
        """Per slice id of the report: (emerging, age in refits), as the exporter takes it."""
        return {s["id"]: (s["status"] == "emerging", int(s["age_refits"])) for s in self.document["slices"]}


class Refitter:
    """Runs the audit on a model's window and keeps the slice history.

    Parameters
    ----------
    store
        The state store.
    embedder
        The (cached) embedder; vectors embedded on arrival are found in its cache.
    settings
        The agent's settings (audit, stream and modalities).
    extras
        Called with the model; what it returns is added to each report (the drift summary).
    clock
        Wall-clock time source.
    warning
        Where each refit's slices are described for the early warning (None: not described).
    """

    def __init__(
        self,
        store: Store,
        embedder: Embedder,
        settings: Settings,
        *,
        extras: Callable[[str], Mapping[str, Any]] | None = None,
        clock: Callable[[], float] = time.time,
        warning: EarlyWarning | None = None,
    ) -> None:
        self.warning = warning
        self.store = store
        self.embedder = embedder
        self.settings = settings
        self.extras = extras
        self.clock = clock
        # Each target's last warm state as this worker left it, with its cases' projections
        # (memory only): the next refit reads them if the shared state still has that basis.
        self._kept: dict[tuple[str, ClassLabel], WarmState] = {}

    def _targets(self, model: str, samples: Sequence[Sample]) -> list[ClassLabel]:
        configured = self.settings.stream.target_classes.get(model)
        if configured:
            return list(configured)
        return [default_target_class(samples, min_count=self.settings.audit.min_slice_size)]

    def refit(
        self, model: str, *, trigger: str = "schedule", lease: Lease | None = None
    ) -> list[RefitOutcome]:
        """Refit every target class of ``model`` on its window now.

        A window smaller than ``refit_min_samples``, or one the audit cannot fit (say, a single
        class), is skipped with a log line; the schedule moves on either way. Under a ``lease``,
        what a refit found is recorded only while the lease is still held.
        """
        samples, labels_total = self.store.snapshot(model)
        outcomes: list[RefitOutcome] = []
        s = self.settings.stream
        if len(samples) < s.refit_min_samples:
            log.info(
                "refit of %s skipped: window of %d < refit_min_samples=%d",
                shown(model),
                len(samples),
                s.refit_min_samples,
            )
        else:
            for target in self._targets(model, samples):
                try:
                    outcome = self._refit_one(model, target, samples, labels_total, trigger, lease)
                    if outcome is not None:
                        outcomes.append(outcome)
                except AgentError as err:
                    log.warning("refit of %s target=%s failed: %s", shown(model), shown(target), err)
                except Exception:  # a numerical failure must not stop the schedule or the stream
                    log.exception("refit of %s target=%s failed", shown(model), shown(target))
        self.store.mark_refit(model, labels_total, self.clock())
        return outcomes

    def _refit_one(
        self,
        model: str,
        target: ClassLabel,
        samples: Sequence[Sample],
        labels_total: int,
        trigger: str,
        lease: Lease | None,
    ) -> RefitOutcome | None:
        started = time.perf_counter()
        s = self.settings.stream
        warm = None
        if s.warm_refits:
            shared = WarmState.from_bytes(self.store.warm_state(model, target))
            if shared is not None:
                # Taken, not copied: the refit lets the last window's projections go once read.
                shared = shared.with_projections_of(self._kept.pop((model, target), None))
            warm = WarmStart(
                shared,
                refresh_refits=s.basis_refresh_refits,
                max_drift=s.basis_max_drift,
                remember=s.remember_projections,
            )
        fits: list[FitView] = []
        report, problems = run_audit(
            samples,
            embedder=self.embedder,
            settings=self.settings,
            target_class=target,
            known_names=self.store.known_names,
            warm=warm,
            on_fit=fits.append if self.warning is not None else None,
        )
        for problem in problems:
            log.debug("refit of %s: %s: %s", model, problem.reason, problem.message)
        tracker = SliceTracker.from_state(
            self.store.tracker_state(model, target),
            emerging_after=s.emerging_refits,
            resolve_after=s.resolve_refits,
            min_overlap=s.track_min_overlap,
            max_distance=s.track_max_distance,
        )
        by_uid = {x.study_uid: x for x in samples}
        observations = [
            SliceObservation(
                sl.id,
                frozenset(m.study_uid for m in sl.members),
                significant=True,
                centroid=self._centroid([by_uid[m.study_uid] for m in sl.members], report.modalities),
            )
            for sl in report.slices
        ]
        tracker.update(observations, window=by_uid.keys())
        tracked = report.with_slice_ids(tracker.assignments)
        number = self.store.next_refit_number(model, target)
        seconds = time.perf_counter() - started
        document = self._document(tracked, tracker, number, labels_total, trigger, seconds, report)
        if warm is not None:
            document["refit"]["start"] = warm.describe()
        held = None if lease is None else (lease.name, lease.holder)
        saved = None if warm is None or warm.current is None else warm.current.to_bytes()
        if (lease is not None and lease.lost) or not self.store.record_refit(
            model, target, number, document, tracker.to_state(), lease=held, warm_state=saved
        ):
            log.warning(
                "refit %d of %s target=%s dropped: its lease passed to another worker",
                number,
                shown(model),
                shown(target),
            )
            return None
        if warm is not None and warm.current is not None and warm.current.projected is not None:
            self._kept[model, target] = warm.current
        if self.warning is not None and fits:
            self._describe(fits[0], tracked, number)
        folder = report_dir(s.reports_dir, model, target)
        path = folder / f"refit-{number:06d}.json"
        _write_atomic(path, json.dumps(document, indent=2) + "\n")
        log.info(
            "refit %d of %s target=%s on %d samples: %d slice(s), %d emerging (%.1f s)",
            number,
            shown(model),
            shown(target),
            len(samples),
            len(report.slices),
            sum(t.status == "emerging" for t in tracker.tracks),
            seconds,
        )
        for tid in tracker.emerged:
            log.info("slice %s of %s target=%s is emerging", tid, shown(model), shown(target))
        for tid in tracker.resolved:
            log.info("slice %s of %s target=%s is resolved", tid, shown(model), shown(target))
        return RefitOutcome(
            model, target, number, tracked, document, path, tracker.emerged, tracker.resolved, seconds
        )

    def _describe(self, view: FitView, tracked: SliceReport, number: int) -> None:
        """Leave the early warning a description of the refit's slices; a failure there is
        logged and does not lose the refit."""
        assert self.warning is not None
        try:
            self.warning.record_fit(view, [sl.id for sl in tracked.slices], number)
        except Exception:
            log.exception(
                "refit %d of %s target=%s: describing its slices for the early warning failed",
                number,
                shown(tracked.model),
                shown(view.target),
            )

    def _centroid(self, members: Sequence[Sample], modalities: Sequence[str]) -> tuple[float, ...] | None:
        """Mean of the members' unit vectors per modality, concatenated: a space refits share."""
        if not members:
            return None
        emb = embed_samples(
            members,
            modalities,
            self.embedder,
            batch_size=self.settings.embed.batch_size,
            image_size=self.settings.embed.image_size,
            images=ImageAccess.from_settings(self.settings.images),
        )
        parts = []
        for modality in modalities:
            block = np.asarray(emb.blocks[modality], dtype=np.float64)
            ok = np.all(np.isfinite(block), axis=1)
            unit = np.zeros_like(block)
            norms = np.linalg.norm(block[ok], axis=1, keepdims=True)
            unit[ok] = block[ok] / np.maximum(norms, 1e-12)
            parts.append(unit.mean(axis=0))
        return tuple(round(float(v), 6) for v in np.concatenate(parts))

    def _document(
        self,
        report: SliceReport,
        tracker: SliceTracker,
        number: int,
        labels_total: int,
        trigger: str,
        seconds: float,
        fitted: SliceReport,
    ) -> dict[str, Any]:
        doc = report.to_dict()
        for item, fit in zip(doc["slices"], fitted.slices, strict=True):
            track = tracker.get(item["id"])
            if track is None:  # every slice of this refit was just tracked
                raise AgentError(f"slice {item['id']} missing from the tracker after its update")
            item["fit_id"] = fit.id
            item["status"] = track.status
            item["streak"] = track.streak
            item["age_refits"] = track.age
        doc["resolved"] = [t.id for t in tracker.tracks if t.status == "resolved"]
        doc["refit"] = {
            "number": number,
            "labels_total": labels_total,
            "trigger": trigger,
            "seconds": round(seconds, 3),
            "completed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock())),
        }
        if self.extras is not None:
            doc.update(self.extras(report.model))
        return doc


def load_latest(reports_dir: Path, model: str, target: ClassLabel) -> dict[str, Any] | None:
    """The newest report written for a (model, target class), if any."""
    files = sorted(report_dir(reports_dir, model, target).glob("refit-*.json"))
    return json.loads(files[-1].read_text(encoding="utf-8")) if files else None
