"""Embedding drift from the stream: the weekly samples the agent keeps, the gauge it exports, and the
summary that reads the same samples from the store.

The stream: two ISO weeks of chest radiographs (DICOM metadata and a report each, 150 studies a
week), embedded on arrival by the simulation's word embedder. With ``shift="report"`` the reports
of week 2 are worded differently (portable films with lines and tubes); the metadata do not move.
Every study of a week is kept in these tests (the sample size exceeds the traffic), so the figures
are the same on every run. Over seeds 0 to 9 of the stream without a shift, the statistic (alpha
0.01 per modality and week) raised 1 false alarm in 20 comparisons (seed 2, metadata; 0.2
expected); the shifted report modality drifted at each of the seeds 0 to 3.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import generate_latest
from typer.testing import CliRunner

from agent.cli import app
from agent.config import ExporterSettings, SummarySettings, load_settings
from agent.exporter import Exporter
from agent.simulate.early import WordEmbedder
from agent.store import EmbeddedCase
from agent.stream.ingest import Message
from agent.stream.sidecar import Sidecar
from agent.weeks import week_of

WEEK1 = datetime(2026, 11, 16, tzinfo=UTC)  # 2026-W47
PER_WEEK = 150
BEFORE = (
    "PA chest. Lungs are clear. No effusion or pneumothorax.",
    "Heart size normal. No focal consolidation. Clear lungs.",
    "Mild atelectasis at the left base. No pneumothorax.",
    "Clear lungs. Normal cardiomediastinal silhouette.",
)
AFTER = (
    "Portable supine film. Central line tip in the SVC. Endotracheal tube above the carina.",
    "Portable AP. Nasogastric tube below the diaphragm. Right chest tube in place.",
)


def _events(seed: int, shift: str | None) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(2 * PER_WEEK):
        week = i // PER_WEEK
        at = WEEK1 + timedelta(days=7 * week, seconds=float(rng.uniform(3600, 6.5 * 86400)))
        stamp = at.strftime("%Y-%m-%dT%H:%M:%SZ")
        uid = f"1.2.826.0.7.{seed}.{i}"
        moved = shift == "report" and week == 1 and rng.random() < 0.6
        text = str(rng.choice(AFTER if moved else BEFORE))
        meta = {
            "Modality": "CR" if rng.random() < 0.6 else "DX",
            "ViewPosition": str(rng.choice(["PA", "AP", "LL"], p=[0.5, 0.35, 0.15])),
            "Manufacturer": str(rng.choice(["Philips", "Siemens", "Agfa"])),
            "PatientSex": "F" if rng.random() < 0.5 else "M",
        }
        out.append(
            {
                "type": "inference",
                "event_id": f"i{i}",
                "study_uid": uid,
                "model": "cxr",
                "prediction": "none",
                "score": 0.9,
                "timestamp": stamp,
                "metadata": meta,
            }
        )
        out.append(
            {"type": "report", "event_id": f"r{i}", "study_uid": uid, "text": text, "timestamp": stamp}
        )
    return out


def _sidecar(tmp_path: Path, store: str = ":memory:", **summary: Any) -> Sidecar:
    settings = load_settings(
        overrides={
            "modalities": ["metadata", "report"],
            "stream": {
                "store_path": store,
                "reports_dir": str(tmp_path / "reports"),
                "dead_letter_path": str(tmp_path / "dead-letters.jsonl"),
                "embed_on_arrival": False,
                "max_future_seconds": 1e12,
                "label_delay_seconds": 60 * 86400.0,
            },
            # every study of a week is kept: the figures do not depend on the store's random key
            "summary": {"embedding_samples": 200, "drift_max_samples": 200, **summary},
        }
    )
    exporter = Exporter(ExporterSettings(), process=False)
    return Sidecar(settings, WordEmbedder(), exporter=exporter, clock=lambda: WEEK1.timestamp() + 14 * 86400)


def _stream(sidecar: Sidecar, events: list[dict[str, Any]]) -> None:
    messages = [Message(f"test:{e['event_id']}", json.dumps(e).encode()) for e in events]
    for chunk in range(0, len(messages), 200):
        sidecar.ingest(messages[chunk : chunk + 200])
    sidecar.arrival.drain()


def _gauges(sidecar: Sidecar) -> dict[str, tuple[float, float]]:
    assert sidecar.exporter is not None
    r = sidecar.exporter.registry
    out = {}
    for modality in ("image", "report", "metadata"):
        value = r.get_sample_value("slice_agent_embedding_drift_mmd", {"modality": modality})
        limit = r.get_sample_value("slice_agent_embedding_drift_mmd_threshold", {"modality": modality})
        if value is not None and limit is not None:
            out[modality] = (value, limit)
    return out


# ------------------------------------------------------------------------------------------ store


def test_weekly_samples_are_bounded_uniform_idempotent_and_merge_over_models(make_store):
    store = make_store()
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(400, 4)).astype(np.float32)
    cases = [EmbeddedCase("a", "image", "2026-W48", f"1.2.3.{i}", vectors[i]) for i in range(400)]
    kept = store.record_embedding_samples(cases[:250], 50) + store.record_embedding_samples(cases[250:], 50)
    assert 50 <= kept < 400
    again = store.record_embedding_samples(cases, 50)  # a batch embedded again adds nothing
    assert again == 0
    sample = store.embedding_sample("image", "2026-W48", 1000)
    assert sample.shape == (50, 4) and sample.dtype == np.float32
    # the kept rows are the 50 lowest priorities of all 400, whatever the order they came in
    fresh = make_store()
    fresh._name_key = store._name_key
    fresh.record_embedding_samples(list(reversed(cases)), 50)
    assert np.array_equal(
        np.sort(fresh.embedding_sample("image", "2026-W48", 1000), axis=0), np.sort(sample, axis=0)
    )
    # a second model seeing the same studies adds nothing to the pooled sample; other studies do
    store.record_embedding_samples([EmbeddedCase("b", *c[1:]) for c in map(_fields, cases)], 50)
    assert np.array_equal(store.embedding_sample("image", "2026-W48", 1000), sample)
    others = [EmbeddedCase("b", "image", "2026-W48", f"9.9.{i}", vectors[i]) for i in range(400)]
    store.record_embedding_samples(others, 50)
    pooled = store.embedding_sample("image", "2026-W48", 50)  # the bottom 50 of the 800 studies
    assert len(pooled) == 50 and not np.array_equal(pooled, sample)
    union = make_store()
    union._name_key = store._name_key
    union.record_embedding_samples(cases + others, 50)
    assert np.array_equal(union.embedding_sample("image", "2026-W48", 50), pooled)
    # NaN rows are refused; weeks are pruned by name
    store.record_embedding_samples([EmbeddedCase("a", "report", "2026-W40", "x", np.full(4, np.nan))], 50)
    store.record_embedding_samples([EmbeddedCase("a", "report", "2026-W40", "y", np.ones(4))], 50)
    assert store.embedding_sample_keys() == [("2026-W40", "report"), ("2026-W48", "image")]
    assert store.prune_embedding_samples("2026-W41") == 1
    assert store.embedding_sample_keys() == [("2026-W48", "image")]


def _fields(c: EmbeddedCase) -> tuple[Any, ...]:
    return (c.model, c.modality, c.week, c.study_uid, c.vector)


def test_a_weekly_sample_is_a_uniform_sample_of_the_weeks_studies(make_store):
    """Each study is kept with probability size / n: over 2,000 studies offered in order, the kept
    ones are spread over the whole week, not the first or the last come."""
    store = make_store()
    store._name_key = bytes(32)  # one fixed key: the sample is random, the test is not
    cases = [
        EmbeddedCase("a", "report", "2026-W48", f"1.2.{i}", np.array([float(i)], np.float32))
        for i in range(2000)
    ]
    for chunk in range(0, 2000, 100):
        store.record_embedding_samples(cases[chunk : chunk + 100], 200)
    kept = store.embedding_sample("report", "2026-W48", 1000)[:, 0]
    assert len(kept) == 200
    quarters = np.histogram(kept, bins=4, range=(0, 2000))[0]
    assert all(30 <= q <= 70 for q in quarters), quarters  # 50 expected in each


# ------------------------------------------------------------------------------------------ stream


def test_a_report_shift_in_week_two_is_exported_as_drift_and_the_metadata_is_not(tmp_path):
    sidecar = _sidecar(tmp_path)
    try:
        _stream(sidecar, _events(0, "report"))
        assert sidecar.sampler.kept > 0
        assert {w for w, _ in sidecar.store.embedding_sample_keys()} == {"2026-W47", "2026-W48"}
        drifts = sidecar.watch_embeddings(force=True)
        assert drifts is not None and [w for w, _ in drifts] == ["2026-W48", "2026-W48"]
        gauges = _gauges(sidecar)
        assert set(gauges) == {"metadata", "report"}
        mmd, threshold = gauges["report"]
        assert mmd > threshold > 0, gauges
        mmd, threshold = gauges["metadata"]
        assert mmd <= threshold, gauges
        # not due again before summary.drift_every_seconds
        assert sidecar.watch_embeddings() is None
        body = generate_latest(sidecar.exporter.registry).decode()  # type: ignore[union-attr]
        assert "1.2.826" not in body
    finally:
        sidecar.close()


def test_a_stream_without_a_shift_raises_embedding_drift_at_its_stated_rate(tmp_path):
    """Alpha 0.01 per modality and week: 0.2 false alarms expected over 10 seeds and 2 modalities;
    more than 2 would happen with probability 0.001 if the threshold held its rate."""
    alarms = []
    for seed in range(10):
        sidecar = _sidecar(tmp_path)
        try:
            _stream(sidecar, _events(seed, None))
            sidecar.watch_embeddings(force=True)
            gauges = _gauges(sidecar)
        finally:
            sidecar.close()
        assert set(gauges) == {"metadata", "report"}
        alarms += [(seed, m) for m, (mmd, threshold) in gauges.items() if mmd > threshold]
    print(f"false alarms over 10 seeds and 2 modalities: {alarms}")
    assert len(alarms) <= 2, alarms


def test_the_report_shift_is_caught_at_other_seeds(tmp_path):
    for seed in (1, 2, 3):
        sidecar = _sidecar(tmp_path)
        try:
            _stream(sidecar, _events(seed, "report"))
            sidecar.watch_embeddings(force=True)
            mmd, threshold = _gauges(sidecar)["report"]
            assert mmd > threshold, (seed, mmd, threshold)
        finally:
            sidecar.close()


def test_too_few_embeddings_this_week_compare_the_week_before(tmp_path):
    events = _events(0, "report")
    # a few studies of week 3 arrive: too few to compare, so week 2 against week 1 is shown
    late = [
        {
            **e,
            "event_id": f"x{e['event_id']}",
            "study_uid": e["study_uid"] + ".9",
            "timestamp": "2026-11-30T09:00:00Z",
        }
        for e in events[-10:]
    ]
    sidecar = _sidecar(tmp_path)
    try:
        _stream(sidecar, events + late)
        drifts = sidecar.watch_embeddings(force=True)
        assert drifts is not None and {w for w, _ in drifts} == {"2026-W48"}
        assert week_of(sidecar.store.watermarks()["inference"]) == "2026-W49"
    finally:
        sidecar.close()


def test_the_summary_reads_the_weeks_samples_from_the_store_and_shows_the_gauges_figure(tmp_path):
    store = tmp_path / "state.sqlite"
    sidecar = _sidecar(tmp_path, str(store))
    try:
        _stream(sidecar, _events(0, "report"))
        drifts = dict((d.modality, d) for _, d in sidecar.watch_embeddings(force=True) or [])
    finally:
        sidecar.close()
    config = tmp_path / "summary.yaml"
    config.write_text("summary:\n  embedding_samples: 200\n  drift_max_samples: 200\n")
    (tmp_path / "reports").mkdir(exist_ok=True)
    args = [
        "summary",
        "--week",
        "2026-W48",
        "--reports",
        str(tmp_path / "reports"),
        "--out",
        str(tmp_path / "out"),
    ]
    result = CliRunner().invoke(app, [*args, "--store", str(store), "--config", str(config)])
    assert result.exit_code == 0, result.output
    markdown = (tmp_path / "out" / "2026-W48" / "summary.md").read_text()
    for modality, d in drifts.items():
        row = re.search(rf"^\| {modality} \| (-?[0-9.]+) \| (-?[0-9.]+) \| (yes|no) \|", markdown, re.M)
        assert row, markdown
        assert row.group(1) == f"{d.mmd2:.4f}" and row.group(2) == f"{d.threshold:.4f}"
        assert row.group(3) == ("yes" if d.drifted else "no")
    assert "| report |" in markdown and "1.2.826" not in markdown
    assert (tmp_path / "out" / "2026-W48" / "embedding-drift.png").exists()


def test_no_samples_are_kept_when_the_size_is_zero(tmp_path):
    sidecar = _sidecar(tmp_path, embedding_samples=0)
    try:
        assert sidecar.arrival.on_vectors is None
        _stream(sidecar, _events(0, None)[:40])
        assert sidecar.store.embedding_sample_keys() == []
        assert sidecar.watch_embeddings(force=True) == []
    finally:
        sidecar.close()


def test_summary_settings_bound_the_samples():
    with pytest.raises(ValueError):
        SummarySettings(drift_min_samples=2)
