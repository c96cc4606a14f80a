"""Prometheus metrics of the agent, declared in one place, on a registry the caller owns.

Two kinds of metrics live here:

- What the last refit found (per ``(model, target_class)``: the window, and per slice rank the
  size, error rates, p-value, error precision@10, emerging flag and age, and the top tokens in a
  small ``_info`` series) is computed at scrape time by :class:`SliceCollector` from an immutable
  snapshot of the latest :class:`~agent.report.SliceReport` objects. Publishing a report swaps the
  snapshot; a scrape never sees half of a refit, and a slice that disappears stops being exported.
- What the running agent does (events consumed, dead-lettered, join backlog, label delay, refit and
  embedding durations, drift detections, last refit time, week-over-week embedding drift per
  modality) is counted by :class:`AgentMetrics`, ordinary counters, gauges and histograms that the
  stream calls.

The thresholds the alert rules compare against are exported too (``slice_agent_alert_*``), so that
the rules in ``deploy/prometheus/`` hold no magic numbers: export the statistic and its threshold,
alert in PromQL.

Every label is bounded: ``model`` (at most ``max_models`` models besides the configured ones,
first come, each keeping its slot until :meth:`Exporter.forget_model` releases it) and
``target_class`` (at most ``max_series_keys`` pairs, each value a short identifier-like string),
``family`` (the metric families of the overflow counter),
``slice_rank`` (``"1"`` to ``"5"``), ``event_type`` (the three
event types), ``modality`` (image, report, metadata) and ``reason`` (:data:`agent.events.REASONS`).
A label value that is invalid or beyond a bound is not exported; it is counted in
``slice_agent_label_overflow_total{family}``. No study, patient or slice id, and no free text, is
ever a label value. Tokens are re-checked to be
short lower-case alphabetic words before they are exported.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal, NamedTuple
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    make_wsgi_app,
    push_to_gateway,
)
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.metrics_core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.config import ExporterSettings
from agent.errors import PACS_REASONS
from agent.events import REASONS
from agent.report import SliceReport

if TYPE_CHECKING:
    from agent.drift import EmbeddingDrift
    from agent.warn import WarningState

__all__ = [
    "EVENT_TYPES",
    "LOG_RESETS",
    "METRICS",
    "MODALITIES",
    "WAITING",
    "AgentMetrics",
    "Exporter",
    "Health",
    "MetricSpec",
    "MetricsServer",
    "ModelBudget",
    "SliceCollector",
    "SliceTracking",
    "WarningCollector",
    "safe_label_value",
    "safe_tokens",
    "shown",
]

log = logging.getLogger(__name__)

#: Event types counted by ``slice_agent_events_consumed_total``.
EVENT_TYPES = ("inference", "label", "report")
#: Modalities timed by ``slice_agent_embedding_duration_seconds``.
MODALITIES = ("image", "report", "metadata")
#: Slice ranks that may be exported (``AuditSettings.n_slices`` is at most 5).
RANKS = ("1", "2", "3", "4", "5")
#: Why a partition's log was read again, for ``slice_agent_log_resets_total{reason}`` (see
#: :mod:`agent.stream.continuity`).
LOG_RESETS = ("recreated", "reused", "truncated", "rewound")
#: What waits in the join, for ``slice_agent_join_waiting_events{event_type}``.
WAITING = ("inference", "label")

_KEY = ("model", "target_class")
_SLICE = ("model", "target_class", "slice_rank")
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,63}\Z")  # \Z: no newline at the end
_TOKEN = re.compile(r"^[a-z]{3,32}( [a-z]{3,32})?\Z")  # a word, or a two-word phrase
_TOP_TOKENS = 5

_DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_EMBED_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_DELAY_BUCKETS = (
    60,
    600,
    3600,
    6 * 3600,
    24 * 3600,
    3 * 24 * 3600,
    7 * 24 * 3600,
    14 * 24 * 3600,
    30 * 86400,
)


@dataclass(frozen=True)
class MetricSpec:
    """One metric family as it is exposed: its name, type, help text and label names."""

    name: str
    kind: Literal["counter", "gauge", "histogram", "info"]
    source: Literal["snapshot", "threshold", "agent", "warning"]
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None

    @property
    def family(self) -> str:
        """The family name without the suffix the client library adds (``_total``, ``_info``)."""
        suffix = {"counter": "_total", "info": "_info"}.get(self.kind, "")
        return self.name[: -len(suffix)] if suffix and self.name.endswith(suffix) else self.name

    @property
    def series_names(self) -> tuple[str, ...]:
        """The sample names this family exposes (what PromQL can select)."""
        if self.kind == "histogram":
            return tuple(f"{self.name}{s}" for s in ("_bucket", "_count", "_sum", "_created"))
        if self.kind == "counter":
            return (self.name, f"{self.family}_created")
        return (self.name,)


def _specs(*specs: MetricSpec) -> Mapping[str, MetricSpec]:
    return MappingProxyType({s.name: s for s in specs})


#: Every metric the agent exports, in one place. Collectors and dashboards are checked against it.
METRICS: Mapping[str, MetricSpec] = _specs(
    # what the last refit found, per (model, target class): from SliceCollector
    MetricSpec(
        "slice_agent_window_samples", "gauge", "snapshot", "Labeled samples in the audited window.", _KEY
    ),
    MetricSpec(
        "slice_agent_window_error_ratio",
        "gauge",
        "snapshot",
        "Fraction of misclassified samples in the window.",
        _KEY,
    ),
    MetricSpec(
        "slice_agent_slices", "gauge", "snapshot", "Significant error slices exported for the window.", _KEY
    ),
    MetricSpec(
        "slice_agent_findings",
        "gauge",
        "snapshot",
        "Findings of the window: significant slices that overlap in members or names, merged.",
        _KEY,
    ),
    MetricSpec(
        "slice_agent_baseline_tokens_info",
        "info",
        "snapshot",
        "Top scrubbed tokens that set all errors of the window apart from correct cases.",
        (*_KEY, "tokens"),
    ),
    MetricSpec("slice_agent_slice_size", "gauge", "snapshot", "Studies in the error slice.", _SLICE),
    MetricSpec("slice_agent_slice_error_ratio", "gauge", "snapshot", "Error rate inside the slice.", _SLICE),
    MetricSpec(
        "slice_agent_slice_rest_error_ratio",
        "gauge",
        "snapshot",
        "Error rate of same-class cases outside the slice.",
        _SLICE,
    ),
    MetricSpec(
        "slice_agent_slice_p_value",
        "gauge",
        "snapshot",
        "Held-out p-value of the slice's excess error rate.",
        _SLICE,
    ),
    MetricSpec(
        "slice_agent_slice_error_precision_at_10_ratio",
        "gauge",
        "snapshot",
        "Fraction of the slice's ten most probable members that are misclassified.",
        _SLICE,
    ),
    MetricSpec(
        "slice_agent_slice_emerging",
        "gauge",
        "snapshot",
        "1 when the slice has been significant for enough consecutive refits to count as emerging.",
        _SLICE,
    ),
    MetricSpec(
        "slice_agent_slice_age_refits",
        "gauge",
        "snapshot",
        "Consecutive refits in which the slice was found.",
        _SLICE,
    ),
    MetricSpec(
        "slice_agent_slice_tokens_info",
        "info",
        "snapshot",
        "Top five scrubbed tokens that set the slice apart, comma-separated.",
        (*_SLICE, "tokens"),
    ),
    # thresholds the alert rules compare against: constant gauges from ExporterSettings
    MetricSpec(
        "slice_agent_alert_p_value_threshold",
        "gauge",
        "threshold",
        "An emerging slice alerts when its p-value is below this.",
    ),
    MetricSpec(
        "slice_agent_alert_error_rate_drift_threshold_ratio",
        "gauge",
        "threshold",
        "Error-rate drift alerts when the window error ratio exceeds its 7-day mean by this much.",
    ),
    MetricSpec(
        "slice_agent_alert_dead_letter_threshold_ratio",
        "gauge",
        "threshold",
        "A dead-letter spike alerts when this fraction of consumed events is dead-lettered.",
    ),
    MetricSpec(
        "slice_agent_alert_refit_stale_threshold_seconds",
        "gauge",
        "threshold",
        "The agent counts as stalled when labels arrive but no refit happened for this long.",
    ),
    MetricSpec(
        "slice_agent_alert_label_backlog_threshold",
        "gauge",
        "threshold",
        "Label backlog alerts when more studies than this wait for their label.",
    ),
    MetricSpec(
        "slice_agent_alert_consumer_lag_threshold",
        "gauge",
        "threshold",
        "Consumer lag alerts when a topic lags by more messages than this.",
    ),
    MetricSpec(
        "slice_agent_alert_unembedded_age_threshold_seconds",
        "gauge",
        "threshold",
        "The embedder counts as stuck when the oldest unembedded sample is older than this.",
    ),
    MetricSpec(
        "slice_agent_alert_unsent_dead_letters_threshold",
        "gauge",
        "threshold",
        "The dead-letter outbox alerts when more letters than this wait to be sent.",
    ),
    MetricSpec(
        "slice_agent_alert_estimated_error_threshold_ratio",
        "gauge",
        "threshold",
        "A slice alerts when its estimated error ratio's lower bound exceeds this while labels are missing.",
    ),
    MetricSpec(
        "slice_agent_alert_label_coverage_threshold_ratio",
        "gauge",
        "threshold",
        "Labels count as missing while the label coverage of the recent inferences is below this.",
    ),
    # the early warning from unlabeled traffic (agent.warn): from WarningCollector
    MetricSpec(
        "slice_agent_slice_traffic_share_ratio",
        "gauge",
        "warning",
        "Share of the last complete time bucket's inferences assigned to the slice (no labels needed).",
        _SLICE,
    ),
    MetricSpec(
        "slice_agent_slice_window_share_ratio",
        "gauge",
        "warning",
        "Share of the labeled window inside the slice, by the same assignment rule.",
        _SLICE,
    ),
    MetricSpec(
        "slice_agent_slice_share_p_value",
        "gauge",
        "warning",
        "Bonferroni-adjusted p-value of the last bucket's test of a share above the window's.",
        _SLICE,
    ),
    MetricSpec(
        "slice_agent_slice_share_warning",
        "gauge",
        "warning",
        "1 when the slice's share of the last complete bucket rose significantly above its window share.",
        _SLICE,
    ),
    MetricSpec(
        "slice_agent_slice_estimated_error_ratio",
        "gauge",
        "warning",
        "Error rate of the slice's inferences still waiting for labels, estimated from calibrated scores.",
        _SLICE,
    ),
    MetricSpec(
        "slice_agent_slice_estimated_error_lower_ratio",
        "gauge",
        "warning",
        "Lower bound of the interval of the slice's estimated error ratio.",
        _SLICE,
    ),
    MetricSpec(
        "slice_agent_slice_estimated_error_upper_ratio",
        "gauge",
        "warning",
        "Upper bound of the interval of the slice's estimated error ratio.",
        _SLICE,
    ),
    MetricSpec(
        "slice_agent_slice_label_coverage_ratio",
        "gauge",
        "warning",
        "Fraction of the slice's recent inferences that have their confirmed label.",
        _SLICE,
    ),
    MetricSpec(
        "slice_agent_slice_realised_error_ratio",
        "gauge",
        "warning",
        "Error rate of the slice's recent inferences that have their labels (realised).",
        _SLICE,
    ),
    MetricSpec(
        "slice_agent_slice_estimate_abs_error_ratio",
        "gauge",
        "warning",
        "Absolute gap between estimated and realised error rate of the slice's labeled recent inferences.",
        _SLICE,
    ),
    MetricSpec(
        "slice_agent_estimated_error_ratio",
        "gauge",
        "warning",
        "Error rate of all inferences still waiting for labels, estimated from calibrated scores.",
        _KEY,
    ),
    MetricSpec(
        "slice_agent_estimated_error_lower_ratio",
        "gauge",
        "warning",
        "Lower bound of the interval of the estimated error ratio.",
        _KEY,
    ),
    MetricSpec(
        "slice_agent_estimated_error_upper_ratio",
        "gauge",
        "warning",
        "Upper bound of the interval of the estimated error ratio.",
        _KEY,
    ),
    MetricSpec(
        "slice_agent_label_coverage_ratio",
        "gauge",
        "warning",
        "Fraction of the recent inferences that have their confirmed label.",
        _KEY,
    ),
    MetricSpec(
        "slice_agent_realised_error_ratio",
        "gauge",
        "warning",
        "Error rate of the recent inferences that have their labels (realised).",
        _KEY,
    ),
    MetricSpec(
        "slice_agent_estimate_abs_error_ratio",
        "gauge",
        "warning",
        "Absolute difference between estimated and realised error rate of the labeled recent inferences.",
        _KEY,
    ),
    # what the running agent does: AgentMetrics
    MetricSpec(
        "slice_agent_events_consumed_total",
        "counter",
        "agent",
        "Events consumed, by event type.",
        ("event_type",),
    ),
    MetricSpec(
        "slice_agent_dead_lettered_total", "counter", "agent", "Inputs dead-lettered, by reason.", ("reason",)
    ),
    MetricSpec(
        "slice_agent_join_backlog",
        "gauge",
        "agent",
        "Studies with a prediction still waiting for a label.",
        ("model",),
    ),
    MetricSpec(
        "slice_agent_label_delay_seconds",
        "histogram",
        "agent",
        "Time from the inference event to its confirmed label.",
        ("model",),
        _DELAY_BUCKETS,
    ),
    MetricSpec(
        "slice_agent_refit_duration_seconds",
        "histogram",
        "agent",
        "Wall time of one refit (fuse, slice, test, explain).",
        _KEY,
        _DURATION_BUCKETS,
    ),
    MetricSpec(
        "slice_agent_embedding_duration_seconds",
        "histogram",
        "agent",
        "Wall time of one embedding batch, by modality.",
        ("modality",),
        _EMBED_BUCKETS,
    ),
    MetricSpec("slice_agent_refits_total", "counter", "agent", "Refits completed.", _KEY),
    MetricSpec(
        "slice_agent_drift_detections_total",
        "counter",
        "agent",
        "Error-rate drifts the stream's detector found.",
        _KEY,
    ),
    MetricSpec(
        "slice_agent_last_refit_timestamp_seconds",
        "gauge",
        "agent",
        "Unix time at which the last refit completed.",
        _KEY,
    ),
    MetricSpec(
        "slice_agent_consumer_lag_messages",
        "gauge",
        "agent",
        "Messages between the consumer's position and the end of the log, by the topic's event type.",
        ("event_type",),
    ),
    MetricSpec(
        "slice_agent_log_resets_total",
        "counter",
        "agent",
        "Partitions whose log was not the one the agent had read (recreated, reused or truncated: read"
        " again from the start of the new log) or that went back before a committed offset (rewound).",
        ("event_type", "reason"),
    ),
    MetricSpec(
        "slice_agent_join_waiting_events",
        "gauge",
        "agent",
        "Events held by the join: inferences waiting for a label, labels waiting for an inference.",
        ("event_type",),
    ),
    MetricSpec(
        "slice_agent_dead_letters_unsent",
        "gauge",
        "agent",
        "Dead letters in the outbox not yet acknowledged by the broker.",
    ),
    MetricSpec(
        "slice_agent_oldest_unembedded_age_seconds",
        "gauge",
        "agent",
        "Age of the oldest sample waiting to be embedded (0 when none); grows while the embedder is stuck.",
    ),
    MetricSpec(
        "slice_agent_pacs_fetch_failures_total",
        "counter",
        "agent",
        "Failed fetches of an image from the PACS, by reason (retried until pacs.give_up_after_seconds).",
        ("reason",),
    ),
    MetricSpec(
        "slice_agent_pacs_waiting_images",
        "gauge",
        "agent",
        "Samples whose image waits for another try at the PACS.",
    ),
    MetricSpec(
        "slice_agent_share_warnings_total",
        "counter",
        "agent",
        "Buckets in which a slice's share of the unlabeled traffic rose significantly (early warnings).",
        _KEY,
    ),
    MetricSpec(
        "slice_agent_embedding_drift_mmd",
        "gauge",
        "agent",
        "Squared MMD between the embeddings of the newest week and of the week before, by modality"
        " (no labels needed).",
        ("modality",),
    ),
    MetricSpec(
        "slice_agent_embedding_drift_mmd_threshold",
        "gauge",
        "agent",
        "Permutation threshold of the embedding drift's squared MMD (its 1 - summary.drift_alpha quantile"
        " when the two weeks are exchanged at random), by modality.",
        ("modality",),
    ),
    MetricSpec(
        "slice_agent_label_overflow_total",
        "counter",
        "agent",
        "Label values refused (invalid, or beyond the model, topic or pair bounds), by metric family.",
        ("family",),
    ),
)


class ModelBudget:
    """Which models may have series: configured ones always, others first come, up to a bound.

    A model keeps its slot until it is released (:meth:`Exporter.forget_model`, called for models
    that left the window), so junk names arriving later cannot push a real model out, and junk
    names that stop arriving free their slots. Names that are not short identifiers never get one.

    >>> budget = ModelBudget(max_models=1, reserved=("cxr",))
    >>> budget.admit("junk-1"), budget.admit("junk-2"), budget.admit("cxr"), budget.admit("Jane Doe")
    ('junk-1', None, 'cxr', None)
    >>> budget.release("junk-1"); budget.admit("junk-2")
    'junk-2'
    """

    def __init__(self, max_models: int = 20, reserved: Iterable[str] = ()) -> None:
        self.max_models = max_models
        self.reserved = frozenset(m for m in reserved if safe_label_value(m) is not None)
        self._admitted: set[str] = set()
        self._lock = threading.Lock()

    def admit(self, model: object) -> str | None:
        """The model's label value when it has (or now gets) a slot, else None."""
        m = safe_label_value(model)
        if m is None or m in self.reserved:
            return m
        with self._lock:
            if m in self._admitted:
                return m
            if len(self._admitted) >= self.max_models:
                return None
            self._admitted.add(m)
            return m

    def release(self, model: object) -> None:
        """Give the model's slot back (its series are gone)."""
        with self._lock:
            self._admitted.discard(str(model))

    @property
    def admitted(self) -> frozenset[str]:
        """The models holding a slot now (reserved ones not included)."""
        return frozenset(self._admitted)


class SliceTracking(NamedTuple):
    """What slice tracking knows about one slice: whether it is emerging, and for how many refits."""

    emerging: bool
    age_refits: int


def safe_label_value(value: object) -> str | None:
    """``value`` as a label value when it is a short identifier-like string, else None.

    >>> safe_label_value("pneumothorax"), safe_label_value(1), safe_label_value("Jane Doe")
    ('pneumothorax', '1', None)
    >>> safe_label_value("cxr\\n") is None  # nothing after the end, not even a newline
    True
    """
    text = str(value)
    return text if _LABEL_VALUE.match(text) else None


def shown(value: object) -> str:
    """``value`` (a model name or class label, written by whoever sends events) as a log line may
    show it: itself when it is a safe label value (:func:`safe_label_value`), else a digest
    that tells names apart without showing them.

    >>> shown("pneumothorax"), shown(1), shown("DOE^JANE MRN0012345")
    ('pneumothorax', '1', 'withheld-19532fa6')
    """
    safe = safe_label_value(value)
    if safe is not None:
        return safe
    return "withheld-" + hashlib.sha256(str(value).encode("utf-8", "surrogatepass")).hexdigest()[:8]


def safe_tokens(words: Iterable[str], limit: int = _TOP_TOKENS) -> tuple[str, ...]:
    """The first ``limit`` tokens that are a lower-case alphabetic word (3 to 32 letters), or two such
    words (a phrase), in order.

    Tokens in a report are already scrubbed; this is the last check before they leave the process.

    >>> safe_tokens(["tube", "MRN123", "Doe", "tip", "a", "chest tube", "dr  x"])
    ('tube', 'tip', 'chest tube')
    """
    out: list[str] = []
    for word in words:
        if _TOKEN.match(word) and word not in out:
            out.append(word)
            if len(out) == limit:
                break
    return tuple(out)


def _family(spec: MetricSpec) -> Metric:
    if spec.kind == "info":
        return InfoMetricFamily(spec.family, spec.help, labels=spec.labels[:-1])
    return GaugeMetricFamily(spec.name, spec.help, labels=list(spec.labels))


@dataclass(frozen=True)
class _Snapshot:
    reports: Mapping[tuple[str, str], SliceReport]
    tracking: Mapping[tuple[str, str], Mapping[str, SliceTracking]]


_EMPTY = _Snapshot(MappingProxyType({}), MappingProxyType({}))
_SNAPSHOT_METRICS = tuple(s for s in METRICS.values() if s.source == "snapshot")


class SliceCollector(Collector):
    """Exports, at scrape time, what the latest refit of each ``(model, target_class)`` found.

    Parameters
    ----------
    min_slice_size
        Slices with fewer studies are not exported.
    max_series_keys
        At most this many ``(model, target_class)`` pairs are exported; a report of a further
        pair is dropped with a warning, so label sets stay bounded whatever comes in.

    Examples
    --------
    >>> from prometheus_client import CollectorRegistry
    >>> from agent.report import SliceReport, Window
    >>> registry = CollectorRegistry()
    >>> collector = SliceCollector()
    >>> registry.register(collector)
    >>> collector.publish(SliceReport("cxr", "ptx", ("report",), Window(200, 20, None, None), (), ()))
    >>> registry.get_sample_value("slice_agent_window_error_ratio", {"model": "cxr", "target_class": "ptx"})
    0.1
    """

    def __init__(
        self,
        *,
        min_slice_size: int = 10,
        max_series_keys: int = 50,
        budget: ModelBudget | None = None,
        on_overflow: Callable[[str], None] | None = None,
    ) -> None:
        self.min_slice_size = min_slice_size
        self.max_series_keys = max_series_keys
        self.budget = budget if budget is not None else ModelBudget(max_models=max_series_keys)
        self.on_overflow = on_overflow
        self._warned = False
        self._snapshot = _EMPTY
        self._lock = threading.Lock()

    def _overflow(self, why: str) -> None:
        # One WARNING per collector; later ones at DEBUG: 2,000 junk names must not flood the log.
        level = logging.DEBUG if self._warned else logging.WARNING
        self._warned = True
        log.log(level, "report not exported: %s; counted in slice_agent_label_overflow_total", why)
        if self.on_overflow is not None:
            self.on_overflow("slice_agent_window_samples")

    def publish(
        self,
        report: SliceReport,
        tracking: Mapping[str, SliceTracking | tuple[bool, int]] | None = None,
    ) -> None:
        """Replace what is exported for the report's ``(model, target_class)``.

        ``tracking`` maps slice ids to ``(emerging, age_refits)``; slices it does not name are
        exported as not emerging, age 1.
        """
        with self._lock:
            self._snapshot = self._with(self._snapshot, report, tracking)

    def update(
        self,
        reports: Iterable[SliceReport],
        tracking: Mapping[str, SliceTracking | tuple[bool, int]] | None = None,
    ) -> None:
        """Replace the whole snapshot at once: export exactly these reports (the last one per key wins)."""
        snapshot = _EMPTY
        for report in reports:
            snapshot = self._with(snapshot, report, tracking)
        with self._lock:
            self._snapshot = snapshot

    def _with(
        self,
        old: _Snapshot,
        report: SliceReport,
        tracking: Mapping[str, SliceTracking | tuple[bool, int]] | None,
    ) -> _Snapshot:
        """A new snapshot: ``old`` with ``report`` in place of its key's previous one."""
        key = self._key(report)
        if key is None:
            self._overflow("model or target class is not a short identifier")
            return old
        if self.budget.admit(key[0]) is None:
            self._overflow(f"already {self.budget.max_models} models (max_models)")
            return old
        if key not in old.reports and len(old.reports) >= self.max_series_keys:
            self._overflow(f"already {len(old.reports)} pairs (max_series_keys={self.max_series_keys})")
            return old
        given = tracking or {}
        states = {
            s.id: SliceTracking(bool(given[s.id][0]), int(given[s.id][1]))
            for s in report.slices
            if s.id in given
        }
        return _Snapshot(
            MappingProxyType({**old.reports, key: report.for_export()}),  # no member uid is held
            MappingProxyType({**old.tracking, key: MappingProxyType(states)}),
        )

    def forget(self, model: str, target_class: str | int) -> None:
        """Stop exporting a ``(model, target_class)`` (its window was dropped)."""
        key = (str(model), str(target_class))
        with self._lock:
            old = self._snapshot
            self._snapshot = _Snapshot(
                MappingProxyType({k: v for k, v in old.reports.items() if k != key}),
                MappingProxyType({k: v for k, v in old.tracking.items() if k != key}),
            )

    def forget_model(self, model: str) -> None:
        """Stop exporting every target class of ``model`` (it left the window)."""
        m = str(model)
        with self._lock:
            old = self._snapshot
            self._snapshot = _Snapshot(
                MappingProxyType({k: v for k, v in old.reports.items() if k[0] != m}),
                MappingProxyType({k: v for k, v in old.tracking.items() if k[0] != m}),
            )

    @property
    def reports(self) -> Mapping[tuple[str, str], SliceReport]:
        """The reports exported now, by ``(model, str(target_class))``."""
        return self._snapshot.reports

    @staticmethod
    def _key(report: SliceReport) -> tuple[str, str] | None:
        model, target = safe_label_value(report.model), safe_label_value(report.target_class)
        if model is None or target is None:
            return None
        return model, target

    def describe(self) -> Iterator[Metric]:
        for spec in _SNAPSHOT_METRICS:
            yield _family(spec)

    def collect(self) -> Iterator[Metric]:
        snapshot = self._snapshot  # one reference: the whole scrape reads one snapshot
        families = {spec.name: _family(spec) for spec in _SNAPSHOT_METRICS}

        def gauge(name: str, labels: list[str], value: float) -> None:
            families[name].add_metric(labels, value)  # type: ignore[attr-defined]

        def info(name: str, labels: list[str], words: tuple[str, ...]) -> None:
            families[name].add_metric(labels, {"tokens": ", ".join(words)})  # type: ignore[attr-defined]

        for key in sorted(snapshot.reports):
            report = snapshot.reports[key]
            tracking = snapshot.tracking.get(key, {})
            labels = list(key)
            window = report.window
            gauge("slice_agent_window_samples", labels, window.n)
            if window.n > 0:
                gauge("slice_agent_window_error_ratio", labels, window.n_errors / window.n)
            exported = [s for s in report.slices if str(s.rank) in RANKS and s.size >= self.min_slice_size][
                : len(RANKS)
            ]
            gauge("slice_agent_slices", labels, len(exported))
            gauge("slice_agent_findings", labels, len(report.findings))
            baseline = safe_tokens(t.token for t in report.baseline_tokens)
            if baseline:
                info("slice_agent_baseline_tokens_info", labels, baseline)
            for s in exported:
                at = [*labels, str(s.rank)]
                state = tracking.get(s.id, SliceTracking(False, 1))
                gauge("slice_agent_slice_size", at, s.size)
                gauge("slice_agent_slice_error_ratio", at, s.error_rate)
                gauge("slice_agent_slice_rest_error_ratio", at, s.rest_error_rate)
                gauge("slice_agent_slice_p_value", at, s.p_value)
                gauge("slice_agent_slice_error_precision_at_10_ratio", at, s.error_precision_at_10)
                gauge("slice_agent_slice_emerging", at, 1.0 if state.emerging else 0.0)
                gauge("slice_agent_slice_age_refits", at, state.age_refits)
                words = safe_tokens(t.token for t in s.tokens)
                if words:
                    info("slice_agent_slice_tokens_info", at, words)
        yield from families.values()


_WARNING_METRICS = tuple(s for s in METRICS.values() if s.source == "warning")


class WarningCollector(Collector):
    """Exports, at scrape time, the early warning's last evaluation of each ``(model, target_class)``:
    share tests and label-free estimates per slice rank, and the estimates overall. Bounded as
    :class:`SliceCollector`: by the model budget, ``max_series_keys`` pairs and ranks 1 to 5; an
    absent figure (no bucket tested, too few labels) is not exported."""

    def __init__(
        self,
        *,
        max_series_keys: int = 50,
        budget: ModelBudget | None = None,
        on_overflow: Callable[[str], None] | None = None,
    ) -> None:
        self.max_series_keys = max_series_keys
        self.budget = budget if budget is not None else ModelBudget(max_models=max_series_keys)
        self.on_overflow = on_overflow
        self._states: tuple[WarningState, ...] = ()

    def update(self, states: Iterable[WarningState]) -> None:
        """Export exactly these states from now on."""
        self._states = tuple(states)

    def forget_model(self, model: str) -> None:
        """Stop exporting the model's states."""
        self._states = tuple(s for s in self._states if s.model != model)

    def collect(self) -> Iterator[Metric]:
        families = {spec.name: _family(spec) for spec in _WARNING_METRICS}
        keys: set[tuple[str, str]] = set()

        def gauge(name: str, labels: list[str], value: float | None) -> None:
            if value is not None:
                families[name].add_metric(labels, float(value))  # type: ignore[attr-defined]

        for state in self._states:
            t = safe_label_value(state.target)
            m = self.budget.admit(state.model) if t is not None else None
            if m is None or t is None or ((m, t) not in keys and len(keys) >= self.max_series_keys):
                if self.on_overflow is not None:
                    self.on_overflow("slice_agent_estimated_error_ratio")
                continue
            keys.add((m, t))
            at = [m, t]
            gauge("slice_agent_estimated_error_ratio", at, state.estimate.rate if state.estimate.n else None)
            gauge(
                "slice_agent_estimated_error_lower_ratio",
                at,
                state.estimate.lower if state.estimate.n else None,
            )
            gauge(
                "slice_agent_estimated_error_upper_ratio",
                at,
                state.estimate.upper if state.estimate.n else None,
            )
            gauge("slice_agent_label_coverage_ratio", at, state.coverage)
            gauge("slice_agent_realised_error_ratio", at, state.realised)
            gauge("slice_agent_estimate_abs_error_ratio", at, state.estimate_error)
            for sl in state.slices:
                rank = str(sl.rank)
                if rank not in RANKS:
                    continue
                at = [m, t, rank]
                est = sl.estimate if sl.estimate.n else None
                gauge("slice_agent_slice_traffic_share_ratio", at, sl.share)
                gauge("slice_agent_slice_window_share_ratio", at, sl.window_share)
                gauge("slice_agent_slice_share_p_value", at, sl.p_value)
                gauge("slice_agent_slice_share_warning", at, None if sl.p_value is None else float(sl.warned))
                gauge("slice_agent_slice_estimated_error_ratio", at, None if est is None else est.rate)
                gauge("slice_agent_slice_estimated_error_lower_ratio", at, None if est is None else est.lower)
                gauge("slice_agent_slice_estimated_error_upper_ratio", at, None if est is None else est.upper)
                gauge("slice_agent_slice_label_coverage_ratio", at, sl.coverage)
                gauge("slice_agent_slice_realised_error_ratio", at, sl.realised)
                gauge("slice_agent_slice_estimate_abs_error_ratio", at, sl.estimate_error)
        yield from families.values()


class AgentMetrics:
    """Counters, gauges and histograms of the running agent, on an injected registry.

    Every known label value (event types, dead-letter reasons, modalities) is created up front,
    so a rate is zero rather than absent before the first event.

    Examples
    --------
    >>> from prometheus_client import CollectorRegistry
    >>> registry = CollectorRegistry()
    >>> metrics = AgentMetrics(registry)
    >>> metrics.dead_lettered("invalid_json")
    >>> registry.get_sample_value("slice_agent_dead_lettered_total", {"reason": "invalid_json"})
    1.0
    >>> registry.get_sample_value("slice_agent_dead_lettered_total", {"reason": "duplicate"})
    0.0
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        budget: ModelBudget | None = None,
        max_series_keys: int = 50,
    ) -> None:
        self.budget = budget if budget is not None else ModelBudget()
        self.max_series_keys = max_series_keys

        def counter(name: str) -> Counter:
            spec = METRICS[name]
            return Counter(spec.family, spec.help, spec.labels, registry=registry)

        def gauge(name: str) -> Gauge:
            spec = METRICS[name]
            return Gauge(spec.name, spec.help, spec.labels, registry=registry)

        def histogram(name: str) -> Histogram:
            spec = METRICS[name]
            return Histogram(spec.name, spec.help, spec.labels, registry=registry, buckets=spec.buckets or ())

        self._consumed = counter("slice_agent_events_consumed_total")
        self._dead = counter("slice_agent_dead_lettered_total")
        self._backlog = gauge("slice_agent_join_backlog")
        self._delay = histogram("slice_agent_label_delay_seconds")
        self._refit = histogram("slice_agent_refit_duration_seconds")
        self._embed = histogram("slice_agent_embedding_duration_seconds")
        self._refits = counter("slice_agent_refits_total")
        self._drift = counter("slice_agent_drift_detections_total")
        self._last_refit = gauge("slice_agent_last_refit_timestamp_seconds")
        self._lag = gauge("slice_agent_consumer_lag_messages")
        self._waiting = gauge("slice_agent_join_waiting_events")
        self._resets = counter("slice_agent_log_resets_total")
        self._unsent = gauge("slice_agent_dead_letters_unsent")
        self._unembedded = gauge("slice_agent_oldest_unembedded_age_seconds")
        self._pacs_failures = counter("slice_agent_pacs_fetch_failures_total")
        self._pacs_waiting = gauge("slice_agent_pacs_waiting_images")
        self._share_warnings = counter("slice_agent_share_warnings_total")
        self._mmd = gauge("slice_agent_embedding_drift_mmd")
        self._mmd_threshold = gauge("slice_agent_embedding_drift_mmd_threshold")
        self._overflowed = counter("slice_agent_label_overflow_total")
        for spec in METRICS.values():
            if spec.labels and spec.source != "threshold":
                self._overflowed.labels(spec.family)
        for event_type in EVENT_TYPES:
            self._lag.labels(event_type)
        for waiting in WAITING:
            self._waiting.labels(waiting)
        for event_type in EVENT_TYPES:
            self._consumed.labels(event_type)
            for reason in LOG_RESETS:
                self._resets.labels(event_type, reason)
        for reason in REASONS:
            self._dead.labels(reason)
        for reason in PACS_REASONS:
            self._pacs_failures.labels(reason)
        for modality in MODALITIES:
            self._embed.labels(modality)
        self._models: set[str] = set()
        self._keys: set[tuple[str, str]] = set()

    @staticmethod
    def _one_of(value: str, allowed: tuple[str, ...], what: str) -> str:
        if value not in allowed:
            raise ValueError(f"expected {what} in {allowed}, got {value!r}")
        return value

    def overflow(self, family: str) -> None:
        """Count one label set refused for ``family`` (a metric family name)."""
        spec = METRICS.get(family) or next((m for m in METRICS.values() if m.family == family), None)
        if spec is None:
            raise ValueError(f"expected a metric family of METRICS, got {family!r}")
        self._overflowed.labels(spec.family).inc()

    def _model(self, model: str, family: str) -> str | None:
        m = self.budget.admit(model)
        if m is None:
            self.overflow(family)
        return m

    def _key(self, model: str, target_class: str | int, family: str) -> tuple[str, str] | None:
        t = safe_label_value(target_class)
        m = self._model(model, family) if t is not None else None
        if m is None or t is None:
            if t is None:
                self.overflow(family)
            return None
        key = (m, t)
        if key not in self._keys and len(self._keys) >= self.max_series_keys:
            self.overflow(family)
            return None
        return key

    def consumed(self, event_type: str, n: int = 1) -> None:
        """Count ``n`` events of one type (``inference``, ``label`` or ``report``) consumed."""
        self._consumed.labels(self._one_of(event_type, EVENT_TYPES, "event type")).inc(n)

    def dead_lettered(self, reason: str, n: int = 1) -> None:
        """Count ``n`` inputs dead-lettered for ``reason``, one of :data:`agent.events.REASONS`."""
        self._dead.labels(self._one_of(reason, REASONS, "dead-letter reason")).inc(n)

    def set_join_backlog(self, model: str, studies: int) -> None:
        """Set how many of a model's studies wait for their label."""
        if (m := self._model(model, "slice_agent_join_backlog")) is not None:
            self._backlog.labels(m).set(studies)
            self._models.add(m)

    def observe_label_delay(self, model: str, seconds: float) -> None:
        """Record the delay between one inference and its confirmed label."""
        if (m := self._model(model, "slice_agent_label_delay_seconds")) is not None:
            self._delay.labels(m).observe(max(seconds, 0.0))
            self._models.add(m)

    def observe_embedding(self, modality: str, seconds: float) -> None:
        """Record the wall time of one embedding batch of one modality."""
        self._embed.labels(self._one_of(modality, MODALITIES, "modality")).observe(seconds)

    def refit_done(
        self, model: str, target_class: str | int, seconds: float, *, at: float | None = None
    ) -> None:
        """Record one completed refit: its duration, the count, and the time it completed."""
        if (key := self._key(model, target_class, "slice_agent_refit_duration_seconds")) is None:
            return
        self._refit.labels(*key).observe(seconds)
        self._refits.labels(*key).inc()
        self._last_refit.labels(*key).set(time.time() if at is None else at)
        self._keys.add(key)

    def drift_detected(self, model: str, target_class: str | int) -> None:
        """Count one error-rate drift found by the stream's detector."""
        if (key := self._key(model, target_class, "slice_agent_drift_detections")) is not None:
            self._drift.labels(*key).inc()
            self._keys.add(key)

    def share_warnings(self, model: str, target_class: str | int, n: int = 1) -> None:
        """Count ``n`` early warnings (buckets with a significant rise of a slice's share)."""
        if (key := self._key(model, target_class, "slice_agent_share_warnings")) is not None:
            self._share_warnings.labels(*key).inc(n)
            self._keys.add(key)

    def set_embedding_drift(self, drifts: Iterable[EmbeddingDrift]) -> None:
        """Show these embedding drift statistics (one per modality) and no other: a modality left
        out (too few embeddings this week) loses its series rather than keep a stale value."""
        shown = {self._one_of(d.modality, MODALITIES, "modality"): d for d in drifts}
        for modality in MODALITIES:
            d = shown.get(modality)
            if d is not None:
                self._mmd.labels(modality).set(d.mmd2)
                self._mmd_threshold.labels(modality).set(d.threshold)
                continue
            for metric in (self._mmd, self._mmd_threshold):
                with contextlib.suppress(KeyError):
                    metric.remove(modality)

    def set_consumer_lag(self, event_type: str, messages: int) -> None:
        """Set the lag, in messages, of the topic that carries ``event_type`` (summed over partitions)."""
        self._lag.labels(self._one_of(event_type, EVENT_TYPES, "event type")).set(max(messages, 0))

    def log_reset(self, event_type: str, reason: str, partitions: int = 1) -> None:
        """Count partitions of one event type whose log was reset or rewound (``reason`` one of
        :data:`LOG_RESETS`)."""
        event_type = self._one_of(event_type, EVENT_TYPES, "event type")
        self._resets.labels(event_type, self._one_of(reason, LOG_RESETS, "log reset reason")).inc(partitions)

    def set_join_waiting(self, *, inferences: int, labels: int) -> None:
        """Set how many inferences wait for a label, and how many labels wait for an inference."""
        self._waiting.labels("inference").set(max(inferences, 0))
        self._waiting.labels("label").set(max(labels, 0))

    def set_unsent_dead_letters(self, letters: int) -> None:
        """Set how many dead letters the outbox holds that the broker has not acknowledged."""
        self._unsent.set(max(letters, 0))

    def set_oldest_unembedded_age(self, seconds: float) -> None:
        """Set the age of the oldest sample waiting to be embedded (0 when none waits)."""
        self._unembedded.set(max(seconds, 0.0))

    def pacs_fetch_failed(self, reason: str) -> None:
        """Count one failed fetch from the PACS, for ``reason``, one of :data:`agent.errors.PACS_REASONS`."""
        self._pacs_failures.labels(self._one_of(reason, PACS_REASONS, "PACS reason")).inc()

    def set_pacs_waiting(self, images: int) -> None:
        """Set how many samples' images wait for another try at the PACS."""
        self._pacs_waiting.set(max(images, 0))

    def forget(self, model: str, target_class: str | int | None = None) -> None:
        """Remove the label sets of a model (or of one of its target classes) that is gone."""
        m = safe_label_value(model)
        if m is None:
            return
        for key in [
            k for k in self._keys if k[0] == m and (target_class is None or k[1] == str(target_class))
        ]:
            for metric in (self._refit, self._refits, self._drift, self._last_refit, self._share_warnings):
                with contextlib.suppress(KeyError):
                    metric.remove(*key)
            self._keys.discard(key)
        if target_class is None and m in self._models:
            for metric in (self._backlog, self._delay):
                with contextlib.suppress(KeyError):
                    metric.remove(m)
            self._models.discard(m)


class Health(NamedTuple):
    """What ``/healthz`` and ``/readyz`` answer: alive, ready for traffic, and bounded details
    (ages in seconds, counts; never an identifier)."""

    live: bool
    ready: bool
    detail: Mapping[str, object]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # scrapes are not log lines
        return


@dataclass
class MetricsServer:
    """A running ``/metrics`` endpoint; :meth:`close` stops it."""

    host: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    def close(self) -> None:
        """Stop serving and wait for the server thread."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class Exporter:
    """The agent's registry with its slice collector, agent metrics and alert thresholds.

    Parameters
    ----------
    settings
        The exporter section of the settings (address, thresholds, bounds).
    registry
        Where the metrics are registered; a fresh registry by default, never the global one.
    process
        Also export the process's CPU, memory and file descriptors (``process_*``); off for a
        batch audit that pushes its results and exits.
    """

    def __init__(
        self,
        settings: ExporterSettings | None = None,
        *,
        registry: CollectorRegistry | None = None,
        process: bool = True,
    ) -> None:
        self.settings = settings or ExporterSettings()
        self.registry = registry if registry is not None else CollectorRegistry()
        #: Called by ``/healthz`` and ``/readyz``: ``Health`` of the running agent (None: always up).
        self.health: Callable[[], Health] | None = None
        self.budget = ModelBudget(self.settings.max_models, reserved=self.settings.models)
        self.agent = AgentMetrics(
            self.registry, budget=self.budget, max_series_keys=self.settings.max_series_keys
        )
        self.slices = SliceCollector(
            min_slice_size=self.settings.min_slice_size,
            max_series_keys=self.settings.max_series_keys,
            budget=self.budget,
            on_overflow=self.agent.overflow,
        )
        self.registry.register(self.slices)
        self.warnings = WarningCollector(
            max_series_keys=self.settings.max_series_keys, budget=self.budget, on_overflow=self.agent.overflow
        )
        self.registry.register(self.warnings)
        s = self.settings
        for name, value in (
            ("slice_agent_alert_p_value_threshold", s.p_value_threshold),
            ("slice_agent_alert_error_rate_drift_threshold_ratio", s.error_rate_drift_threshold),
            ("slice_agent_alert_dead_letter_threshold_ratio", s.dead_letter_threshold),
            ("slice_agent_alert_refit_stale_threshold_seconds", s.refit_stale_seconds),
            ("slice_agent_alert_label_backlog_threshold", s.label_backlog_threshold),
            ("slice_agent_alert_consumer_lag_threshold", s.consumer_lag_threshold),
            ("slice_agent_alert_unembedded_age_threshold_seconds", s.unembedded_age_threshold_seconds),
            ("slice_agent_alert_unsent_dead_letters_threshold", s.unsent_dead_letters_threshold),
            ("slice_agent_alert_estimated_error_threshold_ratio", s.estimated_error_threshold),
            ("slice_agent_alert_label_coverage_threshold_ratio", s.label_coverage_threshold),
        ):
            Gauge(name, METRICS[name].help, registry=self.registry).set(value)
        if process:
            ProcessCollector(registry=self.registry)

    def publish(
        self,
        report: SliceReport,
        tracking: Mapping[str, SliceTracking | tuple[bool, int]] | None = None,
    ) -> None:
        """Export one refit's report (and its slices' tracking state) from now on."""
        self.slices.publish(report, tracking)

    def publish_warnings(self, states: Iterable[WarningState]) -> None:
        """Export the early warning's last evaluation (every (model, target class) at once), and
        count the warnings it raised."""
        states = tuple(states)
        self.warnings.update(states)
        for state in states:
            if state.new_warnings:
                self.agent.share_warnings(state.model, state.target, state.new_warnings)

    def forget_model(self, model: str) -> None:
        """Remove every series of ``model`` (it left the window) and free its slot for another."""
        self.warnings.forget_model(model)
        self.slices.forget_model(model)
        self.agent.forget(model)
        self.budget.release(model)

    def serve(self, host: str | None = None, port: int | None = None) -> MetricsServer:
        """Serve ``/metrics``, and ``/healthz`` (liveness) and ``/readyz`` (readiness) from
        :attr:`health`, over HTTP in a background thread (settings' address by default)."""
        host = self.settings.host if host is None else host
        port = self.settings.port if port is None else port
        metrics = make_wsgi_app(self.registry)

        def app(environ: dict[str, object], start_response: Callable[..., object]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path not in ("/healthz", "/readyz"):
                return metrics(environ, start_response)
            health = self.health() if self.health is not None else Health(True, True, {})
            up = health.live if path == "/healthz" else health.ready
            body = json.dumps({"status": "ok" if up else "unavailable", **health.detail}).encode()
            status = "200 OK" if up else "503 Service Unavailable"
            start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]

        server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
        thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
        thread.start()
        bound = int(server.server_port)
        log.info("serving metrics on http://%s:%d/metrics (health: /healthz, /readyz)", host, bound)
        return MetricsServer(host, bound, server, thread)

    def push(
        self, gateway: str, *, grouping_key: Mapping[str, str] | None = None, timeout: float = 10.0
    ) -> None:
        """Push every metric of the registry to a Pushgateway, replacing the job's group.

        ``grouping_key`` defaults to the ``model`` of the single exported report, so audits of
        different models do not overwrite each other.
        """
        key = dict(grouping_key) if grouping_key is not None else {}
        if grouping_key is None and len({m for m, _ in self.slices.reports}) == 1:
            key["model"] = next(iter(self.slices.reports))[0]
        push_to_gateway(
            gateway, job=self.settings.push_job, registry=self.registry, grouping_key=key, timeout=timeout
        )
        log.info("pushed metrics to the Pushgateway as job %s", self.settings.push_job)
