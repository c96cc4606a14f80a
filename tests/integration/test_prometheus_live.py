"""Live: a replay audit with a planted emerging slice, scraped by Debian's Prometheus, alerted through
Alertmanager to a webhook; and nothing that identifies a patient in any metric, alert, summary or log.

One audit (a generated stream full of invented names, record numbers and dates, with a planted
support-device failure) runs as a user runs it, ``slice-agent audit --pushgateway``, at INFO log level.
``slice-agent serve-metrics`` then serves its report, the slice marked emerging through the tracking
file that the stream's slice tracking will provide. Prometheus scrapes it with the committed rules,
their ``for`` shortened (see ``prom_fixtures``), and Alertmanager posts to a receiver in this test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prom_fixtures import (
    Daemon,
    Webhook,
    alertmanager,
    alertmanager_config,
    get_json,
    get_text,
    prometheus,
    prometheus_config,
    pushgateway,
    rules_for_test,
    wait_until,
    webhook,
)
from prometheus_client.parser import text_string_to_metric_families

from agent.simulate import StreamSpec, generate_stream, write_jsonl
from agent.summary import TimedReport, build_summary, read_report, write_summary

SPEC = StreamSpec(n_studies=400, failure="devices", seed=3, slice_error=0.9, device_rate=0.35)
SMALL = "audit:\n  pca_components: 16\n"
ALERT = "SliceAgentEmergingErrorSlice"
SERVE = (sys.executable, "-m", "agent.cli", "serve-metrics")


def _cli(*args: str, cwd: Path, **kw: Any) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SLICE_AGENT_LOG_LEVEL": "INFO"}
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, **kw
    )


# ------------------------------------------------------------------------------------- identifiers


def identifiers(events: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Every identifier the stream carries, by kind: names, numbers, dates, uids, event ids."""
    names: set[str] = set()
    numbers: set[str] = set()
    dates: set[str] = set()
    uids: set[str] = set()
    for e in events:
        uids.add(e["study_uid"])
        meta = e.get("metadata") or {}
        if "PatientName" in meta:
            names.update(meta["PatientName"].split("^"))
            numbers.add(meta["PatientID"])
            dates.add(meta["StudyDate"])
        text = e.get("text", "")
        names.update(re.findall(r"Patient: (\w+) (\w+)", text)[0] if "Patient:" in text else ())
        names.update(re.findall(r"Dr\. (\w+)", text))
        numbers.update(re.findall(r"MRN: (\d+)", text))
        numbers.update(re.findall(r"Accession: (A\d+)", text))
        dates.update(re.findall(r"\d{4}-\d{2}-\d{2}", text))
    assert len(names) > 20 and len(numbers) > 500 and len(dates) > 20, (
        "the stream should be full of identifiers"
    )
    return {"name": names, "number": numbers, "date": dates, "uid": uids}


def leaks(text: str, ids: dict[str, set[str]]) -> list[str]:
    """Identifiers found in ``text`` (names case-insensitively, as whole words)."""
    found = [n for n in ids["name"] if re.search(rf"\b{re.escape(n)}\b", text, re.IGNORECASE)]
    # numbers and dates not inside a longer run of digits (nor after a decimal point: sample values)
    found += [x for x in ids["number"] | ids["date"] if re.search(rf"(?<![\d.]){re.escape(x)}(?!\d)", text)]
    found += [u for u in ids["uid"] if u in text]
    if "1.2.826.0.1.3680043" in text:
        found.append("study uid root 1.2.826.0.1.3680043")
    found += [p for p in ("inf-", "rep-", "lab-") if re.search(rf"\b{p}\d+-\d+", text)]
    return found


def labels_and_names(exposition: str) -> str:
    """Metric names, label names and label values of a text exposition, without sample values."""
    out = []
    for family in text_string_to_metric_families(exposition):
        out.append(f"{family.name} {family.documentation}")
        for sample in family.samples:
            out.append(sample.name + " " + " ".join(f"{k}={v}" for k, v in sorted(sample.labels.items())))
    return "\n".join(out)


def log_messages(stderr: str) -> str:
    """The message part of INFO and higher log lines (their timestamps are today's date)."""
    pattern = re.compile(r"^\S+ \S+ (?:INFO|WARNING|ERROR|CRITICAL) [\w.]+: (.*)$")
    return "\n".join(m.group(1) for line in stderr.splitlines() if (m := pattern.match(line)))


# ----------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("live")


@pytest.fixture(scope="module")
def gateway(workdir: Path) -> Iterator[Daemon]:
    with pushgateway(workdir) as d:
        yield d


@pytest.fixture(scope="module")
def audited(workdir: Path, gateway: Daemon) -> dict[str, Any]:
    """The replay audit, run through the CLI with --pushgateway, and the stream's identifiers."""
    events, planted = generate_stream(SPEC)
    write_jsonl(events, workdir / "events.jsonl")
    (workdir / "small.yaml").write_text(SMALL, encoding="utf-8")
    host = gateway.url.removeprefix("http://")
    proc = _cli(
        "audit",
        "events.jsonl",
        "--out",
        "report.json",
        "--modalities",
        "report,metadata",
        "--config",
        "small.yaml",
        "--pushgateway",
        host,
        cwd=workdir,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((workdir / "report.json").read_text(encoding="utf-8"))
    assert report["slices"], "the planted support-device slice was not found: the live test needs one"
    first = report["slices"][0]
    assert sum(planted[m["study_uid"]] for m in first["members"][:10]) >= 8
    tracking = {first["id"]: {"emerging": True, "age_refits": 4}}
    (workdir / "tracking.json").write_text(json.dumps(tracking), encoding="utf-8")
    ids = identifiers(events)
    raw = leaks(json.dumps(events[:30]), ids)
    assert {"name", "number", "date", "uid"} <= {kind for kind, values in ids.items() if set(raw) & values}, (
        "the leak detector must flag every kind of identifier in the raw stream"
    )
    return {"report": report, "stderr": proc.stderr, "ids": ids}


@pytest.fixture(scope="module")
def agent(workdir: Path, audited: dict[str, Any]) -> Iterator[str]:
    """``slice-agent serve-metrics`` over the audit's report; yields its host:port."""
    env = {**os.environ, "SLICE_AGENT_LOG_LEVEL": "INFO"}
    proc = subprocess.Popen(
        [*SERVE, "report.json", "--tracking", "tracking.json", "--port", "0"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"on http://(127\.0\.0\.1:\d+)/metrics", line)
        assert match, (
            f"serve-metrics did not start: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
        )
        yield match.group(1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        assert proc.returncode == 0, "serve-metrics should stop cleanly on SIGTERM"


@pytest.fixture(scope="module")
def stack(workdir: Path, agent: str, gateway: Daemon) -> Iterator[tuple[Daemon, Daemon, Webhook]]:
    with webhook() as hook:
        am_config = alertmanager_config(workdir, hook.url)
        with alertmanager(workdir, am_config) as am:
            config = prometheus_config(
                workdir,
                agent=agent,
                pushgateway=gateway.url.removeprefix("http://"),
                alertmanager=am.url.removeprefix("http://"),
                rules=rules_for_test(workdir),
            )
            with prometheus(workdir, config) as prom:
                yield prom, am, hook


# -------------------------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_emerging_slice_alert_fires_and_reaches_the_webhook(stack, audited):
    prom, _, hook = stack
    report = audited["report"]

    def firing() -> list[dict[str, Any]]:
        alerts = get_json(prom.url + "/api/v1/alerts")["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == ALERT and a["state"] == "firing"]

    alerts = wait_until(firing, timeout=60, what=f"{ALERT} to fire in Prometheus")
    assert len(alerts) == 1, alerts
    labels = alerts[0]["labels"]
    assert labels["job"] == "slice-agent", "only the tracked (served) slice is emerging, not the pushed one"
    assert (labels["model"], labels["target_class"], labels["slice_rank"]) == (
        report["model"],
        str(report["target_class"]),
        "1",
    )
    first_tokens = [t["token"] for t in report["slices"][0]["tokens"]][:5]
    assert ", ".join(first_tokens) in alerts[0]["annotations"]["description"]

    def delivered() -> list[dict[str, Any]]:
        return [a for a in hook.alerts() if a["labels"].get("alertname") == ALERT and a["status"] == "firing"]

    received = wait_until(delivered, timeout=60, what=f"Alertmanager to post {ALERT} to the webhook")
    assert received[0]["labels"]["slice_rank"] == "1"
    assert received[0]["annotations"]["summary"].startswith("Emerging error slice for ")
    other = {a["labels"]["alertname"] for a in hook.alerts()} - {ALERT}
    assert not other, f"no other alert should fire on a healthy replay, got {other}"


@pytest.mark.slow
def test_prometheus_scrapes_slices_tokens_and_the_pushed_audit(stack, audited):
    prom, _, _ = stack
    report = audited["report"]

    def query(expr: str) -> list[dict[str, Any]]:
        url = prom.url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        return list(get_json(url)["data"]["result"])

    tokens = wait_until(
        lambda: query('slice_agent_slice_tokens_info{job="slice-agent"}'), timeout=30, what="tokens series"
    )
    assert (
        tokens[0]["metric"]["tokens"].split(", ") == [t["token"] for t in report["slices"][0]["tokens"]][:5]
    )
    pushed = wait_until(
        lambda: query('slice_agent_slice_size{job="slice_agent_audit"}'), timeout=30, what="pushed slice size"
    )
    assert float(pushed[0]["value"][1]) == report["slices"][0]["size"]
    ratio = query('slice_agent_window_error_ratio{job="slice-agent"}')
    assert float(ratio[0]["value"][1]) == pytest.approx(report["window"]["n_errors"] / report["window"]["n"])
    emerging = query("slice_agent_slice_emerging == 1")
    assert [e["metric"]["job"] for e in emerging] == ["slice-agent"]
    consumed = query('slice_agent_events_consumed_total{job="slice_agent_audit",event_type="label"}')
    assert float(consumed[0]["value"][1]) == SPEC.n_studies


@pytest.mark.slow
def test_no_identifier_in_metrics_alerts_summary_or_info_logs(stack, audited, agent, gateway, workdir):
    prom, _, hook = stack
    ids = audited["ids"]

    # every series Prometheus holds from the agent and the pushed audit: names, label names and values
    series = get_json(
        prom.url + "/api/v1/series?" + urllib.parse.urlencode({"match[]": '{__name__=~"slice_agent.+"}'})
    )
    assert len(series["data"]) > 20
    blobs = {
        "prometheus series": json.dumps(series["data"]),
        "agent /metrics": labels_and_names(get_text(f"http://{agent}/metrics")),
        "pushgateway /metrics": labels_and_names(get_text(gateway.url + "/metrics")),
        "webhook alerts": json.dumps([{k: a[k] for k in ("labels", "annotations")} for a in hook.alerts()]),
        "INFO log of the audit": log_messages(audited["stderr"]),
    }
    assert "auditing pneumothorax" in blobs["INFO log of the audit"], "INFO logs were not captured"

    # the weekly summary of the audit
    timed = read_report(workdir / "report.json")
    week = timed.at.strftime("%G-W%V")
    earlier = TimedReport(timed.at - timedelta(hours=1), timed.report)
    files = write_summary(build_summary(week, [earlier, timed]), workdir / "summary")
    page = files.html.read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") >= 2
    blobs["summary HTML"] = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    blobs["summary Markdown"] = files.markdown.read_text(encoding="utf-8")

    found = {where: leaks(text, ids) for where, text in blobs.items()}
    assert not any(found.values()), {k: v[:10] for k, v in found.items() if v}
