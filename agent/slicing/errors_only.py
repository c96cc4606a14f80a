"""The errors-only variant: a Gaussian mixture over the misclassified samples of each class.

The multimodal slice-discovery paper proposes this as its future direction for noisy labels:
cluster the errors of one class by their features alone, instead of the whole window with
label terms. Each class gets up to ``n_components`` error clusters (scikit-learn's
``GaussianMixture``, diagonal covariance) plus one background Gaussian fitted to all samples of
that class, so that a correct case near no error cluster falls to the background.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
from scipy.special import logsumexp
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval

from agent.errors import FitError
from agent.slicing.base import SlicerEstimator, as_binary, as_embedding
from agent.slicing.mixture import ErrorAwareMixture, diag_gaussian_log_prob

__all__ = ["ErrorsOnlyMixture"]


class ErrorsOnlyMixture(SlicerEstimator):
    """Per-class Gaussian mixtures over misclassified samples.

    The error clusters are fitted by :class:`~agent.slicing.mixture.ErrorAwareMixture` with
    ``gamma = 0`` (the EM of a diagonal ``GaussianMixture``, with variances by two passes),
    seeded by k-means++ over the class's errors.

    Parameters
    ----------
    n_components
        Error clusters per class, at most; fewer when a class has few errors.
    min_cluster_size
        Errors needed per cluster: a class with ``e`` errors gets
        ``min(n_components, e // min_cluster_size)`` clusters.
    reg_covar
        Variance floor (positive), of the clusters and of the class backgrounds.
    max_iter, tol
        EM iterations at most, and the convergence threshold on the mean lower bound.
    random_state
        Seed or ``numpy.random.RandomState``.

    Attributes
    ----------
    means_, variances_, weights_
        The error clusters of all classes, stacked ``(k, d)``; weights within their class.
    classes_
        The class (0 or 1) each cluster belongs to.
    background_means_, background_variances_
        One Gaussian per class over all of that class's samples.
    error_share_
        The share of errors in each class ``(2,)``: the prior of its clusters against its background.
    n_features_in_
        Width of the embedding seen in ``fit``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(300, 3))
    >>> y = (rng.random(300) < 0.5).astype(float)
    >>> y_pred = np.where(X[:, 0] > 1, 1 - y, y)
    >>> m = ErrorsOnlyMixture(2, random_state=0).fit(X, y, y_pred)
    >>> m.predict_proba(X, y, y_pred).shape[0]
    300
    >>> bool(m.predict(X, y).min() >= -1), m.score_samples(X).shape
    (True, (300,))
    """

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "min_cluster_size": [Interval(Integral, 1, None, closed="left")],
        "reg_covar": [Interval(Real, 0, None, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        n_components: int = 5,
        *,
        min_cluster_size: int = 10,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        tol: float = 1e-3,
        random_state: int | np.random.RandomState | None = None,
    ) -> None:
        self.n_components = n_components
        self.min_cluster_size = min_cluster_size
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray, y_pred: np.ndarray) -> ErrorsOnlyMixture:
        """Fit each class's error clusters and background. ``y`` is 0/1; ``y_pred`` 0/1 or a probability."""
        self._check_params()
        X = as_embedding(X)
        y = as_binary(y, len(X))
        err = y != (as_binary(y_pred, len(X), name="y_pred", soft=True) >= 0.5)
        rng = check_random_state(self.random_state)
        means, variances, weights, classes = [], [], [], []
        bg_means, bg_vars = [], []
        for c in (0.0, 1.0):
            in_class = y == c
            rows = X[in_class] if in_class.any() else X
            bg_means.append(rows.mean(axis=0))
            bg_vars.append(rows.var(axis=0) + self.reg_covar)  # numpy's var: two passes
            errors = X[in_class & err]
            k = min(self.n_components, len(errors) // self.min_cluster_size)
            if k < 1:
                continue
            zeros = np.zeros(len(errors))
            gm = ErrorAwareMixture(
                k,
                gamma=0.0,
                max_iter=self.max_iter,
                tol=self.tol,
                reg_covar=self.reg_covar,
                min_init_size=1,
                random_state=rng.randint(2**31 - 1),
            ).fit(errors, zeros, zeros)
            means.append(gm.means_)
            variances.append(gm.variances_)
            weights.append(gm.weights_)
            classes.append(np.full(k, c))
        if not means:
            raise FitError(
                f"no class has {self.min_cluster_size} misclassified samples; "
                "lower min_cluster_size or widen the window"
            )
        self.n_features_in_ = X.shape[1]
        self.means_ = np.vstack(means)
        self.variances_ = np.vstack(variances)
        self.weights_ = np.concatenate(weights)
        self.classes_ = np.concatenate(classes)
        self.background_means_ = np.vstack(bg_means)
        self.background_variances_ = np.vstack(bg_vars)
        self.error_share_ = np.array(
            [float(np.mean(err[y == c])) if np.any(y == c) else 0.0 for c in (0.0, 1.0)]
        )
        return self

    def predict_proba(self, X: np.ndarray, y: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        """Membership of each sample in each error cluster: only errors of the cluster's class belong."""
        self._check_fitted()
        X = self._check_X(X)
        y = as_binary(y, len(X))
        err = y != (as_binary(y_pred, len(X), name="y_pred", soft=True) >= 0.5)
        out = np.zeros((len(X), len(self.means_)))
        for c in (0.0, 1.0):
            rows = (y == c) & err
            cols = self.classes_ == c
            if rows.any() and cols.any():
                joint = np.log(self.weights_[cols]) + diag_gaussian_log_prob(
                    X[rows], self.means_[cols], self.variances_[cols]
                )
                out[np.ix_(rows, cols)] = np.exp(joint - logsumexp(joint, axis=1)[:, None])
        return out

    def _joint(self, X: Any, y: Any | None) -> np.ndarray:
        """``(n, k + 2)`` log prior times density: the error clusters, then the two class backgrounds."""
        self._check_fitted()
        X = self._check_X(X)
        cluster_prior = self.error_share_[self.classes_.astype(int)] * self.weights_
        bg_prior = 1.0 - self.error_share_
        joint = np.hstack(
            [
                np.log(np.maximum(cluster_prior, 1e-300))
                + diag_gaussian_log_prob(X, self.means_, self.variances_),
                np.log(np.maximum(bg_prior, 1e-300))
                + diag_gaussian_log_prob(X, self.background_means_, self.background_variances_),
            ]
        )
        if y is not None:
            y = as_binary(y, len(X))
            column_class = np.concatenate([self.classes_, [0.0, 1.0]])
            joint = np.where(y[:, None] == column_class[None, :], joint, -np.inf)
        return joint

    def membership(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """Posterior over error clusters and class backgrounds, blind to predictions.

        With ``y``, each case is compared only with its own class's clusters and background.
        """
        joint = self._joint(X, y)
        post = np.exp(joint - logsumexp(joint, axis=1)[:, None])
        return np.asarray(post[:, : len(self.means_)])

    def predict(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """The most probable error cluster of each sample, or -1 where a class background wins."""
        joint = self._joint(X, y)
        best = np.argmax(joint, axis=1)
        return np.where(best < len(self.means_), best, -1)

    def score_samples(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """Per-sample log-density under the clusters and backgrounds (of the sample's class, given ``y``).

        With ``y`` it is the class-conditional log-density; without, the two classes weigh
        one half each.
        """
        out = logsumexp(self._joint(X, y), axis=1)
        return np.asarray(out if y is not None else out - np.log(2.0))
