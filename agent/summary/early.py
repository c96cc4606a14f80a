"""The summary's "before the labels" section: what the early warning said in the week, read from the
agent's store, and how it compared with the labeled path once labels came.

- **Warnings raised**: the week's time buckets (inference event time) in which a known slice's
  share of the unlabeled traffic rose significantly (table ``slice_buckets``).
- **Lead time**: per model and target class, the first warning of the week against the first
  confirmation by the labeled path (the error-rate drift detector on confirmed labels, any class of
  the model) detected after it, in the agent's clock; none yet when labels have not confirmed it.
- **Estimates against labels**: per slice and overall, the week's inferences that have their label
  by now: the mean estimated error probability (from calibrated scores, as exported while they
  waited) against the realised error rate, and the absolute difference (from
  :data:`~agent.warn.monitor.MIN_REALISED` labeled cases on).

Only aggregate figures leave the store: model and class names that are short identifiers, slice
ranks, counts, rates and weekdays. Study uids and slice ids are read to join and never kept here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from agent.events import ClassLabel
from agent.exporter import safe_label_value
from agent.store import BucketRow, LiveOutcome, Store
from agent.warn.describe import SliceSpace
from agent.warn.monitor import labeled_check
from agent.weeks import iso_week

__all__ = ["BeforeLabels", "EstimateCheck", "LeadTime", "RaisedWarning", "before_labels"]

DAY = 86_400.0


@dataclass(frozen=True)
class RaisedWarning:
    """One bucket in which a slice's share rose significantly."""

    model: str
    target: str
    rank: int
    bucket: datetime
    """Start of the bucket (inference event time)."""
    n: int
    share: float
    window_share: float
    p_value: float


@dataclass(frozen=True)
class LeadTime:
    """The first warning of the week for a (model, target class) and the labeled path's confirmation."""

    model: str
    target: str
    warned_at: datetime
    confirmed_at: datetime | None

    @property
    def days(self) -> float | None:
        """Days the warning came before the confirmation (None: not confirmed yet)."""
        if self.confirmed_at is None:
            return None
        return (self.confirmed_at - self.warned_at).total_seconds() / DAY


@dataclass(frozen=True)
class EstimateCheck:
    """The week's inferences of a slice (rank) or of the whole (model, target class) (rank None)
    that have their label now: how good the label-free estimate was."""

    model: str
    target: str
    rank: int | None
    n_labeled: int
    estimated: float | None
    realised: float | None

    @property
    def abs_error(self) -> float | None:
        """|estimated - realised| (None below the labeled cases needed)."""
        if self.estimated is None or self.realised is None:
            return None
        return abs(self.estimated - self.realised)


@dataclass(frozen=True)
class BeforeLabels:
    """The section's data."""

    warnings: tuple[RaisedWarning, ...] = ()
    leads: tuple[LeadTime, ...] = ()
    estimates: tuple[EstimateCheck, ...] = ()
    watched: int = 0
    """(model, target class) pairs with a slice description: what the early warning watches."""


def _time(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def before_labels(store: Store, week: str) -> BeforeLabels:
    """Read the week's early warning from the store (every described model and target class whose
    names are short identifiers)."""
    start, end = (t.timestamp() for t in iso_week(week))
    warnings: list[RaisedWarning] = []
    leads: list[LeadTime] = []
    estimates: list[EstimateCheck] = []
    spaces = [SliceSpace.from_record(*r) for r in store.slice_spaces()]
    for space in spaces:
        model, target = safe_label_value(space.model), safe_label_value(space.target)
        if model is None or target is None:
            continue
        rows = [r for r in store.buckets(space.model, space.target, start) if r.bucket < end]
        raised = [r for r in rows if r.warned]
        warnings += [
            RaisedWarning(
                model, target, r.rank, _time(r.bucket), r.n, r.inside / r.n, r.window_share, r.p_value
            )
            for r in raised
        ]
        if raised:
            first = min(r.at for r in raised)
            confirmed = [t for t in store.drift_times(space.model) if t >= first]
            leads.append(LeadTime(model, target, _time(first), _time(confirmed[0]) if confirmed else None))
        outcomes = [o for o in store.live_outcomes(space.model, space.target, start) if o.ts < end]
        estimates += _checks(model, target, space, rows, outcomes)
    return BeforeLabels(tuple(warnings), tuple(leads), tuple(estimates), len(spaces))


def _checks(
    model: str, target: str, space: SliceSpace, rows: list[BucketRow], outcomes: list[LiveOutcome]
) -> list[EstimateCheck]:
    """Overall, then per slice rank (slices of earlier descriptions by their tested buckets' rank)."""
    label: ClassLabel = space.target
    n, est, real = labeled_check(outcomes, lambda o: o.p_error, label)
    out = [EstimateCheck(model, target, None, n, est, real)]
    ranks = {r.slice_id: r.rank for r in rows} | {k.id: k.rank for k in space.slices}
    by_rank: dict[int, list[tuple[LiveOutcome, str]]] = defaultdict(list)
    for o in outcomes:
        for slice_id in o.slices:
            if slice_id in ranks:
                by_rank[ranks[slice_id]].append((o, slice_id))
    for rank, members in sorted(by_rank.items()):
        n, est, real = labeled_check([o for o, _ in members], _by_slice(members), label)
        out.append(EstimateCheck(model, target, rank, n, est, real))
    return out


def _by_slice(members: list[tuple[LiveOutcome, str]]) -> Callable[[LiveOutcome], float]:
    """A case's error probability by the calibration of the slice (of that rank) it fell in."""
    ids = {o.study_uid: slice_id for o, slice_id in members}
    return lambda o: o.slices[ids[o.study_uid]]
