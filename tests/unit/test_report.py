"""The slice report's two forms: local (with members, private file) and export (no study uid)."""

from __future__ import annotations

import json
import stat

import pytest
from prometheus_client import CollectorRegistry

from agent.errors import AgentError
from agent.exporter import SliceCollector
from agent.report import EXPORT_MEMBERS, Member, SliceReport, SliceResult, TokenResult, Window

UIDS = [f"1.2.826.0.1.3680043.77.{i}" for i in range(30)]


def _report() -> SliceReport:
    members = tuple(Member(u, 1.0 - i / 100) for i, u in enumerate(UIDS))
    s = SliceResult(1, "s-0a1b2c3d4e", 30, 0.6, 0.1, 1e-4, 0.9, 3, members, (TokenResult("tube", 0.2, 0.1),))
    return SliceReport(
        "ptx",
        "pneumothorax",
        ("report",),
        Window(200, 30, "2026-11-23T08:00:00Z", "2026-11-29T20:00:00Z"),
        (s,),
        (TokenResult("tube", 0.1),),
    )


def test_export_form_carries_no_study_uid_and_no_study_time():
    text = json.dumps(_report().to_dict(export=True))
    assert not any(u in text for u in UIDS) and "study_uid" not in text
    assert "2026-11-2" not in text
    data = json.loads(text)
    probabilities = [m["probability"] for m in data["slices"][0]["members"]]
    assert probabilities == [1.0 - i / 100 for i in range(EXPORT_MEMBERS)]
    assert data["slices"][0]["tokens"][0]["token"] == "tube" and data["window"]["n"] == 200


def test_local_form_keeps_every_member_and_reads_back():
    report = _report()
    data = report.to_dict()
    assert [m["study_uid"] for m in data["slices"][0]["members"]] == UIDS
    assert SliceReport.from_dict(data) == report
    exported = SliceReport.from_dict(report.to_dict(export=True))
    assert exported == report.for_export() and exported.slices[0].members[0].study_uid == ""


def test_report_file_is_private_even_over_an_older_readable_one(tmp_path):
    path = tmp_path / "REPORT.json"
    path.write_text("old")
    path.chmod(0o644)
    _report().write_json(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["slices"][0]["members"][0]["study_uid"] == UIDS[0]
    fresh = tmp_path / "new.json"
    _report().write_json(fresh, export=True)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600 and UIDS[0] not in fresh.read_text()


def test_the_metrics_collector_holds_no_member_uid():
    collector = SliceCollector()
    CollectorRegistry().register(collector)
    collector.publish(_report())
    (held,) = collector.reports.values()
    assert all(m.study_uid == "" for s in held.slices for m in s.members)


@pytest.mark.parametrize(
    ("where", "value"),
    [
        (("slices", 0, "tokens", 0, "token"), 7),  # every scrape that published it failed
        (("window", "end"), "24/11/2026 09:00"),
        (("window", "end"), 1764000000),
        (("model",), ["cxr"]),
    ],
)
def test_a_corrupt_report_file_is_refused_as_one(where, value):
    """A report file edited by hand or corrupt is refused when read, with the error every
    reader of reports handles, not later in a scrape, a summary or a plot."""
    data = _report().to_dict()
    inner = data
    for key in where[:-1]:
        inner = inner[key]
    inner[where[-1]] = value
    with pytest.raises(AgentError, match="not a slice report"):
        SliceReport.from_dict(data)
