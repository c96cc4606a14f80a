"""The error-aware Gaussian mixture (Domino-style) over embeddings, labels and predictions.

Each component ``j`` has a weight, a diagonal Gaussian over the embedding ``u`` and two
Bernoulli terms, one for the binary label ``y`` and one for the prediction ``ŷ``. The
per-sample log-likelihood under component ``j`` is::

    log π_j + log N(u | μ_j, diag σ²_j) + γ [log P(y | j) + log P(ŷ | j)]

and the mixture maximises the sum over samples of the log-sum-exp over components. ``γ``
(``gamma``) trades slice coherence in embedding space against slice error rate; the
multimodal slice-discovery paper uses ``γ = 10``. ``ŷ`` may be a hard 0/1 prediction or the
model's probability of the target class (a soft Bernoulli target).

The embedding is kept as given (float32 or float64, never copied whole) and read
``_SLAB_ROWS`` rows at a time. A float32 embedding (what :func:`agent.fuse.fuse` gives) has
its matrix products in float32: the two of the Gaussian terms, ``x² · 1/σ²`` and
``x · 2μ/σ²``, and the two of the M-step's sums, with float32 responsibilities. Everything
else is float64: the products' sums over slabs, the log-sum-exp, the parameters, and the
memberships handed to the test. On the planted windows and streams of
``tests/unit/test_refit_golden.py`` the slices are the float64 fit's, to the member.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions

from agent.errors import FitError
from agent.slicing.base import SlicerEstimator, as_binary, as_embedding

__all__ = [
    "ErrorAwareMixture",
    "MixtureParams",
    "diag_gaussian_log_prob",
    "logsumexp_rows",
    "mahalanobis_sq",
]

log = logging.getLogger(__name__)

_EPS = 10 * np.finfo(np.float64).eps
_LOG_2PI = float(np.log(2.0 * np.pi))
_LOG_TINY = float(np.log(np.finfo(np.float64).tiny))
#: At or below this, ``exp`` is flushed to zero: float64's runs five times slower near its
#: underflow, and a term of exp(-700) (1e-304) cannot change a sum that holds 1.
_LOG_FLUSH = -700.0
_FLUSHED = float(np.exp(_LOG_FLUSH))
#: The same for float32's ``exp`` (1e-38, above float32's smallest normal).
_LOG_FLUSH32 = np.float32(-87.0)
_FLUSHED32 = np.exp(_LOG_FLUSH32)
#: Cases per slab in every pass over the embedding: slab temporaries stay a few MiB.
_SLAB_ROWS = 1024
#: EM steps a warm :meth:`ErrorAwareMixture.fit_memberships` takes before the memberships' pass
#: checks their convergence.
_WARM_STEPS = 2


def diag_gaussian_log_prob(
    X: np.ndarray, means: np.ndarray, variances: np.ndarray, *, squares: np.ndarray | None = None
) -> np.ndarray:
    """Log density of every row of ``X`` under every diagonal Gaussian, as an ``(n, k)`` array.

    Expanded as ``Σ x²/σ² - 2 x·μ/σ² + Σ μ²/σ²`` so that the work is two matrix products,
    never a Python loop over samples or components. ``squares`` is ``X * X`` when the caller
    has it already.
    """
    return _Gaussians(means, variances, X.dtype).log_prob(X, squares)


def mahalanobis_sq(
    X: np.ndarray, means: np.ndarray, variances: np.ndarray, *, squares: np.ndarray | None = None
) -> np.ndarray:
    """Squared Mahalanobis distance of every row of ``X`` to every diagonal Gaussian, ``(n, k)``."""
    return _Gaussians(means, variances, X.dtype).mahalanobis_sq(X, squares)


class _Gaussians:
    """Diagonal Gaussians as the two matrix products of their log densities use them, derived
    once: a pass over a window's slabs builds this once, not once per slab."""

    def __init__(self, means: np.ndarray, variances: np.ndarray, dtype: np.dtype) -> None:
        precisions = 1.0 / variances
        # The products in the rows' precision (float32 stays float32), the rest in float64.
        products = np.float32 if dtype == np.float32 else np.float64
        self.precisions = precisions.T.astype(products, copy=False)
        # Doubling is exact: one pass fewer per slab.
        self.scaled_means = (2.0 * means * precisions).T.astype(products, copy=False)
        self.centre = np.sum(means * means * precisions, axis=1)
        self.constant = means.shape[1] * _LOG_2PI + np.sum(np.log(variances), axis=1)

    def mahalanobis_sq(self, X: np.ndarray, squares: np.ndarray | None = None) -> np.ndarray:
        quad = ((X * X if squares is None else squares) @ self.precisions).astype(np.float64, copy=False)
        quad -= X @ self.scaled_means
        quad += self.centre
        return np.maximum(quad, 0.0, out=quad)

    def log_prob(self, X: np.ndarray, squares: np.ndarray | None = None) -> np.ndarray:
        out = self.mahalanobis_sq(X, squares)
        out += self.constant
        out *= -0.5
        return out


def logsumexp_rows(a: np.ndarray, *, overwrite: bool = False) -> np.ndarray:
    """``log(sum(exp(a), axis=1))`` for a 2-D array, shifted by the row maximum for stability.

    Terms at or below exp(-700) times the row's largest are flushed to zero: they cannot
    change a sum that holds 1, and ``exp`` near its underflow and subnormal floats are slow. scipy's
    ``logsumexp`` computes the same with more checks, at three times the cost on the
    ``(n, k)`` arrays of every E-step. ``overwrite`` lets it use ``a`` as its scratch space.
    """
    return _softmax_rows(a if overwrite else a.copy())[1]


def _shift_rows(a: np.ndarray) -> np.ndarray:
    """Subtract each row's maximum from ``a`` in place (0 where a row has none finite); return them."""
    # Column by column: numpy's max along a short row is slow (a 1,024 x 25 slab: 25 us against 35).
    top = a[:, 0].copy()
    for j in range(1, a.shape[1]):
        np.maximum(top, a[:, j], out=top)
    top = np.where(np.isfinite(top), top, 0.0)
    a -= top[:, None]
    return top


def _softmax_rows(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``exp(a - logsumexp)`` row-wise, computed in ``a``, and the log-sum-exp: one ``exp`` for both."""
    top = _shift_rows(a)
    _exp_flushed_inplace(a)
    total = np.sum(a, axis=1)
    a /= total[:, None]
    return a, top + np.log(total)


def _softmax_rows32(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_softmax_rows` of a float64 log joint, with the responsibilities in float32 (for
    the float32 M-step products) and the log-sum-exp in float64.

    Shifted by the row maximum in float64 first, so the float32 terms are the small ones near 0
    that matter; terms at or below exp(-87) are flushed (float32's ``exp`` is several times
    faster than float64's on the large negative terms that ``gamma = 10`` makes of most).
    """
    top = _shift_rows(a)
    out = a.astype(np.float32)
    np.maximum(out, _LOG_FLUSH32, out=out)
    np.exp(out, out=out)
    np.multiply(out, out > _FLUSHED32, out=out)
    total = out.sum(axis=1, dtype=np.float64)
    out /= total[:, None].astype(np.float32)
    return out, top + np.log(total)


def _slabs(n: int) -> range:
    return range(0, n, _SLAB_ROWS)


def _rows64(X: np.ndarray, start: int) -> np.ndarray:
    """One slab of ``X`` in float64 (a view when ``X`` is already float64)."""
    return np.asarray(X[start : start + _SLAB_ROWS], dtype=np.float64)


def _rows(X: np.ndarray, start: int) -> np.ndarray:
    """One slab of ``X`` as given."""
    return X[start : start + _SLAB_ROWS]


def _cells(y: np.ndarray, y_pred: np.ndarray) -> np.ndarray | None:
    """Confusion cell ``2 y + ŷ`` of each case when both are hard 0/1, else None."""
    if np.all((y_pred == 0) | (y_pred == 1)):
        return (2 * y + y_pred).astype(np.intp)
    return None


def _bernoulli_log_prob(target: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``(n, k)`` log-likelihood of (possibly soft) binary targets under per-component rates."""
    p = np.clip(p, _EPS, 1.0 - _EPS)
    if np.all((target == 0) | (target == 1)):  # hard targets: a lookup, the same numbers
        return np.where(target[:, None] == 1, np.log(p)[None, :], np.log1p(-p)[None, :])
    return np.outer(target, np.log(p)) + np.outer(1.0 - target, np.log1p(-p))


class _Stats:
    """The M-step's sums over cases, added a slab at a time, about a ``shift`` near the data (the
    window's mean): the variance ``E[(x-c)²] - (μ-c)²`` then keeps its digits where ``E[x²] - μ²``
    would lose them all (a component's spread small beside its distance from the origin)."""

    def __init__(self, d: int, k: int, shift: np.ndarray) -> None:
        self.shift = shift
        self.nk = np.zeros(k)
        self.first = np.zeros((d, k))
        self.second = np.zeros((d, k))
        self.y = np.zeros(k)
        self.y_pred = np.zeros(k)

    def add(self, rows: np.ndarray, resp: np.ndarray, y: np.ndarray, y_pred: np.ndarray) -> None:
        self.nk += resp.sum(axis=0)
        centered = rows - self.shift.astype(rows.dtype)
        resp = resp.astype(rows.dtype, copy=False)
        # (X.T @ resp), not resp.T @ X: the same product, but OpenBLAS is tens of times
        # faster with the long dimension inside (measured in bench/mixture_fit.py).
        self.first += centered.T @ resp
        centered *= centered
        self.second += centered.T @ resp
        wide = resp.astype(np.float64, copy=False)  # once for both label sums
        self.y += wide.T @ y
        self.y_pred += wide.T @ y_pred


@dataclass(frozen=True)
class MixtureParams:
    """A fitted mixture's parameters: where a later fit on a similar window may start EM from."""

    weights: np.ndarray
    means: np.ndarray
    variances: np.ndarray
    y_probs: np.ndarray
    y_pred_probs: np.ndarray

    @classmethod
    def of(cls, mixture: ErrorAwareMixture) -> MixtureParams:
        """The parameters of a fitted mixture."""
        mixture._check_fitted()
        return cls(
            mixture.weights_, mixture.means_, mixture.variances_, mixture.y_probs_, mixture.y_pred_probs_
        )

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_components, n_features)``."""
        return (int(self.means.shape[0]), int(self.means.shape[1]))


class _Terms:
    """A mixture's parameters as a log joint uses them, derived once per pass over the window
    rather than once per slab: its Gaussians, log weights and label cells."""

    def __init__(self, mixture: ErrorAwareMixture, dtype: np.dtype) -> None:
        self.gaussians = _Gaussians(mixture.means_, mixture.variances_, dtype)
        self.log_weights = np.log(mixture.weights_)
        self.cells = mixture._cell_terms()

    def joint(self, rows: np.ndarray, squares: np.ndarray | None = None) -> np.ndarray:
        """``(m, k)``: the Gaussian terms plus the log weights of a slab's rows."""
        out = self.gaussians.log_prob(rows, squares)
        out += self.log_weights
        return out


class _Check:
    """The EM bound of a window's training rows, taken during a pass over the whole window.

    Only the training rows' labels and predictions are held (the rows outside are never read);
    ``bound`` is their mean log-normaliser once the pass is done, computed as an E-step does.
    """

    def __init__(
        self, n: int, train: np.ndarray, y: np.ndarray, y_pred: np.ndarray, cells: np.ndarray | None
    ) -> None:
        self.n = len(train)
        # Positions in the training rows' arrays of the window's rows (-1 outside).
        self.at = np.full(n, -1, dtype=np.intp)
        self.at[train] = np.arange(len(train))
        self.y, self.y_pred, self.cells = y, y_pred, cells
        self.bound = -np.inf

    def add(
        self,
        mixture: ErrorAwareMixture,
        terms: _Terms,
        joint: np.ndarray,
        start: int,
        stop: int,
        *,
        low_precision: bool,
    ) -> float:
        """The sum of the slab's training rows' log-normalisers; ``joint`` is left as it is."""
        inside = self.at[start:stop] >= 0
        if not inside.any():
            return 0.0
        at = self.at[start:stop][inside]
        part = joint[inside]  # a copy
        cells = None if self.cells is None else self.cells[at]
        mixture._add_label_terms(part, self.y[at], self.y_pred[at], cells, terms)
        norm = (_softmax_rows32 if low_precision else _softmax_rows)(part)[1]
        return float(norm.sum())


class ErrorAwareMixture(SlicerEstimator):
    """Gaussian mixture over ``[embedding, label, prediction]`` with the label terms weighted by ``gamma``.

    Parameters
    ----------
    n_components
        Number of mixture components. Slices are chosen among them afterwards.
    gamma
        Weight of the label and prediction log-likelihood terms.
    max_iter
        Maximum number of EM iterations.
    tol
        Convergence threshold on the change of the mean per-sample lower bound.
    reg_covar
        Floor added to every variance; raise it when a fit collapses.
    init
        ``"confusion"`` seeds each component inside one cell of the confusion matrix
        ``(y, ŷ)`` (components shared equally over non-empty cells, then k-means++ within
        the cell); ``"random"`` draws random responsibilities.
    random_state
        Seed or ``numpy.random.RandomState``.
    init_params
        Parameters of an earlier fit to start EM from instead of ``init``, when they have
        ``n_components`` components over as many features as ``X`` (otherwise ``init`` is used).

    Attributes
    ----------
    weights_, means_, variances_
        Mixture weights ``(k,)``, means and diagonal variances ``(k, d)``.
    y_probs_, y_pred_probs_
        Per-component probability that the label, and the prediction, is the target class.
    converged_, n_iter_, lower_bound_
        Whether EM converged, the iterations run, and the mean per-sample lower bound of the
        last E-step (before the last M-step, which raises it by less than ``tol`` on convergence;
        a warm :meth:`fit_memberships` that converged at once stops at that E-step, with the
        parameters the bound is of).
    lower_bounds_
        The mean lower bound after every iteration (non-decreasing up to rounding).
    warm_started_
        Whether EM started from ``init_params``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 4))
    >>> y = (rng.random(200) < 0.5).astype(float)
    >>> m = ErrorAwareMixture(4, random_state=0).fit(X, y, y)
    >>> m.predict_proba(X, y, y).shape
    (200, 4)
    >>> bool(np.allclose(m.predict_proba(X, y, y).sum(axis=1), 1.0))
    True
    >>> m.predict(X, y, y).shape, m.score_samples(X).shape
    ((200,), (200,))
    """

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "gamma": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "reg_covar": [Interval(Real, 0, None, closed="neither")],
        "init": [StrOptions({"confusion", "random"})],
        "min_init_size": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
        "init_params": [MixtureParams, None],
    }

    def __init__(
        self,
        n_components: int = 25,
        *,
        gamma: float = 10.0,
        max_iter: int = 100,
        tol: float = 1e-4,
        reg_covar: float = 1e-6,
        init: str = "confusion",
        min_init_size: int = 40,
        random_state: int | np.random.RandomState | None = None,
        init_params: MixtureParams | None = None,
    ) -> None:
        self.n_components = n_components
        self.gamma = gamma
        self.max_iter = max_iter
        self.tol = tol
        self.reg_covar = reg_covar
        self.init = init
        self.min_init_size = min_init_size
        self.random_state = random_state
        self.init_params = init_params

    # -- fitting ---------------------------------------------------------------------------

    def fit(self, X: np.ndarray, y: np.ndarray, y_pred: np.ndarray) -> ErrorAwareMixture:
        """Fit by EM. ``y`` is 0/1; ``y_pred`` is 0/1 or the probability of the target class."""
        X, y, y_pred = self._begin(X, y, y_pred)
        self._run_em(X, y, y_pred, _cells(y, y_pred))
        return self

    def fit_memberships(
        self, X: np.ndarray, y: np.ndarray, y_pred: np.ndarray, train: np.ndarray
    ) -> np.ndarray:
        """Fit on the rows ``train`` of ``X`` and give :meth:`membership` ``(X, y)`` of every row.

        The predictions of the rows outside ``train`` are never read. A cold start is
        :meth:`fit` then :meth:`membership`. A warm start (``init_params``) takes two EM steps
        on the training rows, and the E-step that checks their convergence runs inside the
        memberships' pass over the window, which computes the same Gaussian terms: when the
        training rows' mean bound moved by less than ``tol``, the fit stops there, with the
        parameters that bound was computed at (``n_iter_`` 3: three E-steps, two M-steps);
        otherwise EM goes on as :meth:`fit` would and the memberships are computed again.
        On a window that slid by a few percent since the start was fitted, the first step moves
        the bound by some 1e-2 (the new cases re-estimate every component) and the second by
        1e-5 to 1e-7: the pass then saves the E-step and the M-step :meth:`fit` takes to see it.
        """
        train = np.asarray(train, dtype=np.intp)
        X = as_embedding(X, keep_float32=True)
        y = as_binary(y, len(X))
        y_pred = np.asarray(y_pred)
        if y_pred.shape[:1] != (len(X),):
            raise FitError(f"expected one prediction per row of X ({len(X)}), got shape {y_pred.shape}")
        Xt, yt, pt = self._begin(X[train], y[train], y_pred[train])
        cells = _cells(yt, pt)
        if not self.warm_started_:
            self._run_em(Xt, yt, pt, cells)
            return self._memberships(X, y)
        self.lower_bounds_: list[float] = [self._em_step(Xt, yt, pt, cells) for _ in range(_WARM_STEPS)]
        check = _Check(len(X), train, yt, pt, cells)
        membership = self._memberships(X, y, check)
        if abs(check.bound - self.lower_bounds_[-1]) < self.tol:
            self.lower_bounds_.append(check.bound)
            self.n_iter_, self.converged_, self.lower_bound_ = _WARM_STEPS + 1, True, check.bound
            return membership
        del membership
        self._run_em(Xt, yt, pt, cells, done=_WARM_STEPS)
        return self._memberships(X, y)

    def _begin(self, X: Any, y: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Check the input and set the starting parameters (``init_params`` where they fit)."""
        self._check_params()
        # float32 is kept (its products run in float32); anything else becomes float64, once.
        X, y, y_pred = self._validate(X, y, y_pred)
        n = X.shape[0]
        if n < self.n_components:
            raise FitError(
                f"expected at least n_components={self.n_components} samples, got {n}; "
                "lower n_components or widen the window"
            )
        self.n_features_in_ = X.shape[1]
        self._shift = X.mean(axis=0, dtype=np.float64)
        start = self.init_params
        self.warm_started_ = start is not None and start.shape == (self.n_components, X.shape[1])
        if start is not None and self.warm_started_:
            self._set_start(start)
        else:
            rng = check_random_state(self.random_state)
            resp = self._initial_resp(X, y, y_pred, rng)
            self._m_step(X, y, y_pred, resp)
        return X, y, y_pred

    def _run_em(
        self, X: np.ndarray, y: np.ndarray, y_pred: np.ndarray, cells: np.ndarray | None, done: int = 0
    ) -> None:
        """EM steps from the current parameters until the bound moves by less than ``tol``;
        ``done`` steps were taken already (their bounds in ``lower_bounds_``)."""
        if not done:
            self.lower_bounds_ = []
        del self.lower_bounds_[done:]
        self.converged_ = False
        previous = self.lower_bounds_[-1] if done else -np.inf
        for it in range(done + 1, self.max_iter + 1):
            bound = self._em_step(X, y, y_pred, cells)
            self.lower_bounds_.append(bound)
            self.n_iter_ = it
            if abs(bound - previous) < self.tol:
                self.converged_ = True
                break
            previous = bound
        # The last E-step's bound, as scikit-learn reports it: a final E-step over the whole
        # training set would cost a pass and change no parameter.
        self.lower_bound_ = self.lower_bounds_[-1]
        if not self.converged_:
            warnings.warn(
                f"EM did not converge in max_iter={self.max_iter} iterations; raise max_iter or tol",
                ConvergenceWarning,
                stacklevel=3,
            )

    def _set_start(self, start: MixtureParams) -> None:
        """Take an earlier fit's parameters (in float64, variances floored at ``reg_covar``)."""
        weights = np.maximum(np.asarray(start.weights, dtype=np.float64), _EPS)
        self.weights_ = weights / weights.sum()
        self.means_ = np.array(start.means, dtype=np.float64)
        self.variances_ = np.maximum(np.asarray(start.variances, dtype=np.float64), self.reg_covar)
        self.y_probs_ = np.clip(np.asarray(start.y_probs, dtype=np.float64), _EPS, 1 - _EPS)
        self.y_pred_probs_ = np.clip(np.asarray(start.y_pred_probs, dtype=np.float64), _EPS, 1 - _EPS)

    def _validate(self, X: Any, y: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        X = as_embedding(X, keep_float32=True)
        return X, as_binary(y, len(X)), as_binary(y_pred, len(X), name="y_pred", soft=True)

    def _initial_resp(
        self, X: np.ndarray, y: np.ndarray, y_pred: np.ndarray, rng: np.random.RandomState
    ) -> np.ndarray:
        n, k = X.shape[0], self.n_components
        if self.init == "random":
            resp = rng.random_sample((n, k))
            return resp / resp.sum(axis=1, keepdims=True)
        cell = 2 * y.astype(int) + (y_pred >= 0.5).astype(int)
        cells, counts = np.unique(cell, return_counts=True)
        # Share components equally among non-empty cells (error cells are small but are what
        # slices are made of), never more components than a cell has samples.
        # A cell gets no more than one component per ``min_init_size`` samples, so a small
        # error cell is not shattered into slices too small to test; the rest go to the
        # largest cells.
        cap = np.maximum(1, counts // max(self.min_init_size, 1))
        share = np.minimum(cap, k // len(cells))
        for i in np.argsort(-counts, kind="stable"):
            if share.sum() >= k:
                break
            share[i] += min(k - share.sum(), counts[i] - share[i])
        resp = np.zeros((n, k))
        start = 0
        for c, m in zip(cells, share, strict=True):
            if m == 0:  # fewer components than cells: this cell is left to the first E-step
                continue
            idx = np.flatnonzero(cell == c)
            centers = _kmeans_pp(X, idx, min(m, len(idx)), rng)
            dist = _sq_dist(X, centers, rows=idx)
            resp[idx, start + np.argmin(dist, axis=1)] = 1.0
            start += m
        return resp

    def _m_step(self, X: np.ndarray, y: np.ndarray, y_pred: np.ndarray, resp: np.ndarray) -> None:
        stats = _Stats(X.shape[1], resp.shape[1], self._shift)
        for start in _slabs(X.shape[0]):
            stop = start + _SLAB_ROWS
            stats.add(_rows(X, start), resp[start:stop], y[start:stop], y_pred[start:stop])
        self._set_params(stats)

    def _em_step(
        self, X: np.ndarray, y: np.ndarray, y_pred: np.ndarray, cells: np.ndarray | None = None
    ) -> float:
        """One E-step and the M-step after it, slab by slab; returns the E-step's mean lower bound.

        Each slab's responsibilities go straight into the M-step sums, so neither the ``(n, k)``
        responsibilities nor the squares of the cases are held for the whole window.
        """
        n = X.shape[0]
        stats = _Stats(X.shape[1], len(self.weights_), self._shift)
        norm = np.empty(n)
        terms = _Terms(self, X.dtype)
        for start in _slabs(n):
            stop = min(start + _SLAB_ROWS, n)
            rows = _rows(X, start)
            squares = rows * rows
            part = None if cells is None else cells[start:stop]
            joint = self._add_label_terms(
                terms.joint(rows, squares), y[start:stop], y_pred[start:stop], part, terms
            )
            resp, norm[start:stop] = (_softmax_rows32 if rows.dtype == np.float32 else _softmax_rows)(joint)
            stats.add(rows, resp, y[start:stop], y_pred[start:stop])
        self._set_params(stats)
        return float(np.mean(norm))

    def _set_params(self, stats: _Stats) -> None:
        nk = stats.nk + _EPS
        self.weights_ = nk / nk.sum()
        offset = stats.first.T / nk[:, None]  # the means less the shift
        self.means_ = offset + stats.shift
        second = stats.second.T / nk[:, None]
        self.variances_ = np.maximum(second - offset**2, 0.0) + self.reg_covar
        self.y_probs_ = np.clip(stats.y / nk, _EPS, 1 - _EPS)
        self.y_pred_probs_ = np.clip(stats.y_pred / nk, _EPS, 1 - _EPS)

    def _joint_log_prob(
        self,
        X: np.ndarray,
        y: np.ndarray | None,
        y_pred: np.ndarray | None,
        squares: np.ndarray | None = None,
        cells: np.ndarray | None = None,
    ) -> np.ndarray:
        """``(n, k)`` log joint; ``cells`` (from :func:`_cells`) turns the label terms into a lookup."""
        terms = _Terms(self, X.dtype)
        return self._add_label_terms(terms.joint(X, squares), y, y_pred, cells, terms)

    def _add_label_terms(
        self,
        out: np.ndarray,
        y: np.ndarray | None,
        y_pred: np.ndarray | None,
        cells: np.ndarray | None,
        derived: _Terms | None = None,
    ) -> np.ndarray:
        """``out`` (the Gaussian terms and log weights) plus the label and prediction terms."""
        if cells is not None:
            out += (self._cell_terms() if derived is None else derived.cells)[cells]
        elif y is not None and y_pred is not None:
            terms = _bernoulli_log_prob(y, self.y_probs_)
            terms += _bernoulli_log_prob(y_pred, self.y_pred_probs_)
            terms *= self.gamma
            out += terms
        elif y is not None:
            out += self.gamma * _bernoulli_log_prob(y, self.y_probs_)
        elif y_pred is not None:
            out += self.gamma * _bernoulli_log_prob(y_pred, self.y_pred_probs_)
        return out

    def _cell_terms(self) -> np.ndarray:
        """``(4, k)``: the weighted label and prediction terms of each cell ``2 y + ŷ`` (hard 0/1)."""
        p = np.clip(self.y_probs_, _EPS, 1.0 - _EPS)
        q = np.clip(self.y_pred_probs_, _EPS, 1.0 - _EPS)
        by_label = (np.log1p(-p), np.log(p))
        by_prediction = (np.log1p(-q), np.log(q))
        # The same operations, in the same order, as the elementwise terms: the same numbers.
        return np.stack([(by_label[c // 2] + by_prediction[c % 2]) * self.gamma for c in range(4)])

    def _e_step(self, X: np.ndarray, y: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        """Log responsibilities ``(n, k)``."""
        n = X.shape[0]
        log_resp = np.empty((n, len(self.weights_)))
        for start in _slabs(n):
            stop = min(start + _SLAB_ROWS, n)
            joint = self._joint_log_prob(_rows64(X, start), y[start:stop], y_pred[start:stop])
            joint -= logsumexp_rows(joint)[:, None]
            log_resp[start:stop] = joint
        return log_resp

    # -- prediction ------------------------------------------------------------------------

    def _inputs(
        self, X: Any, y: Any | None, y_pred: Any | None, *, keep_float32: bool = False
    ) -> tuple[Any, Any, Any]:
        self._check_fitted()
        X = self._check_X(X, keep_float32=keep_float32)
        yy = None if y is None else as_binary(y, len(X))
        pp = None if y_pred is None else as_binary(y_pred, len(X), name="y_pred", soft=True)
        return X, yy, pp

    def predict_proba(self, X: np.ndarray, y: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        """Slice membership given embedding, label and prediction (what Domino reports)."""
        X, y, y_pred = self._inputs(X, y, y_pred)
        return _exp_flushed(self._e_step(X, y, y_pred))

    def predict(
        self, X: np.ndarray, y: np.ndarray | None = None, y_pred: np.ndarray | None = None
    ) -> np.ndarray:
        """The most probable component of each sample, given what is passed (embedding at least)."""
        X, y, y_pred = self._inputs(X, y, y_pred)
        return np.asarray(np.argmax(self._joint_log_prob(X, y, y_pred), axis=1))

    def score_samples(
        self, X: np.ndarray, y: np.ndarray | None = None, y_pred: np.ndarray | None = None
    ) -> np.ndarray:
        """Per-sample log-likelihood under the mixture, of the embedding and of ``y``, ``y_pred`` if given.

        The label terms are weighted by ``gamma`` (so with ``gamma != 1`` this is an
        unnormalised log-density); with ``gamma = 0`` it is the diagonal Gaussian mixture's.
        """
        X, y, y_pred = self._inputs(X, y, y_pred)
        return logsumexp_rows(self._joint_log_prob(X, y, y_pred), overwrite=True)

    def membership(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """Slice membership blind to predictions: from the embedding, and the label when given.

        This is the membership used to test a slice on samples the fit did not see: neither
        a held-out sample's prediction nor its error can pull it into a high-error component.
        """
        X, labels, _ = self._inputs(X, y, None, keep_float32=True)
        return self._memberships(X, labels)

    def _memberships(
        self, X: np.ndarray, labels: np.ndarray | None, check: _Check | None = None
    ) -> np.ndarray:
        """:meth:`membership` of checked inputs, in one pass, a slab at a time (a float32 window
        is not copied whole); each slab's log joint is written into the output and normalised
        there. With ``check``, the training rows' EM bound under these parameters is taken from
        the same Gaussian terms."""
        n = X.shape[0]
        out = np.empty((n, len(self.weights_)))
        by_label = None
        if labels is not None and np.all((labels == 0) | (labels == 1)):
            by_label = self.gamma * _bernoulli_log_prob(np.array([0.0, 1.0]), self.y_probs_)
        total = 0.0
        terms = _Terms(self, X.dtype)
        for start in _slabs(n):
            stop = min(start + _SLAB_ROWS, n)
            joint = out[start:stop]
            joint[...] = terms.joint(_rows(X, start))
            if check is not None:
                total += check.add(self, terms, joint, start, stop, low_precision=X.dtype == np.float32)
            if labels is not None:
                part = labels[start:stop]
                if by_label is not None:  # hard labels: a lookup, the same numbers
                    joint += by_label[part.astype(np.intp)]
                else:
                    joint += self.gamma * _bernoulli_log_prob(part, self.y_probs_)
            _normalised(joint)
        if check is not None:
            check.bound = total / max(check.n, 1)
        return out

    def component_error_rates(self) -> np.ndarray:
        """Expected error rate of each component, ``P(y != ŷ | j)`` under independence within it."""
        self._check_fitted()
        p, q = self.y_probs_, self.y_pred_probs_
        return np.asarray(p * (1 - q) + (1 - p) * q)


def _normalised(joint: np.ndarray) -> np.ndarray:
    """Row-wise ``exp(joint - logsumexp(joint))``, in ``joint``: one ``exp`` (of the rows less
    their maximum) and a division by the row's sum. A saturated membership is exactly 1 (the
    other terms vanish beside it), so ties among such members are broken by typicality."""
    _shift_rows(joint)
    _exp_flushed_inplace(joint)
    joint /= joint.sum(axis=1, keepdims=True)
    return joint


def _exp_flushed(log_p: np.ndarray) -> np.ndarray:
    """``exp`` that flushes what would be subnormal to zero.

    With ``gamma = 10`` most responsibilities underflow; subnormal floats make the
    matrix products of the M-step tens of times slower, and they weigh nothing.
    """
    return np.exp(np.where(log_p < _LOG_TINY, -np.inf, log_p))


def _exp_flushed_inplace(log_p: np.ndarray) -> np.ndarray:
    """``exp`` into ``log_p`` itself (no ``(n, k)`` temporaries), zero at or below ``_LOG_FLUSH``.

    With ``gamma = 10`` most arguments lie far below: ``exp`` runs on the arguments clamped at
    the flush (at full speed, no subnormal out) and one multiplication zeroes what was clamped.
    Above the flush the numbers are a plain ``exp``'s, bit for bit.
    """
    np.maximum(log_p, _LOG_FLUSH, out=log_p)
    np.exp(log_p, out=log_p)
    np.multiply(log_p, log_p > _FLUSHED, out=log_p)
    return log_p


def _subset(X: np.ndarray, rows: np.ndarray | None, start: int) -> np.ndarray:
    """Slab ``start`` of ``X[rows]`` (of ``X`` when ``rows`` is None) in float64."""
    if rows is None:
        return _rows64(X, start)
    return np.asarray(X[rows[start : start + _SLAB_ROWS]], dtype=np.float64)


def _row_sq(X: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    n = X.shape[0] if rows is None else len(rows)
    out = np.empty(n)
    for start in _slabs(n):
        part = _subset(X, rows, start)
        out[start : start + len(part)] = np.sum(part * part, axis=1)
    return out


def _sq_dist(
    X: np.ndarray, C: np.ndarray, x2: np.ndarray | None = None, rows: np.ndarray | None = None
) -> np.ndarray:
    """Squared distances of ``X[rows]`` (all of ``X`` by default) to the rows of ``C``.

    ``x2`` holds those rows' squared norms when they are known already.
    """
    x2 = _row_sq(X, rows) if x2 is None else x2
    c2 = np.sum(C * C, axis=1)
    out = np.empty((len(x2), C.shape[0]))
    for start in _slabs(len(x2)):
        part = _subset(X, rows, start)
        dist = x2[start : start + len(part), None] - 2.0 * (part @ C.T)
        dist += c2[None, :]
        out[start : start + len(part)] = np.maximum(dist, 0.0)
    return out


def _kmeans_pp(X: np.ndarray, rows: np.ndarray, k: int, rng: np.random.RandomState) -> np.ndarray:
    """k-means++ seeding: ``k`` of ``X[rows]`` spread out by squared distance (no copy of them)."""
    x2 = _row_sq(X, rows)
    n = len(rows)
    centers = [np.asarray(X[rows[rng.randint(n)]], dtype=np.float64)]
    d2 = _sq_dist(X, centers[0][None, :], x2, rows)[:, 0]
    for _ in range(1, k):
        total = d2.sum()
        i = rng.randint(n) if total <= 0 else rng.choice(n, p=d2 / total)
        centers.append(np.asarray(X[rows[i]], dtype=np.float64))
        d2 = np.minimum(d2, _sq_dist(X, centers[-1][None, :], x2, rows)[:, 0])
    return np.asarray(centers)
