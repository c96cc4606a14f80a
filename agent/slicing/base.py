"""What both slicers share as scikit-learn estimators: parameter validation, the fitted check, inputs.

The slicers are fitted on ``(X, y, y_pred)``, not the usual ``(X, y)``, so scikit-learn's own
``check_estimator`` does not apply to them; they follow its conventions otherwise:
``BaseEstimator`` (``get_params``, ``set_params``, ``clone``), constraints declared in
``_parameter_constraints`` and checked in ``fit`` (never rewritten), fitted state ending in an
underscore, and ``check_is_fitted`` before any prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from scipy.stats import binom, fisher_exact
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.validation import check_is_fitted

from agent.errors import FitError, NotFittedError

__all__ = [
    "Contrast",
    "SlicerEstimator",
    "Whitening",
    "as_binary",
    "as_embedding",
    "as_shares",
    "binomial_strength",
    "contrast",
    "fisher_p",
    "fisher_strength",
    "gated_halves",
    "max_t_p_values",
    "tail_p_values",
    "whitened_rows",
]


class SlicerEstimator(BaseEstimator):
    """Base of the slicers: validation against ``_parameter_constraints`` and the fitted check."""

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {}

    def _check_params(self) -> None:
        """Raise :class:`~agent.errors.FitError` naming the parameter that breaks its constraint."""
        try:
            self._validate_params()
        except InvalidParameterError as err:
            raise FitError(f"{err}; fix the slicer's settings (audit section)") from err

    def _check_fitted(self) -> None:
        try:
            check_is_fitted(self, "means_")
        except SklearnNotFittedError as err:
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit first") from err

    def _check_X(self, X: Any, *, keep_float32: bool = False) -> np.ndarray:
        """A fitted slicer's input: 2-D, finite, with the width it was fitted on (float32 kept as it
        is with ``keep_float32``, for a pass that converts it a slab at a time)."""
        X = as_embedding(X, keep_float32=keep_float32)
        if X.shape[1] != self.n_features_in_:
            raise FitError(
                f"expected {self.n_features_in_} features as in fit, got {X.shape[1]}; "
                "transform the window with the same fusion"
            )
        return X


def as_embedding(X: Any, *, keep_float32: bool = False) -> np.ndarray:
    """``X`` as a finite 2-D float64 array (float32 left as it is with ``keep_float32``: no copy of
    a whole window), or a :class:`FitError` that says what to fix."""
    X = np.asarray(X)
    if not (keep_float32 and X.dtype == np.float32):
        X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise FitError(f"expected a 2-D embedding array, got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise FitError("embeddings contain NaN or infinity; fill missing modalities before fitting")
    return X


def as_binary(y: Any, n: int, *, name: str = "y", soft: bool = False) -> np.ndarray:
    """``y`` as a float vector of length ``n`` in {0, 1} (in [0, 1] when ``soft``)."""
    y = np.asarray(y, dtype=np.float64).ravel()
    if len(y) != n:
        raise FitError(f"expected {name} of length {n} (one per row of X), got {len(y)}")
    if soft:
        if np.any(~np.isfinite(y) | (y < 0) | (y > 1)):
            raise FitError(f"expected {name} as 0/1 or a probability in [0, 1]")
    elif np.any((y != 0) & (y != 1)):
        raise FitError(f"expected binary {name} in {{0, 1}}; reformulate as target class vs rest")
    return y


def binomial_strength(n_in: np.ndarray, e_in: np.ndarray, n_all: float, e_all: float) -> np.ndarray:
    """How unlikely ``e_in`` or more errors among ``n_in`` cases are at the class's error rate:
    minus the log of the binomial tail (0 where the rate inside is not above the class's).

    Unlike a z statistic, it does not favour the smallest supports: 5 errors of 10 and 10 of
    20 at a 6% rate are not equally strong, and under permutation the largest z of a few
    hundred terms is set by the rarest ones."""
    rate = min(max(e_all / max(n_all, 1.0), 1e-9), 1 - 1e-9)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = -binom.logsf(e_in - 1, n_in, rate)
    return np.where((n_in > 0) & (n_in < n_all) & (e_in > rate * n_in), s, 0.0)


def fisher_strength(s0: np.ndarray, s1: np.ndarray) -> np.ndarray:
    """Minus the log of Fisher's combination of two p-values given as minus their logs
    (:func:`binomial_strength` of a group's cases in each class), where both show errors above
    their class's rate (0 elsewhere): a slice over both classes is not scored on one class's
    errors alone. On the same scale as either score, so both kinds enter one max-T.

    With ``s = s0 + s1``, Fisher's statistic ``2 s`` has 4 degrees of freedom under the null, and
    its tail is ``exp(-s) (1 + s)``.

    >>> float(np.round(fisher_strength(np.array(3.0), np.array(2.0)), 4))
    3.2082
    >>> float(fisher_strength(np.array(9.0), np.array(0.0)))
    0.0
    """
    s = s0 + s1
    return np.where((s0 > 0) & (s1 > 0), s - np.log1p(s), 0.0)


def fisher_p(p0: float, p1: float) -> float:
    """Fisher's combination of two independent p-values, the same tail as :func:`fisher_strength`
    on the p-value scale: ``q (1 - log q)`` with ``q = p0 p1``.

    >>> strength = fisher_strength(-np.log(0.01), -np.log(0.02))
    >>> round(fisher_p(0.01, 0.02), 6), round(float(np.exp(-strength)), 6)
    (0.001903, 0.001903)
    """
    q = max(p0 * p1, 1e-300)
    return float(min(1.0, q * (1 - np.log(q))))


def gated_halves(
    p_values: np.ndarray,
    joint: np.ndarray,
    members: np.ndarray,
    classes: np.ndarray,
    y: np.ndarray,
    err: np.ndarray,
    level: float,
) -> np.ndarray:
    """The p-values of the components, each half of a slice over both classes (``joint``) taking
    the larger of the slice's p-value and its own: its members (column of ``members``) against the
    rest of its class, one-sided Fisher. A half whose own p-value is above ``level`` gets 1.

    A gatekeeping step: the slice over both classes is tested under the family-wise correction,
    each half after it on its own cases, so a strong half carries neither a half without errors
    into the report nor its own p-value onto a weak one (a half of 13% errors against 7% is not
    shown at the p-value of its partner's 70%).

    Two halves of one slice at 1e-6: class 0's, 8 errors in 20 against 1 in 30, keeps its own
    larger p-value; class 1's, 3 in 20 against 1 in 30, is not reported.

    >>> members = np.zeros((100, 2), dtype=bool)
    >>> members[:20, 0] = members[50:70, 1] = True
    >>> y = np.r_[np.zeros(50), np.ones(50)]
    >>> err = np.zeros(100)
    >>> err[[*range(8), 30, 50, 51, 52, 90]] = 1
    >>> p = gated_halves(np.full(2, 1e-6), np.ones(2, bool), members, np.array([0.0, 1.0]), y, err, 0.05)
    >>> [float(round(v, 4)) for v in p]
    [0.0016, 1.0]
    """
    out = np.array(p_values, dtype=np.float64)
    for j in np.flatnonzero(joint):
        own = contrast(np.asarray(members[:, j], dtype=bool), y == classes[j], err).p_value()
        out[j] = 1.0 if own > level else max(out[j], own)
    return out


def as_shares(shares: Any) -> np.ndarray:
    """A slicer's ``shares`` as a float vector in (0, 1), or a :class:`FitError`."""
    out = np.asarray(shares, dtype=np.float64)
    if out.ndim != 1 or len(out) == 0 or np.any((out <= 0) | (out >= 1)):
        raise FitError(f"expected shares in (0, 1), got {shares!r}")
    return out


def max_t_p_values(null_max: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Westfall and Young's max-T: for each observed statistic, the share of permutations (the
    observed data counted as one of them) whose largest statistic reaches it."""
    reached = (null_max[None, :] >= np.asarray(observed)[:, None] - 1e-9).sum(axis=1)
    return np.asarray((1 + reached) / (len(null_max) + 1), dtype=np.float64)


def tail_p_values(null_max: np.ndarray, observed: np.ndarray, tail: float = 0.1) -> np.ndarray:
    """:func:`max_t_p_values`, except that a statistic beyond every permutation's largest gets
    an estimate below the permutation floor ``1 / (B + 1)``: the upper ``tail`` of the
    permutation maxima fitted by an exponential (the tail of a maximum of minus-log-p-value
    strengths, a generalized Pareto tail of shape 0; Knijnenburg et al. 2009 for the idea).

    The floor is a bound, not a value: two slices beyond every permutation tie at it, and a
    slice tested otherwise with a smaller p-value ranks before both however strong they are. The
    estimate only orders and reports slices already beyond the floor; whether a slice is
    significant is decided on :func:`max_t_p_values`, so the family-wise error rate is the
    permutation test's. Without at least 10 maxima in the tail, or with a degenerate one (every
    maximum equal), the floor is kept; an estimate is never 0.

    500 permutation maxima drawn from an exponential of scale 1 above 5, so that a statistic
    ``5 + log(1 / q)`` has the true p-value ``q``; the first is within the maxima (its share
    reached), the other two beyond every one, at true p-values of 2e-4 and 2e-6:

    >>> null = 5 + np.random.default_rng(0).exponential(1.0, 500)
    >>> p = tail_p_values(null, 5 + np.log([1 / 0.4, 5_000, 500_000]))
    >>> [f"{v:.1e}" for v in p]
    ['4.5e-01', '1.6e-04', '1.2e-06']
    """
    out = max_t_p_values(null_max, observed)
    null = np.sort(np.asarray(null_max, dtype=np.float64)[np.isfinite(null_max)])
    n_tail = int(np.ceil(tail * len(null)))
    if n_tail < 10:
        return out
    threshold = null[-n_tail - 1]
    scale = float(np.mean(null[-n_tail:] - threshold))
    beyond = np.asarray(observed, dtype=np.float64) > null[-1] + 1e-9
    if scale <= 0 or not beyond.any():
        return out
    estimate = n_tail / (len(null_max) + 1) * np.exp(-(np.asarray(observed)[beyond] - threshold) / scale)
    # Never 0: an estimate that underflows still ranks first, and a report never shows p = 0.
    out[beyond] = np.clip(estimate, np.finfo(np.float64).tiny, out[beyond])
    return out


@dataclass(frozen=True)
class Contrast:
    """Errors inside a territory against the rest of the same class."""

    n_in: int
    e_in: int
    n_out: int
    e_out: int

    @property
    def z(self) -> float:
        """Two-proportion z statistic (0 when either side is empty)."""
        if self.n_in == 0 or self.n_out == 0:
            return 0.0
        pooled = (self.e_in + self.e_out) / (self.n_in + self.n_out)
        sd = np.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / self.n_in + 1 / self.n_out))
        return float((self.e_in / self.n_in - self.e_out / self.n_out) / sd)

    def p_value(self) -> float:
        table = [[self.e_in, self.n_in - self.e_in], [self.e_out, self.n_out - self.e_out]]
        return float(fisher_exact(table, alternative="greater")[1])


def contrast(inside: np.ndarray, same_class: np.ndarray, err: np.ndarray) -> Contrast:
    """Errors of the cases of ``same_class`` inside against those outside."""
    inside = inside & same_class
    outside = same_class & ~inside
    return Contrast(int(inside.sum()), int(err[inside].sum()), int(outside.sum()), int(err[outside].sum()))


def whitened_rows(X: np.ndarray) -> np.ndarray:
    """Every column centred and scaled to unit variance (a minor principal axis weighs as much as a
    major one), then every row scaled to unit length: cosine geometry over whitened axes
    (:class:`Whitening` whitens a subset of the rows)."""
    return Whitening(X)()


class Whitening:
    """:func:`whitened_rows` with the columns' centre and spread learnt once from ``X``, for rows
    taken a subset at a time (float64 rows; each row's numbers are computed alone, so they are the
    same in any subset).

    The centre and spread are float64 sums over slabs of rows (two passes: the mean, then the
    squared deviations from it), so a float32 window is never copied whole in float64.

    >>> X = np.random.default_rng(0).normal(3.0, 2.0, size=(5000, 4)).astype(np.float32)
    >>> w = Whitening(X)
    >>> bool(np.allclose(w.centre, X.astype(np.float64).mean(axis=0), rtol=1e-12))
    True
    >>> bool(np.allclose(w.spread, X.astype(np.float64).std(axis=0), rtol=1e-12))
    True
    >>> bool(np.array_equal(w(np.array([7, 2])), w()[[7, 2]]))
    True
    """

    _SLAB = 4096

    def __init__(self, X: np.ndarray) -> None:
        n = max(len(X), 1)
        total = np.zeros(X.shape[1])
        for start in range(0, len(X), self._SLAB):
            total += X[start : start + self._SLAB].sum(axis=0, dtype=np.float64)
        centre = total / n
        squares = np.zeros(X.shape[1])
        for start in range(0, len(X), self._SLAB):
            part = X[start : start + self._SLAB] - centre
            squares += np.einsum("ij,ij->j", part, part)
        spread = np.sqrt(squares / n)
        self.X = X
        self.centre = centre
        self.spread = np.where(spread > 0, spread, 1.0)

    def __call__(self, rows: np.ndarray | None = None) -> np.ndarray:
        out = (self.X if rows is None else self.X[rows]) - self.centre  # float64
        out /= self.spread  # in place: one copy of the rows, not three
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return np.asarray(out)
