"""The errors-only variant: a Gaussian mixture over the misclassified samples of each class.

The multimodal slice-discovery paper proposes this as its future direction for noisy labels:
cluster the errors of one class by their features alone, instead of the whole window with
label terms. Each class gets up to ``n_components`` error clusters (scikit-learn's
``GaussianMixture``, diagonal covariance) plus one background Gaussian fitted to all samples of
that class, so that a correct case near no error cluster falls to the background.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp
from sklearn.mixture import GaussianMixture
from sklearn.utils import check_random_state

from agent.errors import FitError
from agent.slicing.mixture import diag_gaussian_log_prob

__all__ = ["ErrorsOnlyMixture"]


class ErrorsOnlyMixture:
    """Per-class Gaussian mixtures over misclassified samples.

    Parameters
    ----------
    n_components
        Error clusters per class, at most; fewer when a class has few errors.
    min_cluster_size
        Errors needed per cluster: a class with ``e`` errors gets
        ``min(n_components, e // min_cluster_size)`` clusters.
    reg_covar
        Variance floor passed to ``GaussianMixture``.
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
    """

    def __init__(
        self,
        n_components: int = 5,
        *,
        min_cluster_size: int = 10,
        reg_covar: float = 1e-6,
        random_state: int | np.random.RandomState | None = None,
    ) -> None:
        self.n_components = n_components
        self.min_cluster_size = min_cluster_size
        self.reg_covar = reg_covar
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray, y_pred: np.ndarray) -> ErrorsOnlyMixture:
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64).ravel()
        err = y != (np.asarray(y_pred, dtype=np.float64).ravel() >= 0.5)
        rng = check_random_state(self.random_state)
        means, variances, weights, classes = [], [], [], []
        bg_means, bg_vars = [], []
        for c in (0.0, 1.0):
            in_class = y == c
            bg_means.append(X[in_class].mean(axis=0) if in_class.any() else X.mean(axis=0))
            bg_vars.append((X[in_class].var(axis=0) if in_class.any() else X.var(axis=0)) + self.reg_covar)
            errors = X[in_class & err]
            k = min(self.n_components, len(errors) // max(self.min_cluster_size, 1))
            if k < 1:
                continue
            gm = GaussianMixture(
                k,
                covariance_type="diag",
                reg_covar=self.reg_covar,
                random_state=rng.randint(2**31 - 1),
            ).fit(errors)
            means.append(gm.means_)
            variances.append(gm.covariances_)
            weights.append(gm.weights_)
            classes.append(np.full(k, c))
        if not means:
            raise FitError(
                f"no class has {self.min_cluster_size} misclassified samples; "
                "lower min_cluster_size or widen the window"
            )
        self.means_ = np.vstack(means)
        self.variances_ = np.vstack(variances)
        self.weights_ = np.concatenate(weights)
        self.classes_ = np.concatenate(classes)
        self.background_means_ = np.vstack(bg_means)
        self.background_variances_ = np.vstack(bg_vars)
        self._error_share = {c: float(np.mean(err[y == c])) if np.any(y == c) else 0.0 for c in (0.0, 1.0)}
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "means_"):
            raise FitError("this ErrorsOnlyMixture is not fitted yet; call fit first")

    def predict_proba(self, X: np.ndarray, y: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        """Membership of each sample in each error cluster: only errors of the cluster's class belong."""
        self._check_fitted()
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64).ravel()
        err = y != (np.asarray(y_pred, dtype=np.float64).ravel() >= 0.5)
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

    def membership(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """Posterior over error clusters and class backgrounds, blind to predictions.

        With ``y``, each case is compared only with its own class's clusters and background.
        """
        self._check_fitted()
        X = np.asarray(X, dtype=np.float64)
        cluster_prior = np.array([self._error_share[c] for c in self.classes_]) * self.weights_
        bg_prior = np.array([1.0 - self._error_share[0.0], 1.0 - self._error_share[1.0]])
        joint = np.hstack(
            [
                np.log(np.maximum(cluster_prior, 1e-300))
                + diag_gaussian_log_prob(X, self.means_, self.variances_),
                np.log(np.maximum(bg_prior, 1e-300))
                + diag_gaussian_log_prob(X, self.background_means_, self.background_variances_),
            ]
        )
        if y is not None:
            y = np.asarray(y, dtype=np.float64).ravel()
            column_class = np.concatenate([self.classes_, [0.0, 1.0]])
            joint = np.where(y[:, None] == column_class[None, :], joint, -np.inf)
        post = np.exp(joint - logsumexp(joint, axis=1)[:, None])
        return np.asarray(post[:, : len(self.means_)])
