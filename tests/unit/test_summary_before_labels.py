"""The summary's section "before the labels", read from the store of a simulated stream in which a
weak group grows from 5 % to 25 % of the traffic while labels come ten days late
(agent/simulate/early.py, seed 0; the same run as tests/unit/test_early_warning_stream.py).

Measured: the first warning is raised on Tuesday 06:00 of 2026-W11 (day 8.25 from the start of the
growth, for Monday's bucket), the labeled path's error-rate drift confirms it 12.75 days later; of
the week's inferences, 536 are labeled by then: estimated error 12.3 % against 14.0 % realised
(absolute error 1.7 points), and in slice rank 1 (57 labeled) 39.6 % against 36.8 %.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from typer.testing import CliRunner

from agent.cli import app
from agent.simulate.early import DAY, T0, EarlySpec, run_early_warning
from agent.store import Store
from agent.summary import build_summary, write_summary
from agent.summary.early import before_labels
from agent.weeks import week_of


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("early")
    path = workdir / "state.sqlite"
    run = run_early_warning(
        EarlySpec(),
        workdir,
        seed=0,
        stop_when_confirmed=True,
        overrides={"stream": {"store_path": str(path)}},
    )
    assert run.warned_at is not None and run.confirmed_at is not None
    return run, path


def test_the_weeks_warnings_lead_and_estimates_come_from_the_store(simulated):
    run, path = simulated
    week = week_of(T0 + timedelta(days=run.warned_at))
    store = Store(path)
    try:
        before = before_labels(store, week)
        earlier = before_labels(store, week_of(T0 - timedelta(days=7)))
    finally:
        store.close()
    assert before.watched == 1
    assert before.warnings and all(w.share > w.window_share for w in before.warnings)
    assert all(T0.timestamp() <= w.bucket.timestamp() < T0.timestamp() + 21 * DAY for w in before.warnings)
    (lead,) = before.leads
    # the first warning of the week is the run's first warning; labels confirmed it days later
    assert lead.warned_at == T0 + timedelta(days=run.warned_at)
    assert lead.days is not None and lead.days == pytest.approx(run.lead_days) and lead.days >= 5
    overall = before.estimates[0]
    assert overall.rank is None and overall.n_labeled >= 10
    assert overall.abs_error is not None and overall.abs_error < 0.1
    assert any(c.rank is not None and c.n_labeled > 0 for c in before.estimates)
    # a week without warnings: none raised, no lead, estimates still checked where labeled
    assert earlier.warnings == () and earlier.leads == ()


def test_the_summary_shows_the_section_and_no_identifier(simulated, tmp_path):
    run, path = simulated
    week = week_of(T0 + timedelta(days=run.warned_at))
    (tmp_path / "reports").mkdir()
    args = ["summary", "--week", week, "--reports", str(tmp_path / "reports"), "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, [*args, "--store", str(path)])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "out" / week
    markdown = (folder / "summary.md").read_text()
    page = (folder / "summary.html").read_text()
    assert "## Before the labels: warnings raised (1 model and class pair(s) watched)" in markdown
    assert "| cxr-early | finding |" in markdown
    assert "days |" in markdown and "not confirmed yet" not in markdown
    store = Store(path)
    try:
        ids = {r.slice_id for r in store.buckets("cxr-early", "finding")}
        studies = {o.study_uid for o in store.live_outcomes("cxr-early", "finding", float("-inf"))}
    finally:
        store.close()
    for text in (markdown, page):
        assert "1.2.826.0.1" not in text, "study uids are identifiers"
        assert not any(i in text for i in ids), "slice ids are hashes of study uids"
        assert not any(s in text for s in list(studies)[:200])
        assert str(T0.year) + "-03-" not in text, "no calendar date of a case"


def test_without_a_store_there_is_no_section_and_an_empty_store_says_none(tmp_path):
    summary = build_summary("2026-W48", [])
    markdown = write_summary(summary, tmp_path / "a").markdown.read_text()
    assert "Before the labels" not in markdown
    store = Store(tmp_path / "empty.sqlite")
    try:
        empty = before_labels(store, "2026-W48")
    finally:
        store.close()
    markdown = write_summary(build_summary("2026-W48", [], before=empty), tmp_path / "b").markdown.read_text()
    assert "## Before the labels: warnings raised (0 model and class pair(s) watched)" in markdown
    assert markdown.count("none") >= 3
