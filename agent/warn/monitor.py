"""The early warning at run time: assign each embedded inference, test complete buckets, estimate.

:class:`EarlyWarning` is shared by the refit (which records each refit's description), the arrival
embedder (which hands it every batch of inferences it embedded: :meth:`EarlyWarning.observe`, in
the embedder's thread, never the consumer's) and the sidecar's timer (:meth:`EarlyWarning.evaluate`,
which tests the buckets that are complete and computes what the exporter shows). Its state is in
the store, so that every worker of a group sees the same descriptions, assignments and tests.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from agent.audit import FitView
from agent.config import WarnSettings
from agent.events import ClassLabel
from agent.exporter import shown
from agent.sample import Sample
from agent.store import BucketRow, LiveCase, LiveOutcome, Store
from agent.warn.describe import SliceSpace, describe_fit
from agent.warn.estimate import Estimate, estimate
from agent.warn.share import share_test

__all__ = ["MIN_REALISED", "EarlyWarning", "SliceState", "WarningState", "labeled_check"]

log = logging.getLogger(__name__)

#: Labeled live cases needed before the realised rate and the estimate's error are reported.
MIN_REALISED = 10


@dataclass(frozen=True)
class SliceState:
    """What the early warning knows about one known slice now."""

    id: str
    rank: int
    window_share: float
    share: float | None
    """Share of the last tested bucket (None before any)."""
    p_value: float | None
    warned: bool
    """Whether the last tested bucket raised a warning."""
    warnings: int
    """Buckets that raised a warning within the horizon."""
    estimate: Estimate
    """Estimated error of the slice's cases still waiting for labels."""
    coverage: float
    realised: float | None
    estimate_error: float | None
    """|estimated - realised| error rate of the slice's live cases that have their labels."""


@dataclass(frozen=True)
class WarningState:
    """The early warning of one (model, target class)."""

    model: str
    target: ClassLabel
    number: int
    estimate: Estimate
    coverage: float
    realised: float | None
    estimate_error: float | None
    slices: tuple[SliceState, ...]
    new_warnings: int


def _dump(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class EarlyWarning:
    """Assignment of new inferences to the known slices, share tests and label-free estimates.

    Parameters
    ----------
    store
        Where descriptions, assignments and tests are kept.
    settings
        The ``warn`` section.
    beta
        The audit's territory threshold (``audit.beta``): what assigns a case to a slice.
    clock
        Wall-clock time source (when a test was made).
    """

    def __init__(
        self,
        store: Store,
        settings: WarnSettings,
        *,
        beta: float = 0.1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.beta = beta
        self.settings = settings
        self.clock = clock
        self._spaces: dict[tuple[str, str], SliceSpace] = {}
        self._lock = threading.Lock()
        self.assigned = 0

    # -- descriptions --------------------------------------------------------------------------

    def record_fit(self, view: FitView, ids: Sequence[str], number: int) -> SliceSpace | None:
        """Describe one refit's slices and keep the description (None: nothing to describe)."""
        space = describe_fit(view, ids, number, self.settings, beta=self.beta)
        if space is not None:
            self.store.record_slice_space(space.model, space.target, number, space.to_record())
            log.info(
                "refit %d of %s target=%s: %d slice(s) described for the early warning",
                number,
                shown(space.model),
                shown(space.target),
                len(space.slices),
            )
        return space

    def spaces(self) -> list[SliceSpace]:
        """The stored descriptions, read again when a newer one was recorded."""
        numbers = self.store.slice_space_numbers()
        with self._lock:
            stale = any(
                self._spaces.get(k) is None or self._spaces[k].number != n for k, n in numbers.items()
            )
            if stale or len(self._spaces) != len(numbers):
                loaded = [SliceSpace.from_record(*r) for r in self.store.slice_spaces()]
                self._spaces = {(s.model, _dump(s.target)): s for s in loaded}
            return list(self._spaces.values())

    # -- assignment ----------------------------------------------------------------------------

    def observe(self, samples: Sequence[Sample], blocks: Mapping[str, np.ndarray]) -> int:
        """Assign embedded inferences (rows of ``blocks`` aligned with ``samples``) to the known
        slices of their model and keep the assignments; returns how many were kept."""
        if not self.settings.enabled or not samples:
            return 0
        by_model: dict[str, list[int]] = defaultdict(list)
        for i, s in enumerate(samples):
            by_model[s.model].append(i)
        cases: list[LiveCase] = []
        for space in self.spaces():
            rows = by_model.get(space.model)
            if rows:
                cases += self._assign(
                    space, [samples[i] for i in rows], {m: b[rows] for m, b in blocks.items()}
                )
        self.store.record_live_cases(cases)
        self.assigned += len(cases)
        return len(cases)

    def _assign(
        self, space: SliceSpace, samples: Sequence[Sample], blocks: Mapping[str, np.ndarray]
    ) -> list[LiveCase]:
        fused = space.fuse(blocks, len(samples))
        inside = space.assign(fused)
        scores = np.array([np.nan if s.score is None else float(s.score) for s in samples])
        side = np.array([s.prediction == space.target for s in samples], dtype=bool)
        overall, per = space.error_probabilities(scores, side, inside)
        return [
            LiveCase(
                space.model,
                space.target,
                s.study_uid,
                space.number,
                s.timestamp.timestamp(),
                float(overall[i]),
                {k.id: round(float(per[i, j]), 6) for j, k in enumerate(space.slices) if inside[i, j]},
            )
            for i, s in enumerate(samples)
        ]

    # -- tests and estimates -------------------------------------------------------------------

    def evaluate(self) -> list[WarningState]:
        """Test every complete bucket not tested yet, and estimate; one state per description."""
        if not self.settings.enabled:
            return []
        watermark = self.store.inference_watermark()
        if watermark is None:
            return []
        waiting = self.store.oldest_unembedded_ts()
        complete_before = watermark if waiting is None else min(watermark, waiting)
        s = self.settings
        states = []
        for space in self.spaces():
            since = watermark - s.horizon_seconds
            outcomes = self.store.live_outcomes(space.model, space.target, since - s.bucket_seconds)
            new = self._test_buckets(space, outcomes, complete_before, since - s.bucket_seconds)
            states.append(self._state(space, [o for o in outcomes if o.ts >= since], since, new))
        self.store.prune_live_cases(watermark - 2 * s.horizon_seconds - s.bucket_seconds)
        return states

    def _test_buckets(
        self, space: SliceSpace, outcomes: Sequence[LiveOutcome], complete_before: float, since: float
    ) -> int:
        width = self.settings.bucket_seconds
        tested = {(r.slice_id, r.bucket) for r in self.store.buckets(space.model, space.target, since)}
        counts: dict[float, list[LiveOutcome]] = defaultdict(list)
        for o in outcomes:
            if o.number == space.number:
                counts[math.floor(o.ts / width) * width].append(o)
        rows = []
        now = self.clock()
        for bucket, cases in sorted(counts.items()):
            if bucket + width > complete_before:
                continue
            for known in space.slices:
                if (known.id, bucket) in tested:
                    continue
                t = share_test(
                    sum(known.id in o.slices for o in cases),
                    len(cases),
                    known.window_inside,
                    known.window_n,
                    n_slices=len(space.slices),
                    alpha=self.settings.alpha,
                    min_cases=self.settings.min_bucket_cases,
                )
                rows.append(
                    BucketRow(
                        known.id,
                        bucket,
                        space.number,
                        known.rank,
                        t.n,
                        t.inside,
                        t.window_share,
                        t.p_value,
                        t.warned,
                        now,
                    )
                )
                if t.warned:
                    log.warning(
                        "early warning: slice %s (rank %d) of %s target=%s holds %.3f of the traffic of the"
                        " bucket from %s against %.3f of the labeled window (adjusted p=%.2g)",
                        known.id,
                        known.rank,
                        shown(space.model),
                        shown(space.target),
                        t.share,
                        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(bucket)),
                        t.window_share,
                        t.p_value,
                    )
        return self.store.record_buckets(space.model, space.target, rows)

    def _state(
        self, space: SliceSpace, outcomes: Sequence[LiveOutcome], since: float, new: int
    ) -> WarningState:
        conf = self.settings.confidence
        target = space.target
        overall, coverage, realised, gap = _summarise(outcomes, lambda o: o.p_error, target, conf)
        tests: dict[str, list[BucketRow]] = defaultdict(list)
        for r in self.store.buckets(space.model, target, since):
            tests[r.slice_id].append(r)
        slices = []
        for known in space.slices:
            members = [o for o in outcomes if known.id in o.slices]
            est, cov, real, err = _summarise(members, _slice_p(known.id), target, conf)
            rows = tests.get(known.id, [])
            last = rows[-1] if rows else None
            slices.append(
                SliceState(
                    known.id,
                    known.rank,
                    known.window_share,
                    None if last is None else (last.inside / last.n if last.n else 0.0),
                    None if last is None else last.p_value,
                    bool(last is not None and last.warned),
                    sum(r.warned for r in rows),
                    est,
                    cov,
                    real,
                    err,
                )
            )
        return WarningState(
            space.model, target, space.number, overall, coverage, realised, gap, tuple(slices), new
        )


def _slice_p(slice_id: str) -> Callable[[LiveOutcome], float]:
    """A case's error probability by the slice's calibration."""
    return lambda o: o.slices[slice_id]


def labeled_check(
    outcomes: Sequence[LiveOutcome], p_of: Callable[[LiveOutcome], float], target: ClassLabel
) -> tuple[int, float | None, float | None]:
    """For the cases among ``outcomes`` that have their label: how many, and (from
    :data:`MIN_REALISED` of them) the mean of their estimated error probabilities and their
    realised error rate (a case is wrong when label and prediction fall on different sides of
    ``target``)."""
    labeled = [o for o in outcomes if o.label is not None]
    if len(labeled) < MIN_REALISED:
        return len(labeled), None, None
    wrong = np.array([(o.label == target) != (o.prediction == target) for o in labeled], dtype=np.float64)
    return len(labeled), float(np.mean([p_of(o) for o in labeled])), float(wrong.mean())


def _summarise(
    outcomes: Sequence[LiveOutcome],
    p_of: Callable[[LiveOutcome], float],
    target: ClassLabel,
    confidence: float,
) -> tuple[Estimate, float, float | None, float | None]:
    """The estimate over the cases still waiting, the label coverage, and for the labeled ones the
    realised error rate and the absolute error of their estimate."""
    pending = np.array([p_of(o) for o in outcomes if o.pending and o.label is None])
    est = estimate(pending, confidence)
    n_labeled, predicted, realised = labeled_check(outcomes, p_of, target)
    counted = len(pending) + n_labeled
    coverage = n_labeled / counted if counted else 0.0
    if predicted is None or realised is None:
        return est, coverage, None, None
    return est, coverage, realised, abs(predicted - realised)
