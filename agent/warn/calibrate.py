"""The probability that a prediction is wrong, given its score: isotonic regression on labeled cases.

NannyML's CBPE calibrates the model's score into the probability of the positive class and reads
the expected error of each unlabeled case from it. Here the error itself is the target: for each
predicted side (target class or rest) an isotonic curve maps the score to P(error | score, side),
so that it does not matter whether an event's ``score`` is the probability of the predicted class
or of the target class, as long as it is one of them consistently. A side with too few scored
cases, or cases without a score, get the side's smoothed error rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.isotonic import IsotonicRegression

__all__ = ["Calibration", "Curve"]

#: Scored cases a side needs for an isotonic curve; fewer get a constant rate.
MIN_CURVE_CASES = 20


def _rate(err: np.ndarray) -> float:
    """A smoothed error rate (one pseudo-error in two pseudo-cases): never exactly 0 or 1."""
    return float((err.sum() + 1.0) / (len(err) + 2.0))


@dataclass(frozen=True)
class Curve:
    """``P(error | score)`` of one predicted side: a monotone piecewise-linear curve (isotonic
    regression's knots) and the rate given to a case without a score."""

    x: tuple[float, ...]
    y: tuple[float, ...]
    missing: float

    @classmethod
    def fit(cls, scores: np.ndarray, err: np.ndarray) -> Curve:
        """Fit on one side's labeled cases (``scores`` NaN where missing, ``err`` 0/1)."""
        scored = np.isfinite(scores)
        overall = _rate(err)
        missing = _rate(err[~scored]) if (~scored).sum() >= MIN_CURVE_CASES else overall
        x, e = scores[scored], err[scored]
        if len(x) < MIN_CURVE_CASES or len(np.unique(x)) < 2:
            return cls((), (), missing if len(x) == 0 else _rate(e))
        iso = IsotonicRegression(increasing="auto", y_min=0.0, y_max=1.0, out_of_bounds="clip")
        iso.fit(x, e)
        # A step of 0 or 1 would claim certainty from a handful of cases: shrink it a little.
        n = len(x)
        y = (np.asarray(iso.y_thresholds_) * n + overall) / (n + 1.0)
        return cls(tuple(map(float, iso.X_thresholds_)), tuple(map(float, y)), missing)

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        """P(error) of each score (NaN: the missing-score rate)."""
        scores = np.asarray(scores, dtype=np.float64)
        out = np.full(len(scores), self.missing)
        ok = np.isfinite(scores)
        if self.x and ok.any():
            out[ok] = np.interp(scores[ok], self.x, self.y)
        elif ok.any():
            out[ok] = self.y[0] if self.y else self.missing
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {"x": list(self.x), "y": list(self.y), "missing": self.missing}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Curve:
        """The inverse of :meth:`to_dict`."""
        return cls(tuple(map(float, data["x"])), tuple(map(float, data["y"])), float(data["missing"]))


@dataclass(frozen=True)
class Calibration:
    """One curve per predicted side, fitted on ``n`` labeled cases.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> score = rng.random(2000)
    >>> side = rng.random(2000) < 0.5
    >>> err = (rng.random(2000) < 1 - score).astype(float)  # score: probability of being right
    >>> cal = Calibration.fit(score, side, err)
    >>> p = cal.predict(np.array([0.1, 0.9]), np.array([True, False]))
    >>> bool(abs(p[0] - 0.9) < 0.1 and abs(p[1] - 0.1) < 0.1)
    True
    """

    target: Curve
    rest: Curve
    n: int

    @classmethod
    def fit(cls, scores: np.ndarray, predicted_target: np.ndarray, err: np.ndarray) -> Calibration:
        """Fit on labeled cases: scores (NaN where missing), whether the prediction was the target
        class, and whether it was wrong."""
        scores = np.asarray(scores, dtype=np.float64)
        side = np.asarray(predicted_target, dtype=bool)
        err = np.asarray(err, dtype=np.float64)
        return cls(Curve.fit(scores[side], err[side]), Curve.fit(scores[~side], err[~side]), len(err))

    def predict(self, scores: np.ndarray, predicted_target: np.ndarray) -> np.ndarray:
        """P(error) of each case."""
        side = np.asarray(predicted_target, dtype=bool)
        return np.where(side, self.target(scores), self.rest(scores))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {"target": self.target.to_dict(), "rest": self.rest.to_dict(), "n": self.n}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        """The inverse of :meth:`to_dict`."""
        return cls(Curve.from_dict(data["target"]), Curve.from_dict(data["rest"]), int(data["n"]))
