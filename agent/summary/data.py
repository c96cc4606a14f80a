"""The summary's data: the week's reports, drift events and embedding drift, as plain values."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from agent.config import SummarySettings
from agent.drift.embedding import EmbeddingDrift, embedding_drift
from agent.errors import AgentError
from agent.exporter import safe_label_value
from agent.report import SliceReport, SliceResult
from agent.summary.early import BeforeLabels
from agent.weeks import iso_week

__all__ = [
    "DriftEvent",
    "SliceKey",
    "TimedReport",
    "WeeklySummary",
    "build_summary",
    "read_report",
    "read_reports",
    "report_key",
    "safe_report",
]

log = logging.getLogger(__name__)

SliceKey = tuple[str, str, int]
"""A slice in the summary: ``(model, target_class, rank)`` of the week's latest report."""


@dataclass(frozen=True)
class TimedReport:
    """A slice report and the time it was made (timezone-aware)."""

    at: datetime
    report: SliceReport


@dataclass(frozen=True)
class DriftEvent:
    """An error-rate drift found for one model and class, with its statistic and threshold if known."""

    at: datetime
    model: str
    target_class: str | int
    statistic: float | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class WeeklySummary:
    """What one week's summary shows, as data."""

    week: str
    start: datetime
    end: datetime
    reports: tuple[TimedReport, ...]
    latest: tuple[SliceReport, ...]
    drift_events: tuple[DriftEvent, ...] = ()
    embedding_drift: tuple[EmbeddingDrift, ...] = ()
    thumbnails: Mapping[SliceKey, tuple[np.ndarray, ...]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    before: BeforeLabels | None = None
    """The early warning's week, read from the agent's store (None: no store was read)."""

    def seen_in(self, report: SliceReport, s: SliceResult) -> int:
        """In how many of the week's reports of the same model and class the slice was found."""
        return sum(
            any(other.id == s.id for other in r.report.slices)
            for r in self.reports
            if report_key(r.report) == report_key(report)
        )

    def refits(self, report: SliceReport) -> int:
        """The week's reports of the same model and class."""
        return sum(report_key(r.report) == report_key(report) for r in self.reports)


# ----------------------------------------------------------------------------------------- inputs


def read_report(path: str | Path) -> TimedReport:
    """Read one slice report file; its time is the window's end, else the file's modification time."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise AgentError(f"cannot read slice report {path}: {err}") from err
    report = SliceReport.from_dict(data)
    at = None
    if report.window.end:
        at = datetime.fromisoformat(report.window.end.replace("Z", "+00:00"))
    if at is None:
        at = datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
    return TimedReport(at if at.tzinfo else at.replace(tzinfo=UTC), report)


def read_reports(paths: Sequence[str | Path]) -> list[TimedReport]:
    """Read report files, and every ``*.json`` under the directories among ``paths``."""
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(p.rglob("*.json")) if p.is_dir() else [p])
    return [read_report(f) for f in files]


def report_key(report: SliceReport) -> tuple[str, str]:
    return str(report.model), str(report.target_class)


def safe_report(report: SliceReport) -> bool:
    return safe_label_value(report.model) is not None and safe_label_value(report.target_class) is not None


def build_summary(
    week: str,
    reports: Sequence[TimedReport],
    *,
    drift_events: Sequence[DriftEvent] = (),
    embeddings: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    thumbnails: Mapping[SliceKey, Sequence[np.ndarray]] | None = None,
    before: BeforeLabels | None = None,
    settings: SummarySettings | None = None,
) -> WeeklySummary:
    """Keep what falls in ``week`` and compute the summary's data.

    Parameters
    ----------
    week
        ISO week, for example ``"2026-W48"``.
    reports
        Slice reports with their times; those outside the week are ignored.
    drift_events
        Error-rate drifts; those outside the week are ignored.
    embeddings
        Per modality, ``(previous week, this week)`` embedding arrays ``(n, d)``.
    thumbnails
        Member images per ``(model, target_class, rank)`` of the week's latest reports; dropped
        unless ``settings.thumbnails`` is set.
    before
        The early warning's week (:func:`agent.summary.early.before_labels`), if a store was read.
    """
    settings = settings or SummarySettings()
    start, end = iso_week(week)
    notes: list[str] = []
    kept = sorted((r for r in reports if start <= r.at < end), key=lambda r: r.at)
    unsafe = [r for r in kept if not safe_report(r.report)]
    if unsafe:
        notes.append(f"{len(unsafe)} report(s) left out: model or class name is not a short identifier")
        kept = [r for r in kept if safe_report(r.report)]
    latest: dict[tuple[str, str], SliceReport] = {}
    for r in kept:
        latest[report_key(r.report)] = r.report
    drifts: list[EmbeddingDrift] = []
    for modality, (prev, cur) in sorted((embeddings or {}).items()):
        try:
            drifts.append(
                embedding_drift(
                    prev,
                    cur,
                    modality=modality,
                    alpha=settings.drift_alpha,
                    n_permutations=settings.drift_permutations,
                    max_samples=settings.drift_max_samples,
                    seed=settings.seed,
                )
            )
        except AgentError as err:
            notes.append(str(err))
    events = tuple(
        sorted(
            (
                e
                for e in drift_events
                if start <= e.at < end
                and safe_label_value(e.model) is not None
                and safe_label_value(e.target_class) is not None
            ),
            key=lambda e: e.at,
        )
    )
    return WeeklySummary(
        week=week,
        start=start,
        end=end,
        reports=tuple(kept),
        latest=tuple(latest[k] for k in sorted(latest)),
        drift_events=events,
        embedding_drift=tuple(drifts),
        thumbnails={
            k: tuple(v)[: settings.examples_per_slice]
            for k, v in (thumbnails or {}).items()
            if settings.thumbnails
        },
        notes=tuple(notes),
        before=before,
    )
