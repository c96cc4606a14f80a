"""A replay runs the early warning as the live sidecar does: share tests of the buckets it completes
and label-free estimates, on the simulated stream in which a weak group grows from 5 % to 25 %
(agent/simulate/early.py, seed 0), written to a file in arrival order and replayed."""

from __future__ import annotations

import json

from agent.simulate.early import MODEL, TARGET, EarlySpec, WordEmbedder, _settings, early_stream
from agent.stream.replay import replay_file
from agent.stream.sidecar import Sidecar


def test_a_replay_gets_share_tests_estimates_and_warnings(tmp_path):
    spec = EarlySpec(history_days=30, ramp_days=14, after_days=0)
    events, _ = early_stream(spec, seed=0)
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e.payload) + "\n" for e in events))
    # a refit when about the labels of the history have come (day 0), the next 3,000 labels later
    settings = _settings(
        tmp_path,
        spec,
        {"stream": {"store_path": str(tmp_path / "state.sqlite"), "refit_every_labels": 3000}},
    )
    sidecar = Sidecar(settings, WordEmbedder())
    try:
        summary = replay_file(path, sidecar, final_refit=False)
        rows = sidecar.store.buckets(MODEL, TARGET)
        outcomes = sidecar.store.live_outcomes(MODEL, TARGET, float("-inf"))
        states = sidecar.watch()
    finally:
        sidecar.close()
    assert summary.refits, "the history's labels are refitted before the growth"
    assert len({r.bucket for r in rows}) >= 10, "complete buckets after the refit are tested"
    assert summary.warnings >= 1 and summary.warnings == sum(r.warned for r in rows)
    assert outcomes, "inferences after the refit are assigned"
    (state,) = states
    # every label of the file came: nothing waits, and the estimates are checked against labels
    assert state.slices and state.new_warnings == 0 and state.coverage > 0.9
    assert state.realised is not None and state.estimate_error is not None

    # a second replay of the same file resumes at its end: nothing is tested or warned again
    sidecar = Sidecar(settings, WordEmbedder())
    try:
        again = replay_file(path, sidecar, final_refit=False)
        assert again.lines == 0 and again.warnings == 0
        assert sidecar.store.buckets(MODEL, TARGET) == rows
    finally:
        sidecar.close()
