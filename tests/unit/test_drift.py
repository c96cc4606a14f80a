from __future__ import annotations

import numpy as np
from river.drift import ADWIN

from agent.drift import DriftMonitor, ErrorRateDrift


def outcomes(rates: list[tuple[int, float]], seed: int = 0) -> list[bool]:
    rng = np.random.default_rng(seed)
    return [bool(rng.random() < rate) for n, rate in rates for _ in range(n)]


def test_detections_match_river_adwin_step_for_step():
    stream = outcomes([(800, 0.05), (800, 0.35), (800, 0.1)], seed=3)
    ours, reference = ErrorRateDrift(delta=0.002), ADWIN(delta=0.002, grace_period=10)
    mine, theirs = [], []
    for i, wrong in enumerate(stream):
        ours.update(wrong)
        reference.update(1.0 if wrong else 0.0)
        if ours.drift_detected:
            mine.append(i)
        if reference.drift_detected:
            theirs.append(i)
        assert ours.error_rate == reference.estimation
    assert mine == theirs and len(mine) >= 2
    assert ours.n_detections == len(mine) and ours.n_seen == len(stream)
    assert ours.n_errors == sum(stream)


def test_a_rise_is_found_soon_and_a_steady_rate_is_quiet():
    quiet, step = ErrorRateDrift(), ErrorRateDrift()
    for wrong in outcomes([(3000, 0.1)], seed=1):
        quiet.update(wrong)
    assert quiet.n_detections == 0
    first = None
    for i, wrong in enumerate(outcomes([(1000, 0.05), (1000, 0.5)], seed=2)):
        step.update(wrong)
        if step.drift_detected and first is None:
            first = i
    assert first is not None and 1000 <= first < 1150
    assert abs(step.error_rate - 0.5) < 0.1


def test_monitor_keeps_classes_apart():
    monitor = DriftMonitor()
    rng = np.random.default_rng(4)
    flagged = set()
    for i in range(3000):
        positive = i % 2 == 0
        # Positives start being missed half-way; negatives stay at 5 % false alarms.
        miss = rng.random() < (0.05 if i < 1500 or not positive else 0.5)
        label = "ptx" if positive else "no_ptx"
        wrong_label = "no_ptx" if positive else "ptx"
        monitor.update("cxr", label=label, prediction=wrong_label if miss else label)
        if monitor.signal is not None:
            flagged.add(monitor.signal.cls)
            assert monitor.signal.model == "cxr"
    assert flagged == {"ptx"}
    assert monitor.error_rate("cxr", "ptx") > 0.3 and monitor.error_rate("cxr", "no_ptx") < 0.15
    assert np.isnan(monitor.error_rate("other", "ptx"))
    assert sorted(monitor.keys) == [("cxr", "no_ptx"), ("cxr", "ptx")]


def test_reset_forgets_everything():
    detector = ErrorRateDrift()
    for wrong in outcomes([(100, 0.5)]):
        detector.update(wrong)
    detector._reset()
    assert detector.n_seen == 0 and detector.window_length == 0 and detector.error_rate == 0.0
