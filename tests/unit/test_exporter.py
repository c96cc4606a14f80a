"""The exporter's metrics on a fresh registry; the alert rules under promtool; the Grafana dashboards."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.config import ExporterSettings
from agent.drift import EmbeddingDrift
from agent.events import REASONS
from agent.exporter import EVENT_TYPES, METRICS, MODALITIES, AgentMetrics, Exporter, SliceCollector
from agent.report import Member, SliceReport, SliceResult, TokenResult, Window

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "rules" / "slice-agent.rules.yml"
ALLOWED_LABELS = {
    "model",
    "target_class",
    "slice_rank",
    "modality",
    "reason",
    "event_type",
    "tokens",
    "le",
    "family",
}
SAFE_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,63}$")
# Up to five tokens, each a word or a two-word phrase ("chest tube"), as safe_tokens lets through.
_WORDS = r"[a-z]{3,32}( [a-z]{3,32})?"
TOKENS_VALUE = re.compile(rf"^{_WORDS}(, {_WORDS}){{0,4}}$")


def _slice(
    rank: int, *, size: int = 40, tokens: tuple[str, ...] = ("tube", "drain"), sid: str = ""
) -> SliceResult:
    return SliceResult(
        rank=rank,
        id=sid or f"s-{rank}",
        size=size,
        error_rate=0.5 + rank / 100,
        rest_error_rate=0.1,
        p_value=10.0**-rank,
        error_precision_at_10=0.9,
        n_tested=size,
        members=(Member("1.2.840.99.1", 0.99),),
        tokens=tuple(TokenResult(t, 0.1) for t in tokens),
    )


def _report(*slices: SliceResult, model: str = "ptx", target: str | int = "pneumothorax") -> SliceReport:
    return SliceReport(
        model, target, ("report",), Window(500, 60, None, None), slices, (TokenResult("tube", 0.2),)
    )


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def _require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} is not installed: run `make system-deps`", pytrace=False)
    return path


# ------------------------------------------------------------------------------------ slice metrics


def test_slice_metrics_come_from_the_latest_report_and_tracking():
    exporter = Exporter(ExporterSettings(), process=False)
    exporter.publish(_report(_slice(1), _slice(2, tokens=("portable", "line"))), {"s-1": (True, 4)})
    r = exporter.registry
    at = {"model": "ptx", "target_class": "pneumothorax"}
    assert _value(r, "slice_agent_window_samples", **at) == 500
    assert _value(r, "slice_agent_window_error_ratio", **at) == pytest.approx(0.12)
    assert _value(r, "slice_agent_slices", **at) == 2
    assert _value(r, "slice_agent_slice_error_ratio", **at, slice_rank="1") == pytest.approx(0.51)
    assert _value(r, "slice_agent_slice_rest_error_ratio", **at, slice_rank="2") == pytest.approx(0.1)
    assert _value(r, "slice_agent_slice_p_value", **at, slice_rank="2") == pytest.approx(0.01)
    assert _value(r, "slice_agent_slice_size", **at, slice_rank="1") == 40
    assert _value(r, "slice_agent_slice_error_precision_at_10_ratio", **at, slice_rank="1") == 0.9
    assert _value(r, "slice_agent_slice_emerging", **at, slice_rank="1") == 1
    assert _value(r, "slice_agent_slice_age_refits", **at, slice_rank="1") == 4
    assert _value(r, "slice_agent_slice_emerging", **at, slice_rank="2") == 0
    assert _value(r, "slice_agent_slice_age_refits", **at, slice_rank="2") == 1
    assert _value(r, "slice_agent_slice_tokens_info", **at, slice_rank="2", tokens="portable, line") == 1
    assert _value(r, "slice_agent_baseline_tokens_info", **at, tokens="tube") == 1

    # the next refit found one slice: rank 2 and its tokens are gone, not left stale
    exporter.publish(_report(_slice(1, sid="s-9")))
    assert _value(r, "slice_agent_slices", **at) == 1
    assert _value(r, "slice_agent_slice_size", **at, slice_rank="2") is None
    assert _value(r, "slice_agent_slice_tokens_info", **at, slice_rank="2", tokens="portable, line") is None
    assert _value(r, "slice_agent_slice_emerging", **at, slice_rank="1") == 0, (
        "tracking was for another slice id"
    )

    exporter.slices.forget("ptx", "pneumothorax")
    assert _value(r, "slice_agent_window_samples", **at) is None


def test_small_slices_out_of_range_ranks_and_unsafe_tokens_are_not_exported():
    registry = CollectorRegistry()
    collector = SliceCollector(min_slice_size=10)
    registry.register(collector)
    tokens = (
        "Doe",
        "mrn1234567",
        "tube",
        "x",
        "jane.doe",
        "ab",
        "drain",
        "tube",
        "tip",
        "line",
        "lead",
        "svc",
    )
    collector.publish(_report(_slice(1, tokens=tokens), _slice(2, size=9), _slice(7)))
    text = generate_latest(registry).decode()
    assert 'slice_rank="2"' not in text and 'slice_rank="7"' not in text
    assert 'tokens="tube, drain, tip, line, lead"' in text
    assert "Doe" not in text and "1234567" not in text


def test_a_report_whose_names_are_not_identifiers_is_not_exported(caplog):
    registry = CollectorRegistry()
    collector = SliceCollector()
    registry.register(collector)
    with caplog.at_level(logging.INFO):
        collector.publish(_report(_slice(1), model="Jane Doe 12/03/2026"))
    assert "slice_agent_window_samples{" not in generate_latest(registry).decode()
    assert "Jane" not in caplog.text and "report not exported" in caplog.text


def test_registering_twice_on_one_registry_fails():
    registry = CollectorRegistry()
    Exporter(registry=registry, process=False)
    with pytest.raises(ValueError, match="Duplicated"):
        Exporter(registry=registry, process=False)


names = st.text(alphabet=st.characters(codec="utf-8"), min_size=0, max_size=80)
reports = st.builds(
    lambda model, target, ranks, words: _report(
        *[_slice(r, size=s, tokens=tuple(words)) for r, s in ranks], model=model, target=target
    ),
    model=st.one_of(names, st.sampled_from(["ptx", "cxr-1", "m:2"])),
    target=st.one_of(names, st.integers(-5, 10**12)),
    ranks=st.lists(st.tuples(st.integers(-3, 12), st.integers(0, 100)), max_size=8),
    words=st.lists(st.one_of(names, st.sampled_from(["tube", "drain", "portable"])), max_size=12),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(reports, max_size=30), st.dictionaries(names, st.tuples(st.booleans(), st.integers(0, 99))))
def test_label_sets_stay_bounded_whatever_the_input(batch, tracking):
    exporter = Exporter(ExporterSettings(max_series_keys=5), process=False)
    for report in batch:
        exporter.publish(report, tracking)
    keys, per_key = set(), {}
    for family in text_string_to_metric_families(generate_latest(exporter.registry).decode()):
        for sample in family.samples:
            assert set(sample.labels) <= ALLOWED_LABELS, sample
            for name, value in sample.labels.items():
                if name in ("model", "target_class"):
                    assert SAFE_VALUE.match(value), sample
                elif name == "slice_rank":
                    assert value in {"1", "2", "3", "4", "5"}, sample
                elif name == "tokens":
                    assert TOKENS_VALUE.match(value), sample
            if "model" in sample.labels and "target_class" in sample.labels:
                key = (sample.labels["model"], sample.labels["target_class"])
                keys.add(key)
                if "slice_rank" in sample.labels:
                    per_key.setdefault((*key, sample.name), set()).add(sample.labels["slice_rank"])
    assert len(keys) <= 5
    assert all(len(ranks) <= 5 for ranks in per_key.values())


# ------------------------------------------------------------------------------------ agent metrics


def test_known_label_values_are_precreated_and_unknown_ones_refused():
    registry = CollectorRegistry()
    metrics = AgentMetrics(registry)
    for reason in REASONS:
        assert _value(registry, "slice_agent_dead_lettered_total", reason=reason) == 0
    for event_type in EVENT_TYPES:
        assert _value(registry, "slice_agent_events_consumed_total", event_type=event_type) == 0
    for modality in MODALITIES:
        assert _value(registry, "slice_agent_embedding_duration_seconds_count", modality=modality) == 0
    with pytest.raises(ValueError, match="dead-letter reason"):
        metrics.dead_lettered("patient Jane Doe")
    with pytest.raises(ValueError, match="event type"):
        metrics.consumed("telemetry")
    with pytest.raises(ValueError, match="modality"):
        metrics.observe_embedding("audio", 1.0)


def test_agent_metrics_count_observe_and_forget():
    registry = CollectorRegistry()
    m = AgentMetrics(registry)
    m.consumed("label", 3)
    m.dead_lettered("orphan_label")
    m.set_join_backlog("ptx", 42)
    m.observe_label_delay("ptx", 2 * 3600)
    m.observe_embedding("report", 0.3)
    m.refit_done("ptx", "pneumothorax", 12.5, at=1_800_000_000.0)
    m.drift_detected("ptx", "pneumothorax")
    key = {"model": "ptx", "target_class": "pneumothorax"}
    assert _value(registry, "slice_agent_events_consumed_total", event_type="label") == 3
    assert _value(registry, "slice_agent_dead_lettered_total", reason="orphan_label") == 1
    assert _value(registry, "slice_agent_join_backlog", model="ptx") == 42
    assert _value(registry, "slice_agent_label_delay_seconds_bucket", model="ptx", le="3600.0") == 0
    assert _value(registry, "slice_agent_label_delay_seconds_bucket", model="ptx", le="21600.0") == 1
    assert _value(registry, "slice_agent_embedding_duration_seconds_sum", modality="report") == pytest.approx(
        0.3
    )
    assert _value(registry, "slice_agent_refit_duration_seconds_sum", **key) == 12.5
    assert _value(registry, "slice_agent_refits_total", **key) == 1
    assert _value(registry, "slice_agent_last_refit_timestamp_seconds", **key) == 1_800_000_000.0
    assert _value(registry, "slice_agent_drift_detections_total", **key) == 1
    m.forget("ptx")
    assert _value(registry, "slice_agent_refits_total", **key) is None
    assert _value(registry, "slice_agent_join_backlog", model="ptx") is None
    assert _value(registry, "slice_agent_dead_lettered_total", reason="orphan_label") == 1


def test_thresholds_are_exported_from_the_settings():
    s = ExporterSettings(p_value_threshold=0.01, refit_stale_seconds=900, label_backlog_threshold=123)
    r = Exporter(s, process=False).registry
    assert _value(r, "slice_agent_alert_p_value_threshold") == 0.01
    assert _value(r, "slice_agent_alert_refit_stale_threshold_seconds") == 900
    assert _value(r, "slice_agent_alert_label_backlog_threshold") == 123
    assert _value(r, "slice_agent_alert_error_rate_drift_threshold_ratio") == s.error_rate_drift_threshold
    assert _value(r, "slice_agent_alert_dead_letter_threshold_ratio") == s.dead_letter_threshold


def _exposed_names(exporter: Exporter) -> set[str]:
    return {
        sample.name
        for family in text_string_to_metric_families(generate_latest(exporter.registry).decode())
        for sample in family.samples
    }


@pytest.fixture(scope="module")
def full_exporter() -> Exporter:
    """An exporter with every metric holding at least one sample."""
    exporter = Exporter(ExporterSettings())
    exporter.publish(_report(_slice(1)), {"s-1": (True, 3)})
    m = exporter.agent
    m.set_join_backlog("ptx", 1)
    m.observe_label_delay("ptx", 60)
    m.refit_done("ptx", "pneumothorax", 1.0)
    m.drift_detected("ptx", "pneumothorax")
    m.set_consumer_lag("label", 3)
    m.set_join_waiting(inferences=2, labels=1)
    m.set_unsent_dead_letters(0)
    m.set_oldest_unembedded_age(0.0)
    exporter.publish_warnings([_warning_state()])
    m.set_embedding_drift([EmbeddingDrift("report", 0.2, 0.01, 0.3, 150, 150)])
    return exporter


def _warning_state(new_warnings: int = 1):
    from agent.warn import Estimate, SliceState, WarningState

    est = Estimate(120, 0.3, 0.22, 0.38)
    sl = SliceState("s-1", 1, 0.05, 0.2, 1e-6, True, 1, est, 0.1, 0.33, 0.03)
    return WarningState(
        "ptx", "pneumothorax", 1, Estimate(900, 0.1, 0.08, 0.12), 0.2, 0.11, 0.01, (sl,), new_warnings
    )


def test_warnings_are_exported_per_rank_with_bounded_labels_and_counted():
    from agent.warn import Estimate, SliceState, WarningState

    exporter = Exporter(ExporterSettings(), process=False)
    est = Estimate(50, 0.4, 0.3, 0.5)
    untested = SliceState("s-2", 2, 0.1, None, None, False, 0, Estimate(0, 0.0, 0.0, 1.0), 0.0, None, None)
    bad_rank = SliceState("s-9", 9, 0.1, 0.5, 1e-9, True, 1, est, 0.0, None, None)
    state = _warning_state(new_warnings=2)
    state = dataclasses.replace(state, slices=(*state.slices, untested, bad_rank))
    person = WarningState("Jane Doe", "ptx", 1, est, 0.0, None, None, (), 0)
    exporter.publish_warnings([state, person])
    r = exporter.registry
    at = {"model": "ptx", "target_class": "pneumothorax", "slice_rank": "1"}
    assert r.get_sample_value("slice_agent_slice_estimated_error_ratio", at) == 0.3
    assert r.get_sample_value("slice_agent_slice_estimated_error_lower_ratio", at) == 0.22
    assert r.get_sample_value("slice_agent_slice_estimated_error_upper_ratio", at) == 0.38
    assert r.get_sample_value("slice_agent_slice_share_warning", at) == 1.0
    assert r.get_sample_value("slice_agent_slice_traffic_share_ratio", at) == 0.2
    two = {**at, "slice_rank": "2"}
    # nothing tested and nothing waiting: absent, not zero
    assert r.get_sample_value("slice_agent_slice_share_warning", two) is None
    assert r.get_sample_value("slice_agent_slice_estimated_error_ratio", two) is None
    assert r.get_sample_value("slice_agent_slice_window_share_ratio", two) == 0.1
    assert r.get_sample_value("slice_agent_slice_window_share_ratio", {**at, "slice_rank": "9"}) is None
    key = {"model": "ptx", "target_class": "pneumothorax"}
    assert r.get_sample_value("slice_agent_share_warnings_total", key) == 2.0
    assert r.get_sample_value("slice_agent_estimated_error_ratio", key) == 0.1
    body = generate_latest(r).decode()
    assert "Jane Doe" not in body and "s-1" not in body
    exporter.forget_model("ptx")
    assert r.get_sample_value("slice_agent_estimated_error_ratio", key) is None


def test_embedding_drift_is_a_gauge_per_modality_and_a_modality_left_out_loses_its_series():
    exporter = Exporter(ExporterSettings(), process=False)
    r, m = exporter.registry, exporter.agent
    assert r.get_sample_value("slice_agent_embedding_drift_mmd", {"modality": "report"}) is None
    m.set_embedding_drift(
        [
            EmbeddingDrift("report", 0.2, 0.01, 0.3, 150, 150),
            EmbeddingDrift("image", 0.001, 0.02, 0.0, 80, 90),
        ]
    )
    assert r.get_sample_value("slice_agent_embedding_drift_mmd", {"modality": "report"}) == 0.2
    assert r.get_sample_value("slice_agent_embedding_drift_mmd_threshold", {"modality": "image"}) == 0.02
    m.set_embedding_drift([EmbeddingDrift("report", 0.3, 0.01, 0.3, 150, 150)])
    assert r.get_sample_value("slice_agent_embedding_drift_mmd", {"modality": "report"}) == 0.3
    assert r.get_sample_value("slice_agent_embedding_drift_mmd", {"modality": "image"}) is None
    assert r.get_sample_value("slice_agent_embedding_drift_mmd_threshold", {"modality": "image"}) is None
    with pytest.raises(ValueError, match="modality"):
        m.set_embedding_drift([EmbeddingDrift("Jane Doe", 0.3, 0.01, 0.3, 150, 150)])


def test_every_declared_metric_is_exposed_under_its_declared_names(full_exporter):
    exposed = _exposed_names(full_exporter)
    declared = {name for spec in METRICS.values() for name in spec.series_names}
    assert declared <= exposed
    assert {n for n in exposed if n.startswith("slice_agent_")} <= declared
    for spec in METRICS.values():
        assert spec.name.startswith("slice_agent_") and spec.help
        assert (spec.kind == "counter") == spec.name.endswith("_total")
        assert (spec.kind == "info") == spec.name.endswith("_info")
        assert set(spec.labels) <= ALLOWED_LABELS


def test_serve_binds_loopback_by_default_and_stops():
    exporter = Exporter(ExporterSettings(port=0), process=False)
    exporter.publish(_report(_slice(1)))
    server = exporter.serve()
    try:
        assert server.host == "127.0.0.1" and server.port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as resp:
            body = resp.read().decode()
        assert 'slice_agent_slice_size{model="ptx",slice_rank="1",target_class="pneumothorax"} 40.0' in body
    finally:
        server.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=2)


# ------------------------------------------------------------------------------- Prometheus rules


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO)


def test_prometheus_config_and_rules_check():
    promtool = _require("promtool")
    proc = _run(promtool, "check", "config", "deploy/prometheus/prometheus.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_alert_rule_unit_tests_pass():
    proc = _run(_require("promtool"), "test", "rules", "deploy/prometheus/tests/slice-agent.test.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alert_rule_unit_tests_catch_a_wrong_threshold(tmp_path):
    """The rule tests can fail: with the p-value threshold exported lower, the emerging alert stays quiet."""
    text = (REPO / "deploy/prometheus/tests/slice-agent.test.yml").read_text()
    text = text.replace("../rules/", f"{RULES.parent}/").replace("values: '0.05x60'", "values: '0.0001x60'")
    (tmp_path / "t.yml").write_text(text)
    proc = _run(_require("promtool"), "test", "rules", str(tmp_path / "t.yml"))
    assert proc.returncode == 1 and "SliceAgentEmergingErrorSlice" in proc.stdout + proc.stderr


def test_alertmanager_config_checks():
    proc = _run(_require("amtool"), "check-config", "deploy/alertmanager/alertmanager.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    config = yaml.safe_load((REPO / "deploy/alertmanager/alertmanager.yml").read_text())
    url = config["receivers"][0]["webhook_configs"][0]["url"]
    assert url.startswith("http://127.0.0.1:")


def _rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_every_alert_has_a_for_period_severity_and_summary():
    alerts = [r for r in _rules() if "alert" in r]
    assert {a["alert"] for a in alerts} >= {
        "SliceAgentEmergingErrorSlice",
        "SliceAgentErrorRateDrift",
        "SliceAgentStalled",
        "SliceAgentDeadLetterSpike",
        "SliceAgentLabelBacklog",
        "SliceAgentEmbeddingDrift",
    }
    for a in alerts:
        assert re.fullmatch(r"\d+[smh]", a["for"]), a["alert"]
        assert a["labels"]["severity"] in {"warning", "critical"}
        assert a["annotations"]["summary"]


# ------------------------------------------------------------------------------------------ Grafana


@pytest.fixture(scope="module")
def build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grafana_build", REPO / "grafana" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dashboards(build) -> dict[str, dict[str, Any]]:
    return {
        path.name: json.loads(path.read_text())
        for path in sorted((REPO / "grafana" / "dashboards").glob("*.json"))
    }


def test_generated_files_are_committed_and_up_to_date(build):
    rendered = build.render()
    assert set(rendered) >= {"dashboards/slice-agent-overview.json", "dashboards/slice-agent-health.json"}
    for rel, text in rendered.items():
        committed = REPO / "grafana" / rel
        assert committed.exists(), f"{rel} is not committed: run python grafana/build.py"
        assert committed.read_text() == text, f"{rel} is out of date: run python grafana/build.py"


def _dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            inner = re.fullmatch(r"label_values\((.+), \w+\)", var["definition"])
            assert inner, var["definition"]
            exprs.append(inner.group(1))
    return exprs


def _all_exprs(dashboards: dict[str, dict[str, Any]]) -> list[str]:
    exprs = [e for d in dashboards.values() for e in _dashboard_exprs(d)]
    alerting = yaml.safe_load((REPO / "grafana/provisioning/alerting/slice-agent.yaml").read_text())
    exprs += [
        q["model"]["expr"]
        for g in alerting["groups"]
        for r in g["rules"]
        for q in r["data"]
        if q["datasourceUid"] != "__expr__"
    ]
    return exprs


def _concrete(expr: str) -> str:
    """Grafana's variables replaced by values PromQL can parse."""
    for var, value in (("$__rate_interval", "5m"), ("$__interval", "1m"), ("$__range", "1d")):
        expr = expr.replace(var, value)
    return re.sub(r"\$\w+", "x", expr)


def test_every_promql_expression_parses(dashboards, tmp_path):
    exprs = _all_exprs(dashboards)
    assert len(exprs) > 30
    rules = {
        "groups": [
            {
                "name": "parse",
                "rules": [{"record": f"check:{i}", "expr": _concrete(e)} for i, e in enumerate(exprs)],
            }
        ]
    }
    path = tmp_path / "exprs.yml"
    path.write_text(yaml.safe_dump(rules))
    proc = _run(_require("promtool"), "check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in proc.stdout

    # the check can fail: a broken expression is reported
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "bad", "rules": [{"record": "x:y", "expr": "sum(rate(a[5m])"}]}]})
    )
    assert _run(_require("promtool"), "check", "rules", str(path)).returncode != 0


def _metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return {w for w in words if w.startswith(("slice_agent", "process_")) or ":" in w or w == "up"}


def test_every_metric_a_dashboard_or_rule_names_exists(dashboards, full_exporter):
    exposed = _exposed_names(full_exporter)
    recorded = {r["record"] for r in _rules() if "record" in r}
    used = set()
    for expr in _all_exprs(dashboards) + [r["expr"] for r in _rules()]:
        names = _metric_names(expr)
        used |= names
        missing = names - exposed - recorded - {"up"}
        assert not missing, f"{missing} in {expr!r}"
    # and every metric the overview needs is shown somewhere
    for spec in METRICS.values():
        if spec.source in ("snapshot", "threshold", "warning"):
            assert any(n in used for n in spec.series_names), (
                f"{spec.name} is neither on a dashboard nor in a rule"
            )


def test_panels_do_not_overlap_and_fit_the_grid(dashboards):
    for name, dashboard in dashboards.items():
        cells: dict[tuple[int, int], str] = {}
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), name
        for p in dashboard["panels"]:
            g = p["gridPos"]
            assert g["x"] >= 0 and g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= 24, (name, p["title"])
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in cells, f"{name}: {p['title']!r} overlaps {cells[(x, y)]!r}"
                    cells[(x, y)] = p["title"]


def test_grafana_alerts_mirror_the_prometheus_alerts():
    prom = {r["alert"]: r for r in _rules() if "alert" in r}
    grafana = yaml.safe_load((REPO / "grafana/provisioning/alerting/slice-agent.yaml").read_text())
    rules = {r["title"]: r for g in grafana["groups"] for r in g["rules"]}
    assert set(rules) == set(prom)
    datasource = yaml.safe_load((REPO / "grafana/provisioning/datasources/slice-agent.yaml").read_text())
    uid = datasource["datasources"][0]["uid"]
    for name, rule in rules.items():
        assert rule["for"] == prom[name]["for"]
        assert rule["labels"] == prom[name]["labels"]
        query = next(q for q in rule["data"] if q["refId"] == "A")
        assert query["datasourceUid"] == uid
        assert " ".join(prom[name]["expr"].split()) in query["model"]["expr"]
        assert len(rule["uid"]) <= 40


# --------------------------------------------------------------------------------- cardinality


def _exposition(exporter: Exporter) -> str:
    return generate_latest(exporter.registry).decode()


def test_two_thousand_junk_model_names_give_a_bounded_exposition_and_real_models_stay():
    exporter = Exporter(ExporterSettings(max_models=10, models=("cxr",)), process=False)
    m = exporter.agent
    exporter.publish(_report(_slice(1), model="ptx"))  # a real model that came first
    m.set_join_backlog("ptx", 5)
    baseline = len(_exposition(exporter).splitlines())
    for i in range(2000):
        junk = f"junk-{i:04d}"
        m.set_join_backlog(junk, 1)
        m.observe_label_delay(junk, 60)
        m.refit_done(junk, "x", 1.0)
        m.drift_detected(junk, f"class-{i}")
        exporter.publish(_report(_slice(1), model=junk, target=f"c{i}"))
    exporter.publish(_report(_slice(1), model="cxr"))  # configured: never crowded out
    m.set_join_backlog("cxr", 2)
    text = _exposition(exporter)
    lines = text.splitlines()
    assert len(lines) < baseline + 1200, len(lines)  # 64,111 lines before the bound
    models = set(re.findall(r'model="([^"]+)"', text))
    assert {"ptx", "cxr"} <= models and len(models) <= 10 + 1
    reg = exporter.registry
    assert reg.get_sample_value(
        "slice_agent_window_samples", {"model": "ptx", "target_class": "pneumothorax"}
    )
    assert reg.get_sample_value(
        "slice_agent_window_samples", {"model": "cxr", "target_class": "pneumothorax"}
    )
    assert reg.get_sample_value("slice_agent_join_backlog", {"model": "cxr"}) == 2
    overflow = sum(
        v
        for fam in (
            "slice_agent_join_backlog",
            "slice_agent_window_samples",
            "slice_agent_label_delay_seconds",
        )
        if (v := reg.get_sample_value("slice_agent_label_overflow_total", {"family": fam})) is not None
    )
    assert overflow >= 3 * (2000 - 9)


def test_forget_model_removes_its_series_and_frees_its_slot():
    exporter = Exporter(ExporterSettings(max_models=1), process=False)
    m, reg = exporter.agent, exporter.registry
    exporter.publish(_report(_slice(1), model="old"))
    m.set_join_backlog("old", 3)
    m.refit_done("old", "pneumothorax", 2.0)
    m.set_join_backlog("new", 1)  # no slot
    assert reg.get_sample_value("slice_agent_join_backlog", {"model": "new"}) is None
    assert (
        reg.get_sample_value("slice_agent_label_overflow_total", {"family": "slice_agent_join_backlog"}) == 1
    )
    exporter.forget_model("old")
    text = _exposition(exporter)
    assert 'model="old"' not in text
    m.set_join_backlog("new", 1)
    exporter.publish(_report(_slice(1), model="new"))
    assert reg.get_sample_value("slice_agent_join_backlog", {"model": "new"}) == 1
    assert reg.get_sample_value("slice_agent_slices", {"model": "new", "target_class": "pneumothorax"}) == 1


def test_invalid_label_values_are_counted_not_exported():
    exporter = Exporter(process=False)
    exporter.agent.set_join_backlog("Jane Doe 12/03/1961", 1)
    exporter.agent.refit_done("ptx", "MRN 0012345 / Doe", 1.0)
    text = _exposition(exporter)
    assert "Jane" not in text and "MRN" not in text
    reg = exporter.registry
    assert (
        reg.get_sample_value("slice_agent_label_overflow_total", {"family": "slice_agent_join_backlog"}) == 1
    )
    assert (
        reg.get_sample_value(
            "slice_agent_label_overflow_total", {"family": "slice_agent_refit_duration_seconds"}
        )
        == 1
    )
    with pytest.raises(ValueError, match="metric family"):
        exporter.agent.overflow("no_such_family")


def test_backlog_gauges_the_stream_sets():
    exporter = Exporter(process=False)
    m, reg = exporter.agent, exporter.registry
    assert reg.get_sample_value("slice_agent_consumer_lag_messages", {"event_type": "label"}) == 0
    m.set_consumer_lag("label", 1234)
    m.set_join_waiting(inferences=40, labels=7)
    m.set_unsent_dead_letters(12)
    m.set_oldest_unembedded_age(95.5)
    assert reg.get_sample_value("slice_agent_consumer_lag_messages", {"event_type": "label"}) == 1234
    assert reg.get_sample_value("slice_agent_join_waiting_events", {"event_type": "inference"}) == 40
    assert reg.get_sample_value("slice_agent_join_waiting_events", {"event_type": "label"}) == 7
    assert reg.get_sample_value("slice_agent_dead_letters_unsent") == 12
    assert reg.get_sample_value("slice_agent_oldest_unembedded_age_seconds") == 95.5
    m.set_oldest_unembedded_age(-3)
    assert reg.get_sample_value("slice_agent_oldest_unembedded_age_seconds") == 0
    with pytest.raises(ValueError, match="event type"):
        m.set_consumer_lag("label-events-junk", 1)
    assert reg.get_sample_value("slice_agent_alert_consumer_lag_threshold") == 50_000
