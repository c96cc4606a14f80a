"""Error-rate drift found on the stream is recorded once, survives a restart, and feeds the summary."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
from harness import NoModel

from agent.config import Settings, StreamSettings
from agent.stream import Message, Sidecar


def _events(n: int, seed: int = 0) -> list[bytes]:
    """Positives are missed at 5 % for the first half, at 60 % after; negatives stay at 5 %."""
    rng = np.random.default_rng(seed)
    t0 = datetime(2026, 11, 2, tzinfo=UTC)
    out = []
    for i in range(n):
        positive = i % 2 == 0
        wrong = rng.random() < (0.6 if positive and i >= n // 2 else 0.05)
        label = "ptx" if positive else "no_ptx"
        prediction = label if not wrong else ("no_ptx" if positive else "ptx")
        ts = (t0 + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M:%SZ")
        common = {"study_uid": f"s{i}", "timestamp": ts}
        out.append(
            json.dumps(
                {"type": "inference", "event_id": f"i{i}", "model": "cxr", "prediction": prediction, **common}
            ).encode()
        )
        out.append(json.dumps({"type": "label", "event_id": f"l{i}", "label": label, **common}).encode())
    return out


def test_drift_is_recorded_once_and_written_for_the_summary(tmp_path):
    settings = Settings(
        stream=StreamSettings(store_path=tmp_path / "state.sqlite", reports_dir=tmp_path / "reports")
    )
    raw = _events(2000)
    sidecar = Sidecar(settings, NoModel())
    for i in range(0, len(raw), 100):
        sidecar.ingest([Message(f"t:0:{j}", raw[j]) for j in range(i, min(i + 100, len(raw)))])
    events = [
        json.loads(line) for line in (tmp_path / "reports" / "drift-events.jsonl").read_text().splitlines()
    ]
    assert events and {e["target_class"] for e in events} == {"ptx"}
    assert all(e["model"] == "cxr" and e["statistic"] > 0.2 for e in events)
    first = datetime.fromisoformat(events[0]["at"].replace("Z", "+00:00"))
    assert datetime(2026, 11, 2, tzinfo=UTC) + timedelta(minutes=1000) <= first  # after the change
    stored = sidecar.store.drift_events("cxr")
    assert len(stored) == len(events)
    sidecar.close()

    # A restart replays the windows through fresh detectors: the same detections, none repeated.
    again = Sidecar(settings, NoModel())
    again.start()
    lines = (tmp_path / "reports" / "drift-events.jsonl").read_text().splitlines()
    assert len(lines) == len(events) and again.store.drift_events("cxr") == stored
    assert again.drift.detector("cxr", "ptx").n_detections == len(events)
    again.close()
