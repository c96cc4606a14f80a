"""Generate slice-agent's Grafana dashboards and Grafana-managed alert rules.

    python grafana/build.py           # write grafana/dashboards/*.json and grafana/provisioning/alerting/
    python grafana/build.py --check   # exit 1 if the committed files differ from what this script writes

The dashboards are plain Grafana JSON (schema 39, read by Grafana 11). The Grafana-managed alert
rules are derived from the Prometheus rules in ``deploy/prometheus/rules/slice-agent.rules.yml``, so
both alerting paths fire on the same expressions with the same ``for`` periods.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent
RULES = ROOT.parent / "deploy" / "prometheus" / "rules" / "slice-agent.rules.yml"
DATASOURCE_UID = "slice-agent-prometheus"
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'model=~"$model", target_class=~"$target_class"'
INST = 'instance=~"$instance"'

Json = dict[str, Any]


# ----------------------------------------------------------------------------------------- helpers


def target(expr: str, legend: str = "", *, ref: str = "A", table: bool = False) -> Json:
    """One Prometheus query of a panel; ``table`` makes it an instant query in table format."""
    out: Json = {"datasource": DS, "refId": ref, "expr": expr, "legendFormat": legend or "__auto"}
    if table:
        out.update(instant=True, range=False, format="table")
    else:
        out.update(instant=False, range=True)
    return out


class Layout:
    """Hands out panel ids and grid positions, row by row, on Grafana's 24-column grid."""

    def __init__(self) -> None:
        self.next_id = 1
        self.x = 0
        self.y = 0
        self.row_height = 0

    def place(self, w: int, h: int) -> tuple[int, Json]:
        if self.x + w > 24:
            self.x, self.y, self.row_height = 0, self.y + self.row_height, 0
        pos = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_height = max(self.row_height, h)
        pid = self.next_id
        self.next_id += 1
        return pid, pos


def panel(
    layout: Layout,
    kind: str,
    title: str,
    targets: list[Json],
    *,
    w: int,
    h: int,
    unit: str | None = None,
    description: str = "",
    options: Json | None = None,
    custom: Json | None = None,
    mappings: list[Json] | None = None,
    thresholds: list[Json] | None = None,
    overrides: list[Json] | None = None,
    transformations: list[Json] | None = None,
) -> Json:
    pid, pos = layout.place(w, h)
    defaults: Json = {}
    if unit:
        defaults["unit"] = unit
    if custom:
        defaults["custom"] = custom
    if mappings:
        defaults["mappings"] = mappings
    if thresholds:
        defaults["thresholds"] = {"mode": "absolute", "steps": thresholds}
    out: Json = {
        "id": pid,
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": pos,
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": options or {},
    }
    if transformations:
        out["transformations"] = transformations
    return out


def stat(
    layout: Layout,
    title: str,
    expr: str,
    *,
    unit: str,
    legend: str = "",
    w: int = 6,
    more: list[Json] | None = None,
    **kw: Any,
) -> Json:
    return panel(
        layout,
        "stat",
        title,
        [target(expr, legend), *(more or [])],
        w=w,
        h=4,
        unit=unit,
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "auto",
        },
        **kw,
    )


def timeseries(layout: Layout, title: str, targets: list[Json], *, unit: str, w: int = 12, **kw: Any) -> Json:
    return panel(
        layout,
        "timeseries",
        title,
        targets,
        w=w,
        h=8,
        unit=unit,
        options={"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        **kw,
    )


def green_red(limit: float) -> list[Json]:
    return [{"color": "green", "value": None}, {"color": "red", "value": limit}]


def datasource_variable() -> Json:
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "regex": "",
        "includeAll": False,
        "multi": False,
        "options": [],
    }


def query_variable(name: str, label: str, query: str) -> Json:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-variable", "qryType": 1},
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {},
        "sort": 1,
        "hide": 0,
        "options": [],
        "regex": "",
    }


def dashboard(
    uid: str, title: str, description: str, panels: list[Json], variables: list[Json], **kw: Any
) -> Json:
    annotations: list[Json] = [
        {
            "builtIn": 1,
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True,
            "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts",
            "type": "dashboard",
        },
        *kw.pop("annotations", []),
    ]
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["slice-agent"],
        "timezone": "utc",
        "editable": False,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "1m",
        "time": {"from": "now-7d", "to": "now"},
        "templating": {"list": variables},
        "annotations": {"list": annotations},
        "links": [
            {"type": "dashboards", "tags": ["slice-agent"], "asDropdown": False, "title": "slice-agent"},
        ],
        "panels": panels,
        **kw,
    }


# --------------------------------------------------------------------------------------- overview


def overview() -> Json:
    """Per model and class: error rate, slices with tokens, emerging slices, drift, label backlog."""
    lay = Layout()
    key = "{{model}} / {{target_class}}"
    slice_cols = [
        ("A", "slice_agent_slice_error_ratio", "error rate"),
        ("B", "slice_agent_slice_rest_error_ratio", "rest error rate"),
        ("C", "slice_agent_slice_size", "studies"),
        ("D", "slice_agent_slice_p_value", "p-value"),
        ("E", "slice_agent_slice_error_precision_at_10_ratio", "error precision@10"),
        ("F", "slice_agent_slice_emerging", "emerging"),
        ("G", "slice_agent_slice_age_refits", "age (refits)"),
        ("H", "slice_agent_slice_tokens_info", ""),
    ]
    columns = [
        "model",
        "target_class",
        "slice_rank",
        "tokens",
        *[f"Value #{r}" for r, _, n in slice_cols if n],
    ]
    percent = ["error rate", "rest error rate", "error precision@10"]
    panels = [
        stat(
            lay,
            "Window error rate",
            f"slice_agent_window_error_ratio{{{SEL}}}",
            unit="percentunit",
            legend=key,
            w=4,
            description="Misclassified fraction of the labeled samples in the audited window.",
        ),
        stat(lay, "Labeled samples", f"slice_agent_window_samples{{{SEL}}}", unit="short", legend=key, w=4),
        stat(
            lay,
            "Findings and slices",
            f"sum(slice_agent_findings{{{SEL}}})",
            legend="findings",
            more=[target(f"sum(slice_agent_slices{{{SEL}}})", "slices")],
            unit="short",
            w=4,
            description="Findings (one per failure: overlapping slices merged) and the slices under them.",
        ),
        stat(
            lay,
            "Emerging slices",
            f"count(slice_agent_slice_emerging{{{SEL}}} == 1) or vector(0)",
            unit="short",
            w=4,
            thresholds=green_red(1),
        ),
        stat(
            lay,
            "Drift events",
            f"sum(increase(slice_agent_drift_detections_total{{{SEL}}}[$__range])) or vector(0)",
            unit="short",
            w=4,
            thresholds=green_red(1),
        ),
        stat(
            lay,
            "Label backlog",
            'sum(slice_agent_join_backlog{model=~"$model"})',
            unit="short",
            w=4,
            description="Studies with a prediction still waiting for their confirmed label.",
        ),
        timeseries(
            lay,
            "Error rate per model and class",
            [
                target(f"slice_agent_window_error_ratio{{{SEL}}}", key),
                target(
                    f"model_target_class:slice_agent_window_error_ratio:avg_over_time_7d{{{SEL}}}",
                    f"7-day mean {key}",
                    ref="B",
                ),
            ],
            unit="percentunit",
            w=16,
        ),
        panel(
            lay,
            "timeseries",
            "Drift detections over time",
            [target(f"increase(slice_agent_drift_detections_total{{{SEL}}}[$__rate_interval])", key)],
            w=8,
            h=8,
            unit="short",
            custom={"drawStyle": "bars", "fillOpacity": 80},
            description="Error-rate drifts found by the agent's detector.",
        ),
        panel(
            lay,
            "table",
            "Error slices (latest refit)",
            [target(f"{metric}{{{SEL}}}", ref=ref, table=True) for ref, metric, _ in slice_cols],
            w=24,
            h=9,
            description="Significant error slices of the latest refit, with the tokens that set them apart.",
            options={"showHeader": True, "sortBy": [{"displayName": "error rate", "desc": True}]},
            transformations=[
                {"id": "merge", "options": {}},
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {
                            "Time": True,
                            "job": True,
                            "instance": True,
                            "__name__": True,
                            "Value #H": True,
                        },
                        "indexByName": {name: i for i, name in enumerate(columns)},
                        "renameByName": {
                            "target_class": "target class",
                            "slice_rank": "rank",
                            **{f"Value #{r}": n for r, _, n in slice_cols if n},
                        },
                    },
                },
            ],
            overrides=[
                *[
                    {
                        "matcher": {"id": "byName", "options": n},
                        "properties": [{"id": "unit", "value": "percentunit"}],
                    }
                    for n in percent
                ],
                {
                    "matcher": {"id": "byName", "options": "p-value"},
                    "properties": [{"id": "unit", "value": "sci"}],
                },
                {
                    "matcher": {"id": "byName", "options": "emerging"},
                    "properties": [
                        {
                            "id": "mappings",
                            "value": [
                                {
                                    "type": "value",
                                    "options": {
                                        "0": {"text": "no"},
                                        "1": {"text": "emerging", "color": "red"},
                                    },
                                }
                            ],
                        },
                        {"id": "custom.cellOptions", "value": {"type": "color-text"}},
                    ],
                },
            ],
        ),
        panel(
            lay,
            "table",
            "Tokens of all errors (latest refit)",
            [target(f"slice_agent_baseline_tokens_info{{{SEL}}}", table=True)],
            w=24,
            h=4,
            description="What sets all misclassified cases apart from correct ones, before slicing.",
            transformations=[
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {
                            "Time": True,
                            "job": True,
                            "instance": True,
                            "__name__": True,
                            "Value": True,
                        },
                        "indexByName": {"model": 0, "target_class": 1, "tokens": 2},
                        "renameByName": {"target_class": "target class"},
                    },
                }
            ],
        ),
        timeseries(
            lay,
            "Slice error rate vs rest",
            [
                target(f"slice_agent_slice_error_ratio{{{SEL}}}", f"{key} rank {{{{slice_rank}}}}: slice"),
                target(
                    f"slice_agent_slice_rest_error_ratio{{{SEL}}}",
                    f"{key} rank {{{{slice_rank}}}}: rest",
                    ref="B",
                ),
            ],
            unit="percentunit",
        ),
        panel(
            lay,
            "state-timeline",
            "Emerging slices",
            [target(f"slice_agent_slice_emerging{{{SEL}}}", f"{key} rank {{{{slice_rank}}}}")],
            w=12,
            h=8,
            mappings=[
                {
                    "type": "value",
                    "options": {
                        "0": {"text": "tracked", "color": "green"},
                        "1": {"text": "emerging", "color": "red"},
                    },
                }
            ],
            options={"showValue": "never", "mergeValues": True},
        ),
        timeseries(
            lay,
            "Label backlog",
            [
                target('slice_agent_join_backlog{model=~"$model"}', "{{model}}"),
                target("max(slice_agent_alert_label_backlog_threshold)", "alert threshold", ref="B"),
            ],
            unit="short",
        ),
        timeseries(
            lay,
            "Label delay",
            [
                target(
                    "histogram_quantile(0.5, sum by (model, le) "
                    '(rate(slice_agent_label_delay_seconds_bucket{model=~"$model"}[$__rate_interval])))',
                    "{{model}} median",
                ),
                target(
                    'model:slice_agent_label_delay_seconds:p90_1h{model=~"$model"}',
                    "{{model}} p90 (1h)",
                    ref="B",
                ),
            ],
            unit="s",
        ),
    ]
    panels += before_the_labels(lay, key)
    return dashboard(
        "slice-agent-overview",
        "slice-agent: error slices",
        "Error slices of the audited classifiers: error rates, slices and tokens, drift, label backlog.",
        panels,
        [
            datasource_variable(),
            query_variable("model", "Model", "label_values(slice_agent_window_samples, model)"),
            query_variable(
                "target_class",
                "Target class",
                'label_values(slice_agent_window_samples{model=~"$model"}, target_class)',
            ),
        ],
        annotations=[
            {
                "name": "Drift detected",
                "datasource": DS,
                "enable": True,
                "hide": False,
                "iconColor": "orange",
                "expr": f"increase(slice_agent_drift_detections_total{{{SEL}}}[2m]) > 0",
                "step": "1m",
                "titleFormat": "Error-rate drift",
                "textFormat": "{{model}} / {{target_class}}",
                "useValueForTime": False,
            }
        ],
    )


def before_the_labels(lay: Layout, key: str) -> list[Json]:
    """The early warning beside the realised figures: slice shares of the unlabeled traffic, the
    error estimated from calibrated scores with its interval, and how good it was once labeled."""
    ranked = "{{model}} / {{target_class}} rank {{slice_rank}}"
    return [
        stat(
            lay,
            "Early warnings",
            f"sum(increase(slice_agent_share_warnings_total{{{SEL}}}[$__range])) or vector(0)",
            unit="short",
            w=6,
            thresholds=green_red(1),
            description="Complete time buckets in which a slice's share of the unlabeled traffic rose "
            "significantly above its labeled-window share (agent-side test, stated false-alarm rate).",
        ),
        stat(
            lay,
            "Slices warning now",
            f"count(slice_agent_slice_share_warning{{{SEL}}} == 1) or vector(0)",
            unit="short",
            w=6,
            thresholds=green_red(1),
        ),
        stat(
            lay,
            "Estimated error, waiting for labels",
            f"slice_agent_estimated_error_ratio{{{SEL}}}",
            unit="percentunit",
            legend=key,
            w=6,
            description="Error rate of the inferences still waiting for labels, estimated from "
            "calibrated scores (CBPE-style). Breaks under a shift in prevalence or appearance.",
        ),
        stat(
            lay,
            "Label coverage",
            f"slice_agent_label_coverage_ratio{{{SEL}}}",
            unit="percentunit",
            legend=key,
            w=6,
            more=[
                target(
                    "max(slice_agent_alert_label_coverage_threshold_ratio)", "labels missing below", ref="B"
                )
            ],
        ),
        timeseries(
            lay,
            "Slice share of the traffic (before the labels)",
            [
                target(f"slice_agent_slice_traffic_share_ratio{{{SEL}}}", f"{ranked} last bucket"),
                target(f"slice_agent_slice_window_share_ratio{{{SEL}}}", f"{ranked} labeled window", ref="B"),
                target(f"slice_agent_slice_share_warning{{{SEL}}}", f"{ranked} warning", ref="C"),
            ],
            unit="percentunit",
            description="Share of each complete time bucket's inferences assigned to the slice, against its "
            "share of the labeled window by the same rule; warning is 1 when the rise is significant.",
        ),
        timeseries(
            lay,
            "Slice error: estimated (no labels) and realised",
            [
                target(f"slice_agent_slice_estimated_error_ratio{{{SEL}}}", f"{ranked} estimated"),
                target(f"slice_agent_slice_estimated_error_lower_ratio{{{SEL}}}", f"{ranked} lower", ref="B"),
                target(f"slice_agent_slice_estimated_error_upper_ratio{{{SEL}}}", f"{ranked} upper", ref="C"),
                target(f"slice_agent_slice_realised_error_ratio{{{SEL}}}", f"{ranked} realised", ref="D"),
                target(f"slice_agent_slice_error_ratio{{{SEL}}}", f"{ranked} last refit", ref="E"),
                target("max(slice_agent_alert_estimated_error_threshold_ratio)", "alert threshold", ref="F"),
            ],
            unit="percentunit",
        ),
        timeseries(
            lay,
            "Overall error: estimated (no labels) and realised",
            [
                target(f"slice_agent_estimated_error_ratio{{{SEL}}}", f"{key} estimated"),
                target(f"slice_agent_estimated_error_lower_ratio{{{SEL}}}", f"{key} lower", ref="B"),
                target(f"slice_agent_estimated_error_upper_ratio{{{SEL}}}", f"{key} upper", ref="C"),
                target(f"slice_agent_realised_error_ratio{{{SEL}}}", f"{key} realised", ref="D"),
                target(f"slice_agent_window_error_ratio{{{SEL}}}", f"{key} window", ref="E"),
            ],
            unit="percentunit",
        ),
        timeseries(
            lay,
            "How good the estimates were, once labeled",
            [
                target(f"slice_agent_estimate_abs_error_ratio{{{SEL}}}", f"{key} overall"),
                target(f"slice_agent_slice_estimate_abs_error_ratio{{{SEL}}}", ranked, ref="B"),
                target(
                    f"slice_agent_slice_label_coverage_ratio{{{SEL}}}", f"{ranked} label coverage", ref="C"
                ),
                target(f"slice_agent_slice_share_p_value{{{SEL}}}", f"{ranked} share test p-value", ref="D"),
            ],
            unit="percentunit",
            description="Absolute difference between the estimated and the realised error rate of the "
            "recent inferences whose labels have come.",
        ),
        timeseries(
            lay,
            "Embedding drift per modality, this week against the last (no labels)",
            [
                target("slice_agent_embedding_drift_mmd", "{{modality}} MMD²"),
                target(
                    "slice_agent_embedding_drift_mmd_threshold", "{{modality}} permutation threshold", ref="B"
                ),
            ],
            unit="none",
            w=24,
            description="Squared MMD between the newest week's sample of each modality's embeddings and "
            "the week before's, against its permutation threshold (false-alarm rate summary.drift_alpha). "
            "Above the threshold, the traffic changed: read it beside the estimated and realised error.",
        ),
    ]


# ------------------------------------------------------------------------------------ agent health


def health() -> Json:
    """Is the agent up, consuming, refitting, and keeping up with labels."""
    lay = Layout()
    key = "{{model}} / {{target_class}}"
    panels = [
        stat(
            lay,
            "Scrape up",
            f'min(up{{job="slice-agent", {INST}}})',
            unit="short",
            mappings=[
                {
                    "type": "value",
                    "options": {"0": {"text": "down", "color": "red"}, "1": {"text": "up", "color": "green"}},
                }
            ],
        ),
        stat(
            lay,
            "Time since last refit",
            f"time() - max(slice_agent_last_refit_timestamp_seconds{{{INST}}})",
            unit="s",
        ),
        stat(
            lay,
            "Dead-lettered (10m)",
            f"max(job_instance:slice_agent_dead_lettered:ratio_rate10m{{{INST}}})",
            unit="percentunit",
            thresholds=green_red(0.05),
        ),
        stat(lay, "Label backlog", f"sum(slice_agent_join_backlog{{{INST}}})", unit="short"),
        timeseries(
            lay,
            "Events consumed",
            [
                target(
                    "sum by (event_type) "
                    f"(rate(slice_agent_events_consumed_total{{{INST}}}[$__rate_interval]))",
                    "{{event_type}}",
                )
            ],
            unit="reqps",
        ),
        timeseries(
            lay,
            "Dead-lettered by reason",
            [
                target(
                    "sum by (reason) "
                    f"(rate(slice_agent_dead_lettered_total{{{INST}}}[$__rate_interval])) > 0",
                    "{{reason}}",
                )
            ],
            unit="reqps",
        ),
        timeseries(
            lay,
            "Dead-letter ratio vs threshold",
            [
                target(f"job_instance:slice_agent_dead_lettered:ratio_rate10m{{{INST}}}", "{{instance}}"),
                target(
                    f"slice_agent_alert_dead_letter_threshold_ratio{{{INST}}}",
                    "threshold {{instance}}",
                    ref="B",
                ),
            ],
            unit="percentunit",
        ),
        timeseries(
            lay,
            "Time since last refit vs threshold",
            [
                target(f"time() - slice_agent_last_refit_timestamp_seconds{{{INST}}}", key),
                target(
                    f"slice_agent_alert_refit_stale_threshold_seconds{{{INST}}}",
                    "threshold {{instance}}",
                    ref="B",
                ),
            ],
            unit="s",
        ),
        timeseries(
            lay,
            "Refit duration",
            [
                target(
                    "histogram_quantile(0.5, sum by (model, target_class, le) "
                    f"(rate(slice_agent_refit_duration_seconds_bucket{{{INST}}}[$__rate_interval])))",
                    f"{key} median",
                ),
                target(
                    "histogram_quantile(0.95, sum by (model, target_class, le) "
                    f"(rate(slice_agent_refit_duration_seconds_bucket{{{INST}}}[$__rate_interval])))",
                    f"{key} p95",
                    ref="B",
                ),
            ],
            unit="s",
        ),
        timeseries(
            lay,
            "Embedding batch duration (p95)",
            [
                target(
                    "histogram_quantile(0.95, sum by (modality, le) "
                    f"(rate(slice_agent_embedding_duration_seconds_bucket{{{INST}}}[$__rate_interval])))",
                    "{{modality}}",
                )
            ],
            unit="s",
        ),
        timeseries(
            lay,
            "Refits per hour",
            [target(f"sum by (model, target_class) (increase(slice_agent_refits_total{{{INST}}}[1h]))", key)],
            unit="short",
        ),
        timeseries(
            lay,
            "Consumer lag vs threshold",
            [
                target(
                    f"sum by (event_type) (slice_agent_consumer_lag_messages{{{INST}}})", "{{event_type}}"
                ),
                target(f"max(slice_agent_alert_consumer_lag_threshold{{{INST}}})", "threshold", ref="B"),
            ],
            unit="short",
        ),
        timeseries(
            lay,
            "Log resets (recreated topics, lost logs, rewound offsets)",
            [
                target(
                    f"sum by (event_type, reason) (increase(slice_agent_log_resets_total{{{INST}}}[1h]))",
                    "{{event_type}} {{reason}}",
                )
            ],
            unit="short",
        ),
        timeseries(
            lay,
            "Join: events waiting for their other half",
            [
                target(
                    f"sum by (event_type) (slice_agent_join_waiting_events{{{INST}}})",
                    "{{event_type}} waiting",
                )
            ],
            unit="short",
        ),
        timeseries(
            lay,
            "Oldest unembedded sample vs threshold",
            [
                target(f"max(slice_agent_oldest_unembedded_age_seconds{{{INST}}})", "oldest unembedded"),
                target(
                    f"max(slice_agent_alert_unembedded_age_threshold_seconds{{{INST}}})",
                    "threshold",
                    ref="B",
                ),
            ],
            unit="s",
        ),
        timeseries(
            lay,
            "Unsent dead letters vs threshold",
            [
                target(f"sum(slice_agent_dead_letters_unsent{{{INST}}})", "unsent"),
                target(
                    f"max(slice_agent_alert_unsent_dead_letters_threshold{{{INST}}})", "threshold", ref="B"
                ),
            ],
            unit="short",
        ),
        timeseries(
            lay,
            "Label values refused (bounds)",
            [
                target(
                    f"sum by (family) (increase(slice_agent_label_overflow_total{{{INST}}}[1h])) > 0",
                    "{{family}}",
                )
            ],
            unit="short",
        ),
        timeseries(
            lay,
            "Process",
            [
                target(f"process_resident_memory_bytes{{{INST}}}", "resident memory {{instance}}"),
                target(
                    f"rate(process_cpu_seconds_total{{{INST}}}[$__rate_interval])",
                    "CPU {{instance}}",
                    ref="B",
                ),
            ],
            unit="bytes",
            overrides=[
                {
                    "matcher": {"id": "byFrameRefID", "options": "B"},
                    "properties": [{"id": "unit", "value": "percentunit"}],
                }
            ],
        ),
    ]
    return dashboard(
        "slice-agent-health",
        "slice-agent: agent health",
        "The sidecar itself: scrape, consumption, dead letters, refits, embedding time, labels.",
        panels,
        [
            datasource_variable(),
            query_variable(
                "instance", "Instance", "label_values(slice_agent_events_consumed_total, instance)"
            ),
        ],
    )


# ------------------------------------------------------------------------------ Grafana alert rules


def _uid(name: str) -> str:
    words = re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()
    return words[:40]


def grafana_alerts(rules_path: Path = RULES) -> Json:
    """The Prometheus alert rules as Grafana-managed rules: same expressions, same ``for``.

    Each Prometheus expression returns the series that fire; Grafana counts them per alert
    identity (query A) and fires where the count is above zero (condition C).
    """
    source = yaml.safe_load(rules_path.read_text(encoding="utf-8"))
    rules: list[Json] = []
    for group in source["groups"]:
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            name = rule["alert"]
            expr = " ".join(rule["expr"].split())
            rules.append(
                {
                    "uid": _uid(name),
                    "title": name,
                    "condition": "C",
                    "data": [
                        {
                            "refId": "A",
                            "relativeTimeRange": {"from": 600, "to": 0},
                            "datasourceUid": DATASOURCE_UID,
                            "model": {
                                "refId": "A",
                                "expr": f"count by (job, instance, model, target_class, slice_rank) ({expr})",
                                "instant": True,
                                "range": False,
                                "intervalMs": 1000,
                                "maxDataPoints": 43200,
                            },
                        },
                        {
                            "refId": "C",
                            "relativeTimeRange": {"from": 0, "to": 0},
                            "datasourceUid": "__expr__",
                            "model": {
                                "refId": "C",
                                "type": "threshold",
                                "expression": "A",
                                "conditions": [{"evaluator": {"type": "gt", "params": [0]}}],
                            },
                        },
                    ],
                    "noDataState": "OK",
                    "execErrState": "Error",
                    "for": rule.get("for", "0m"),
                    "annotations": {
                        "summary": rule["annotations"]["summary"],
                        "description": f"Mirrors the Prometheus alert {name} (deploy/prometheus/rules).",
                    },
                    "labels": dict(rule.get("labels", {})),
                    "isPaused": False,
                }
            )
    return {
        "apiVersion": 1,
        "groups": [
            {"orgId": 1, "name": "slice-agent", "folder": "slice-agent", "interval": "1m", "rules": rules}
        ],
    }


# ----------------------------------------------------------------------------------------- output


def render() -> dict[str, str]:
    """Every generated file, by path relative to ``grafana/``, with its exact text."""
    header = (
        "# Generated by grafana/build.py from deploy/prometheus/rules/slice-agent.rules.yml: do not edit.\n"
    )
    return {
        "dashboards/slice-agent-overview.json": json.dumps(overview(), indent=2) + "\n",
        "dashboards/slice-agent-health.json": json.dumps(health(), indent=2) + "\n",
        "provisioning/alerting/slice-agent.yaml": header
        + yaml.safe_dump(grafana_alerts(), sort_keys=False, width=10_000),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--check", action="store_true", help="compare with the committed files, write nothing"
    )
    args = parser.parse_args(argv)
    stale = []
    for rel, text in render().items():
        path = ROOT / rel
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(rel)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print("out of date (run python grafana/build.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
