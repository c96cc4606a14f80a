"""A slicer that learns, on the fitting fold, where in one embedding the errors are.

A group that one modality shows clearly (a burned-in annotation that a linear probe on the image
embedding finds at AUC 0.99) can still be a minor direction of that embedding's variance, and
an unsupervised mixture cuts along the major ones. :class:`ErrorScoreSlicer` instead fits a
regularised logistic regression of "misclassified" on the embedding, on the fitting rows only,
and offers as components the cases whose error score is in the top ``share`` of their class, for
a few shares. The held-out fold never shapes the score, so the honest test (:mod:`.significance`)
applies to these components as to a mixture's.
"""

from __future__ import annotations

from numbers import Real
from typing import Any, ClassVar

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.utils._param_validation import Interval

from agent.errors import FitError
from agent.slicing.base import SlicerEstimator, as_binary, as_embedding, as_shares

__all__ = ["ErrorScoreSlicer"]


class ErrorScoreSlicer(SlicerEstimator):
    """Components "class ``c``, error score in the class's top ``share``", the score fitted on errors.

    Parameters
    ----------
    shares
        Shares of each class, among the fitting rows, that make one component each.
    C
        Inverse L2 strength of the logistic regression (on standardised features).

    Attributes
    ----------
    classes_
        The class of each component (every share for class 0, then for class 1).
    means_
        The score threshold of each component.
    coef_, intercept_
        The fitted error score (on standardised features).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(600, 5))
    >>> y = rng.integers(0, 2, 600).astype(float)
    >>> err = rng.random(600) < np.where(X[:, 2] > 1.5, 0.7, 0.05)
    >>> s = ErrorScoreSlicer().fit(X, y, np.where(err, 1 - y, y))
    >>> int(np.argmax(np.abs(s.coef_)))
    2
    """

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "shares": ["array-like"],
        "C": [Interval(Real, 0, None, closed="neither")],
    }

    def __init__(self, shares: tuple[float, ...] = (0.03, 0.05, 0.1, 0.2), *, C: float = 0.1) -> None:
        self.shares = shares
        self.C = C

    def fit(self, X: np.ndarray, y: np.ndarray, y_pred: np.ndarray) -> ErrorScoreSlicer:
        """Fit the error score and each component's threshold on these rows (the fitting fold)."""
        self._check_params()
        shares = as_shares(self.shares)
        X = as_embedding(X)
        y = as_binary(y, len(X))
        err = y != (as_binary(y_pred, len(X), name="y_pred", soft=True) >= 0.5)
        if err.all() or not err.any():
            raise FitError("expected both misclassified and correct cases to fit an error score")
        self.center_ = X.mean(axis=0)
        self.scale_ = np.where((s := X.std(axis=0)) > 0, s, 1.0)
        model = LogisticRegression(C=self.C, class_weight="balanced", max_iter=500)
        model.fit((X - self.center_) / self.scale_, err)
        self.coef_ = model.coef_.ravel()
        self.intercept_ = float(model.intercept_[0])
        self.n_features_in_ = X.shape[1]
        score = self._score(X)
        classes, thresholds = [], []
        for c in (0.0, 1.0):
            in_class = score[y == c]
            for share in shares:
                if len(in_class):
                    classes.append(c)
                    thresholds.append(float(np.quantile(in_class, 1 - share)))
        self.classes_ = np.asarray(classes)
        self.means_ = np.asarray(thresholds)
        return self

    def membership(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """``(n, k)``: the case's error score where it clears a component's threshold (and, given
        ``y``, is of its class), 0 elsewhere; the score ranks the members."""
        self._check_fitted()
        X = self._check_X(X)
        score = self._score(X)
        above = score[:, None] >= self.means_[None, :]
        if y is not None:
            above &= as_binary(y, len(X))[:, None] == self.classes_[None, :]
        return np.where(above, score[:, None], 0.0)

    def _score(self, X: np.ndarray) -> np.ndarray:
        """The error probability, in (0, 1)."""
        z = ((X - self.center_) / self.scale_) @ self.coef_ + self.intercept_
        return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -30, 30))))
