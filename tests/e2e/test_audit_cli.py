"""`slice-agent audit` end to end, as a user runs it: a subprocess over a generated event file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.simulate import StreamSpec, generate_stream, write_jsonl

DEVICE_WORDS = {
    "tube",
    "line",
    "lines",
    "drain",
    "catheter",
    "pacemaker",
    "leads",
    "lead",
    "tip",
    "picc",
    "svc",
}


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def devices_audit(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("audit")
    events, planted = generate_stream(StreamSpec(n_studies=800, failure="devices", seed=3, bad_lines=True))
    write_jsonl(events, tmp / "events.jsonl", garbage=True)
    proc = _run(
        "audit",
        str(tmp / "events.jsonl"),
        "--out",
        str(tmp / "report.json"),
        "--modalities",
        "report,metadata",
        "--problems",
        str(tmp / "problems.jsonl"),
        cwd=tmp,
    )
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads((tmp / "report.json").read_text()), planted, tmp


@pytest.mark.slow
def test_planted_group_is_the_rank_one_slice(devices_audit):
    _, report, planted, _ = devices_audit
    assert report["slices"], "no slice reported"
    first = report["slices"][0]
    assert first["rank"] == 1 and first["p_value"] < 0.05
    top10 = [m["study_uid"] for m in first["members"][:10]]
    assert sum(planted[u] for u in top10) >= 9
    probabilities = [m["probability"] for m in first["members"]]
    assert probabilities == sorted(probabilities, reverse=True)
    tokens = [t["token"] for t in first["tokens"]]
    assert DEVICE_WORDS & set(tokens[:5]), tokens


@pytest.mark.slow
def test_report_follows_the_contract(devices_audit):
    _, report, _, _ = devices_audit
    assert report["model"] == "pneumothorax" and report["target_class"] == "pneumothorax"
    assert report["modalities"] == ["report", "metadata"]
    assert report["window"]["n"] == 800 and 0 < report["window"]["n_errors"] < 800
    assert report["r_attr_space"] == "text"
    for s in report["slices"]:
        assert {
            "rank",
            "id",
            "size",
            "error_rate",
            "rest_error_rate",
            "p_value",
            "error_precision_at_10",
            "members",
            "tokens",
        } <= set(s)
        assert s["error_rate"] > s["rest_error_rate"]
        assert all(t["r_attr"] is not None for t in s["tokens"])


@pytest.mark.slow
def test_bad_input_is_reported_and_the_rest_audited(devices_audit):
    proc, report, _, tmp = devices_audit
    problems = [json.loads(line) for line in (tmp / "problems.jsonl").read_text().splitlines()]
    reasons = {p["reason"] for p in problems}
    assert {
        "invalid_json",
        "missing_field",
        "wrong_type",
        "orphan_label",
        "unknown_class",
        "unknown_type",
    } <= reasons
    assert all(p["where"].startswith("line ") for p in problems)
    assert "invalid_json" in proc.stderr and "line 2406" in proc.stderr
    assert report["window"]["n"] == 800  # every good study was still audited


@pytest.mark.slow
def test_no_identifier_reaches_the_report(devices_audit):
    _, report, _, tmp = devices_audit
    events = [json.loads(line) for line in (tmp / "events.jsonl").read_text().splitlines()[:2400]]
    names = set()
    for e in events:
        meta = e.get("metadata") or {}
        if "PatientName" in meta:
            names.update(part.lower() for part in meta["PatientName"].split("^"))
    words = {t["token"] for s in report["slices"] for t in s["tokens"]} | {
        t["token"] for t in report["baseline_tokens"]
    }
    assert not words & names
    assert not {"whitfield", "ramanathan", "castellano", "brennan", "oyelaran", "lindqvist"} & words
    assert all(part.isalpha() for w in words for part in w.split(" "))


@pytest.mark.slow
def test_one_failure_is_one_finding_named_by_validated_words(devices_audit):
    _, report, _, _ = devices_audit
    assert len(report["slices"]) > 1, "nothing to merge on this draw"
    (finding,) = report["findings"]
    assert sorted(finding["sub_slices"]) == sorted(s["id"] for s in report["slices"])
    assert finding["rank"] == 1 and finding["id"].startswith("f-")
    assert finding["p_value"] == min(s["p_value"] for s in report["slices"])
    assert DEVICE_WORDS & {t["token"] for t in finding["tokens"]}
    for s in report["slices"]:
        for t in s["tokens"]:  # every shown name passed its held-out check
            assert t["auroc"] > 0.5 and t["p_value"] <= 0.05
        for t in s.get("rejected_tokens", []):
            assert t["auroc"] <= 0.5 or t["p_value"] > 0.05


@pytest.mark.slow
def test_two_planted_failures_are_never_one_finding(tmp_path):
    spec = StreamSpec(n_studies=1200, failure=("devices", "lateral"), seed=5)
    events, _ = generate_stream(spec)
    write_jsonl(events, tmp_path / "events.jsonl")
    proc = _run(
        "audit",
        str(tmp_path / "events.jsonl"),
        "--out",
        str(tmp_path / "r.json"),
        "--modalities",
        "report,metadata",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    by_id = {s["id"]: s for s in report["slices"]}
    classes = [{by_id[i]["slice_class"] for i in f["sub_slices"]} for f in report["findings"]]
    # Devices fail on negatives ("rest"), lateral views on positives: no finding mixes them.
    assert all(len(c) == 1 for c in classes), classes
    lateral = [f for f, c in zip(report["findings"], classes, strict=True) if c == {"pneumothorax"}]
    devices = [f for f, c in zip(report["findings"], classes, strict=True) if c == {"rest"}]
    assert len(lateral) == 1 and "lateral" in {t["token"] for t in lateral[0]["tokens"]}
    assert devices and all(DEVICE_WORDS & {t["token"] for t in f["tokens"]} for f in devices)


@pytest.mark.slow
def test_lateral_failure_named_from_metadata(tmp_path):
    events, planted = generate_stream(StreamSpec(n_studies=1500, failure="lateral", seed=5, slice_error=0.8))
    write_jsonl(events, tmp_path / "events.jsonl")
    proc = _run(
        "audit",
        str(tmp_path / "events.jsonl"),
        "--out",
        str(tmp_path / "r.json"),
        "--modalities",
        "metadata",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["slices"]
    first = report["slices"][0]
    assert sum(planted[m["study_uid"]] for m in first["members"][:10]) >= 9
    assert "lateral" in [t["token"] for t in first["tokens"]]


@pytest.mark.slow
def test_a_file_is_audited_whatever_its_dates(tmp_path):
    """A file has no "now": a stream dated decades ahead of the clock is joined and audited, where
    the streaming agent dead-letters events more than ``stream.max_future_seconds`` ahead."""
    from datetime import UTC, datetime

    events, _ = generate_stream(StreamSpec(n_studies=120, seed=1, start=datetime(2099, 1, 4, tzinfo=UTC)))
    write_jsonl(events, tmp_path / "e.jsonl")
    args = ["audit", str(tmp_path / "e.jsonl"), "--out", str(tmp_path / "r.json"), "--modalities", "metadata"]
    proc = _run(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "future_event" not in proc.stdout + proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["window"]["n"] >= 100 and report["window"]["end"].startswith("2099")


def test_unknown_model_is_a_clear_error(tmp_path):
    events, _ = generate_stream(StreamSpec(n_studies=30, seed=1))
    write_jsonl(events, tmp_path / "e.jsonl")
    proc = _run(
        "audit", str(tmp_path / "e.jsonl"), "--out", str(tmp_path / "r.json"), "--model", "nope", cwd=tmp_path
    )
    assert proc.returncode == 2 and "model 'nope' not in the stream" in proc.stderr
