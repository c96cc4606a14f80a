"""Error-rate drift per (model, class): river's ADWIN on the stream of correct / incorrect outcomes.

:class:`ErrorRateDrift` watches one stream of outcomes (one model, one true class): each labeled
sample is an error (the prediction differs from the label) or not, and ADWIN keeps an adaptive
window over them and flags when the error rate of its recent part differs from the older part.
Per true class, so that a rise in missed findings is not diluted by the negatives.
:class:`DriftMonitor` keeps one detector per (model, class) and says which drifted on the last
sample. Both are river-style: ``update`` takes one item and returns nothing; results are read-only
properties; state is built in ``_reset``. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from river.drift import ADWIN

__all__ = ["DriftMonitor", "DriftSignal", "ErrorRateDrift"]


class ErrorRateDrift:
    """ADWIN over a stream of errors (1) and correct outcomes (0).

    Parameters
    ----------
    delta
        ADWIN's confidence: smaller means fewer, surer detections.
    grace_period
        Outcomes seen before a drift can be flagged.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> detector = ErrorRateDrift()
    >>> flagged = []
    >>> for i, wrong in enumerate(rng.random(2000) < np.r_[np.full(1000, 0.05), np.full(1000, 0.4)]):
    ...     detector.update(bool(wrong))
    ...     if detector.drift_detected:
    ...         flagged.append(i)
    >>> 1000 <= flagged[0] < 1200, detector.n_detections >= 1
    (True, True)
    >>> round(detector.error_rate, 1)
    0.4
    """

    def __init__(self, *, delta: float = 0.002, grace_period: int = 10) -> None:
        self.delta = delta
        self.grace_period = grace_period
        self._reset()

    def _reset(self) -> None:
        self._adwin = ADWIN(delta=self.delta, grace_period=self.grace_period)
        self._n_seen = 0
        self._n_errors = 0
        self._n_detections = 0

    def update(self, is_error: bool) -> None:
        """Take one outcome: True when the prediction was wrong."""
        self._adwin.update(1.0 if is_error else 0.0)
        self._n_seen += 1
        self._n_errors += bool(is_error)
        if self._adwin.drift_detected:
            self._n_detections += 1

    @property
    def drift_detected(self) -> bool:
        """Whether the last outcome made ADWIN cut its window."""
        return bool(self._adwin.drift_detected)

    @property
    def error_rate(self) -> float:
        """The error rate over ADWIN's current window (0.0 before any outcome)."""
        return float(self._adwin.estimation)

    @property
    def window_length(self) -> int:
        """How many outcomes ADWIN's current window holds."""
        return int(self._adwin.width)

    @property
    def n_seen(self) -> int:
        """Outcomes seen since the last reset."""
        return self._n_seen

    @property
    def n_errors(self) -> int:
        """Errors seen since the last reset."""
        return self._n_errors

    @property
    def n_detections(self) -> int:
        """Drifts flagged since the last reset."""
        return self._n_detections


@dataclass(frozen=True)
class DriftSignal:
    """A drift flagged on one (model, class): the error rate ADWIN now estimates."""

    model: str
    cls: str | int
    error_rate: float
    window_length: int


class DriftMonitor:
    """One :class:`ErrorRateDrift` per (model, true class).

    Parameters
    ----------
    delta
        ADWIN's confidence, for every detector.

    Examples
    --------
    >>> monitor = DriftMonitor()
    >>> monitor.update("cxr", label="ptx", prediction="no_ptx")
    >>> monitor.signal is None, monitor.error_rate("cxr", "ptx")
    (True, 1.0)
    >>> sorted(monitor.keys)
    [('cxr', 'ptx')]
    """

    def __init__(self, *, delta: float = 0.002) -> None:
        self.delta = delta
        self._reset()

    def _reset(self) -> None:
        self._detectors: dict[tuple[str, str | int], ErrorRateDrift] = {}
        self._signal: DriftSignal | None = None

    def update(self, model: str, *, label: str | int, prediction: str | int) -> None:
        """Take one labeled sample of ``model``."""
        key = (model, label)
        detector = self._detectors.get(key)
        if detector is None:
            detector = self._detectors[key] = ErrorRateDrift(delta=self.delta)
        detector.update(prediction != label)
        self._signal = (
            DriftSignal(model, label, detector.error_rate, detector.window_length)
            if detector.drift_detected
            else None
        )

    @property
    def signal(self) -> DriftSignal | None:
        """The drift the last sample revealed, if any."""
        return self._signal

    @property
    def keys(self) -> tuple[tuple[str, str | int], ...]:
        """Every (model, class) watched."""
        return tuple(self._detectors)

    def error_rate(self, model: str, cls: str | int) -> float:
        """The current error-rate estimate of a (model, class); NaN when never seen."""
        detector = self._detectors.get((model, cls))
        return detector.error_rate if detector is not None else float("nan")

    def detector(self, model: str, cls: str | int) -> ErrorRateDrift | None:
        """The detector of a (model, class), if any."""
        return self._detectors.get((model, cls))
