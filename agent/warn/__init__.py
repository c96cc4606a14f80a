"""Early warning from unlabeled traffic, before the confirmed labels arrive.

Each refit that reports slices leaves a description of them that applies to new cases
(:mod:`~agent.warn.describe`): the fusion of that refit and, per slice, its component's diagonal
Gaussian with a density cut, its share of the labeled window and a calibration of the model's
score (:mod:`~agent.warn.calibrate`). Every inference, once embedded on arrival, is assigned to the
known slices (:class:`~agent.warn.monitor.EarlyWarning`); a slice whose share of a time bucket
rises significantly above its window share is a warning (:mod:`~agent.warn.share`), and the error
of the cases still waiting for labels is estimated from their calibrated scores, per slice and
overall, with an interval (:mod:`~agent.warn.estimate`).
"""

from agent.warn.calibrate import Calibration, Curve
from agent.warn.describe import KnownSlice, SliceSpace, describe_fit
from agent.warn.estimate import Estimate, estimate
from agent.warn.monitor import EarlyWarning, SliceState, WarningState
from agent.warn.share import ShareTest, share_test

__all__ = [
    "Calibration",
    "Curve",
    "EarlyWarning",
    "Estimate",
    "KnownSlice",
    "ShareTest",
    "SliceSpace",
    "SliceState",
    "WarningState",
    "describe_fit",
    "estimate",
    "share_test",
]
