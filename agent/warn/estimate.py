"""The expected error rate of unlabeled cases from their calibrated error probabilities.

With case ``i`` wrong with probability ``p_i`` (independently), the number of errors among ``n``
cases follows a Poisson-binomial distribution: mean ``sum p_i``, variance ``sum p_i (1 - p_i)``.
The interval is its normal approximation, clipped to [0, 1]: where the errors will fall *if the
calibration holds*. It does not cover a calibration that no longer holds (a shift in prevalence or
appearance since the labeled window): see docs/early-warning.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

__all__ = ["Estimate", "estimate"]


@dataclass(frozen=True)
class Estimate:
    """An estimated error rate of ``n`` cases and its interval."""

    n: int
    rate: float
    lower: float
    upper: float


def estimate(p: np.ndarray, confidence: float = 0.95) -> Estimate:
    """The error rate expected of cases wrong with probabilities ``p``, with its interval.

    >>> e = estimate(np.full(400, 0.2))
    >>> e.n, round(e.rate, 3), round(e.lower, 3), round(e.upper, 3)
    (400, 0.2, 0.161, 0.239)
    >>> estimate(np.array([])).rate
    0.0
    """
    p = np.asarray(p, dtype=np.float64)
    n = len(p)
    if n == 0:
        return Estimate(0, 0.0, 0.0, 1.0)
    mean = float(p.sum())
    sd = float(np.sqrt(np.sum(p * (1.0 - p))))
    z = float(norm.ppf(0.5 + confidence / 2.0))
    return Estimate(n, mean / n, max(0.0, (mean - z * sd) / n), min(1.0, (mean + z * sd) / n))
