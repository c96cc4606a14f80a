"""The error-aware Gaussian mixture (Domino-style) over embeddings, labels and predictions.

Each component ``j`` has a weight, a diagonal Gaussian over the embedding ``u`` and two
Bernoulli terms, one for the binary label ``y`` and one for the prediction ``ŷ``. The
per-sample log-likelihood under component ``j`` is::

    log π_j + log N(u | μ_j, diag σ²_j) + γ [log P(y | j) + log P(ŷ | j)]

and the mixture maximises the sum over samples of the log-sum-exp over components. ``γ``
(``gamma``) trades slice coherence in embedding space against slice error rate; the
multimodal slice-discovery paper uses ``γ = 10``. ``ŷ`` may be a hard 0/1 prediction or the
model's probability of the target class (a soft Bernoulli target).
"""

from __future__ import annotations

import logging
import warnings
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
from scipy.special import logsumexp
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions

from agent.errors import FitError
from agent.slicing.base import SlicerEstimator, as_binary, as_embedding

__all__ = ["ErrorAwareMixture", "diag_gaussian_log_prob", "mahalanobis_sq"]

log = logging.getLogger(__name__)

_EPS = 10 * np.finfo(np.float64).eps
_LOG_2PI = float(np.log(2.0 * np.pi))
_LOG_TINY = float(np.log(np.finfo(np.float64).tiny))


def diag_gaussian_log_prob(X: np.ndarray, means: np.ndarray, variances: np.ndarray) -> np.ndarray:
    """Log density of every row of ``X`` under every diagonal Gaussian, as an ``(n, k)`` array.

    Expanded as ``Σ x²/σ² - 2 x·μ/σ² + Σ μ²/σ²`` so that the work is two matrix products,
    never a Python loop over samples or components.
    """
    log_det = np.sum(np.log(variances), axis=1)
    return -0.5 * (X.shape[1] * _LOG_2PI + log_det + mahalanobis_sq(X, means, variances))


def mahalanobis_sq(X: np.ndarray, means: np.ndarray, variances: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance of every row of ``X`` to every diagonal Gaussian, ``(n, k)``."""
    precisions = 1.0 / variances
    quad = (
        (X * X) @ precisions.T - 2.0 * X @ (means * precisions).T + np.sum(means * means * precisions, axis=1)
    )
    return np.maximum(quad, 0.0)


def _bernoulli_log_prob(target: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``(n, k)`` log-likelihood of (possibly soft) binary targets under per-component rates."""
    p = np.clip(p, _EPS, 1.0 - _EPS)
    return np.outer(target, np.log(p)) + np.outer(1.0 - target, np.log1p(-p))


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
        Floor added to every variance (positive); raise it when a fit collapses.
    init
        ``"confusion"`` seeds each component inside one cell of the confusion matrix
        ``(y, ŷ)`` (components shared equally over non-empty cells, then k-means++ within
        the cell); ``"random"`` draws random responsibilities.
    min_init_size
        Samples per component, at least, when ``"confusion"`` shares components among cells.
    random_state
        Seed or ``numpy.random.RandomState``.

    Attributes
    ----------
    weights_, means_, variances_
        Mixture weights ``(k,)``, means and diagonal variances ``(k, d)``.
    y_probs_, y_pred_probs_
        Per-component probability that the label, and the prediction, is the target class.
    converged_, n_iter_, lower_bound_
        Whether EM converged, the iterations run, and the final mean per-sample lower bound.
    lower_bounds_
        The mean lower bound after every iteration (non-decreasing up to rounding).
    n_features_in_
        Width of the embedding seen in ``fit``.

    With ``gamma = 0`` the label terms weigh nothing and the fit is the EM of
    ``GaussianMixture(covariance_type="diag")`` from the same starting point.

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
    ) -> None:
        self.n_components = n_components
        self.gamma = gamma
        self.max_iter = max_iter
        self.tol = tol
        self.reg_covar = reg_covar
        self.init = init
        self.min_init_size = min_init_size
        self.random_state = random_state

    # -- fitting ---------------------------------------------------------------------------

    def fit(self, X: np.ndarray, y: np.ndarray, y_pred: np.ndarray) -> ErrorAwareMixture:
        """Fit by EM. ``y`` is 0/1; ``y_pred`` is 0/1 or the probability of the target class."""
        self._check_params()
        X, y, y_pred = self._validate(X, y, y_pred)
        n = X.shape[0]
        if n < self.n_components:
            raise FitError(
                f"expected at least n_components={self.n_components} samples, got {n}; "
                "lower n_components or widen the window"
            )
        self.n_features_in_ = X.shape[1]
        rng = check_random_state(self.random_state)
        resp = self._initial_resp(X, y, y_pred, rng)
        self._m_step(X, y, y_pred, resp)

        self.lower_bounds_: list[float] = []
        self.converged_ = False
        previous = -np.inf
        for it in range(1, self.max_iter + 1):
            log_resp, bound = self._e_step(X, y, y_pred)
            self._m_step(X, y, y_pred, _exp_flushed(log_resp))
            self.lower_bounds_.append(bound)
            self.n_iter_ = it
            if abs(bound - previous) < self.tol:
                self.converged_ = True
                break
            previous = bound
        _, self.lower_bound_ = self._e_step(X, y, y_pred)
        if not self.converged_:
            warnings.warn(
                f"EM did not converge in max_iter={self.max_iter} iterations; raise max_iter or tol",
                ConvergenceWarning,
                stacklevel=2,
            )
        return self

    def _validate(self, X: Any, y: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        X = as_embedding(X)
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
            centers = _kmeans_pp(X[idx], min(m, len(idx)), rng)
            dist = _sq_dist(X[idx], centers)
            resp[idx, start + np.argmin(dist, axis=1)] = 1.0
            start += m
        return resp

    def _m_step(self, X: np.ndarray, y: np.ndarray, y_pred: np.ndarray, resp: np.ndarray) -> None:
        nk = resp.sum(axis=0) + _EPS
        self.weights_ = nk / nk.sum()
        # (X.T @ resp).T, not resp.T @ X: the same product, but OpenBLAS is tens of times
        # faster with the long dimension inside (measured in bench/mixture_fit.py).
        self.means_ = (X.T @ resp).T / nk[:, None]
        self.variances_ = _weighted_variances(X, resp, self.means_, nk) + self.reg_covar
        self.y_probs_ = np.clip((resp.T @ y) / nk, _EPS, 1 - _EPS)
        self.y_pred_probs_ = np.clip((resp.T @ y_pred) / nk, _EPS, 1 - _EPS)

    def _joint_log_prob(self, X: np.ndarray, y: np.ndarray | None, y_pred: np.ndarray | None) -> np.ndarray:
        out = np.log(self.weights_) + diag_gaussian_log_prob(X, self.means_, self.variances_)
        if y is not None:
            out = out + self.gamma * _bernoulli_log_prob(y, self.y_probs_)
        if y_pred is not None:
            out = out + self.gamma * _bernoulli_log_prob(y_pred, self.y_pred_probs_)
        return out

    def _e_step(self, X: np.ndarray, y: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, float]:
        joint = self._joint_log_prob(X, y, y_pred)
        norm = logsumexp(joint, axis=1)
        return joint - norm[:, None], float(np.mean(norm))

    # -- prediction ------------------------------------------------------------------------

    def _joint(self, X: Any, y: Any | None, y_pred: Any | None) -> np.ndarray:
        self._check_fitted()
        X = self._check_X(X)
        yy = None if y is None else as_binary(y, len(X))
        pp = None if y_pred is None else as_binary(y_pred, len(X), name="y_pred", soft=True)
        return self._joint_log_prob(X, yy, pp)

    def predict_proba(self, X: np.ndarray, y: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        """Slice membership given embedding, label and prediction (what Domino reports)."""
        joint = self._joint(X, y, y_pred)
        return _exp_flushed(joint - logsumexp(joint, axis=1)[:, None])

    def predict(
        self, X: np.ndarray, y: np.ndarray | None = None, y_pred: np.ndarray | None = None
    ) -> np.ndarray:
        """The most probable component of each sample, given what is passed (embedding at least)."""
        return np.asarray(np.argmax(self._joint(X, y, y_pred), axis=1))

    def score_samples(
        self, X: np.ndarray, y: np.ndarray | None = None, y_pred: np.ndarray | None = None
    ) -> np.ndarray:
        """Per-sample log-likelihood under the mixture, of the embedding and of ``y``, ``y_pred`` if given.

        The label terms are weighted by ``gamma`` (so with ``gamma != 1`` this is an
        unnormalised log-density); with ``gamma = 0`` it is the diagonal Gaussian mixture's.
        """
        return np.asarray(logsumexp(self._joint(X, y, y_pred), axis=1))

    def membership(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """Slice membership blind to predictions: from the embedding, and the label when given.

        This is the membership used to test a slice on samples the fit did not see: neither
        a held-out sample's prediction nor its error can pull it into a high-error component.
        """
        joint = self._joint(X, y, None)
        return np.exp(joint - logsumexp(joint, axis=1)[:, None])

    def component_error_rates(self) -> np.ndarray:
        """Expected error rate of each component, ``P(y != ŷ | j)`` under independence within it."""
        self._check_fitted()
        p, q = self.y_probs_, self.y_pred_probs_
        return np.asarray(p * (1 - q) + (1 - p) * q)


def _weighted_variances(X: np.ndarray, resp: np.ndarray, means: np.ndarray, nk: np.ndarray) -> np.ndarray:
    """``Σ_i r_ij (x_i - μ_j)² / n_j`` for every component, by two passes, never ``E[x²] - μ²``.

    The one-pass form loses every digit when a component's spread is small beside its
    distance from the origin (and it can come out negative). Only rows with a responsibility
    in the component are visited: with ``gamma = 10`` that is a small part of the window.
    """
    out = np.zeros_like(means)
    for j in range(resp.shape[1]):
        rows = np.flatnonzero(resp[:, j])
        if rows.size:
            diff = X[rows] - means[j]
            out[j] = (resp[rows, j] @ (diff * diff)) / nk[j]
    return out


def _exp_flushed(log_p: np.ndarray) -> np.ndarray:
    """``exp`` that flushes what would be subnormal to zero.

    With ``gamma = 10`` most responsibilities underflow; subnormal floats make the
    matrix products of the M-step tens of times slower, and they weigh nothing.
    """
    return np.exp(np.where(log_p < _LOG_TINY, -np.inf, log_p))


def _sq_dist(X: np.ndarray, C: np.ndarray) -> np.ndarray:
    return np.maximum(np.sum(X * X, axis=1)[:, None] - 2.0 * X @ C.T + np.sum(C * C, axis=1)[None, :], 0.0)


def _kmeans_pp(X: np.ndarray, k: int, rng: np.random.RandomState) -> np.ndarray:
    """k-means++ seeding: ``k`` rows of ``X`` spread out by squared distance."""
    centers = [X[rng.randint(len(X))]]
    d2 = _sq_dist(X, centers[0][None, :])[:, 0]
    for _ in range(1, k):
        total = d2.sum()
        i = rng.randint(len(X)) if total <= 0 else rng.choice(len(X), p=d2 / total)
        centers.append(X[i])
        d2 = np.minimum(d2, _sq_dist(X, X[i][None, :])[:, 0])
    return np.asarray(centers)
