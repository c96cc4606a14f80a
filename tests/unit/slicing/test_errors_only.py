from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.base import clone

from agent.errors import FitError, NotFittedError
from agent.slicing import ErrorsOnlyMixture


def _data(seed: int = 0, n: int = 600):
    """Two classes; the errors of class 0 sit in a tight blob far from everything else."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    y = (rng.random(n) < 0.5).astype(float)
    blob = (y == 0) & (rng.random(n) < 0.15)
    X[blob] = rng.normal(loc=6.0, scale=0.3, size=(blob.sum(), 3))
    y_pred = np.where(blob, 1 - y, y)
    flip = (y == 1) & (rng.random(n) < 0.1)
    y_pred[flip] = 1 - y[flip]
    return X, y, y_pred, blob


@pytest.mark.parametrize(
    ("param", "value"),
    [("reg_covar", -1.0), ("n_components", 0), ("min_cluster_size", 0), ("max_iter", 0), ("tol", -1.0)],
)
def test_parameters_are_validated_in_fit(param, value):
    X, y, y_pred, _ = _data()
    m = ErrorsOnlyMixture(2).set_params(**{param: value})
    with pytest.raises(FitError, match=param):
        m.fit(X, y, y_pred)
    assert m.get_params()[param] == value


def test_clone_refits_to_the_same_clusters():
    X, y, y_pred, _ = _data()
    m = ErrorsOnlyMixture(2, min_cluster_size=5, random_state=4).fit(X, y, y_pred)
    c = clone(m)
    assert c.get_params() == m.get_params() and not hasattr(c, "means_")
    np.testing.assert_array_equal(c.fit(X, y, y_pred).means_, m.means_)


@pytest.mark.parametrize("method", ["membership", "predict", "score_samples"])
def test_prediction_is_guarded_until_fit(method):
    X, y, y_pred, _ = _data()
    with pytest.raises(NotFittedError, match="not fitted"):
        getattr(ErrorsOnlyMixture(2), method)(X)
    m = ErrorsOnlyMixture(2).fit(X, y, y_pred)
    with pytest.raises(FitError, match="features"):
        getattr(m, method)(X[:, :1])


def test_predict_finds_the_error_blob_and_leaves_the_rest_to_the_background():
    X, y, y_pred, blob = _data(1)
    m = ErrorsOnlyMixture(1, random_state=0).fit(X, y, y_pred)
    pred = m.predict(X, y)
    cluster0 = np.flatnonzero(m.classes_ == 0)
    assert np.isin(pred[blob], cluster0).all()
    assert np.mean(pred[~blob & (y == 0)] == -1) > 0.95
    np.testing.assert_allclose(m.means_[cluster0[0]], X[blob].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(m.variances_[cluster0[0]], X[blob].var(axis=0) + m.reg_covar, rtol=1e-6)


def test_score_samples_matches_a_naive_class_conditional_density():
    X, y, y_pred, _ = _data(2)
    m = ErrorsOnlyMixture(2, random_state=0).fit(X, y, y_pred)
    for c in (0, 1):
        rows = X[y == c]
        parts = [
            np.log(m.error_share_[c] * m.weights_[j])
            + multivariate_normal(m.means_[j], np.diag(m.variances_[j])).logpdf(rows)
            for j in np.flatnonzero(m.classes_ == c)
        ]
        parts.append(
            np.log(1 - m.error_share_[c])
            + multivariate_normal(m.background_means_[c], np.diag(m.background_variances_[c])).logpdf(rows)
        )
        np.testing.assert_allclose(m.score_samples(rows, y[y == c]), logsumexp(parts, axis=0), rtol=1e-9)
    both = np.logaddexp(m.score_samples(X, np.zeros(len(X))), m.score_samples(X, np.ones(len(X))))
    np.testing.assert_allclose(m.score_samples(X), both - np.log(2), rtol=1e-9)


def test_membership_rows_sum_to_at_most_one_and_predict_proba_only_takes_errors():
    X, y, y_pred, _ = _data(3)
    m = ErrorsOnlyMixture(3, random_state=0).fit(X, y, y_pred)
    assert np.all(m.membership(X, y).sum(axis=1) <= 1 + 1e-12)
    proba = m.predict_proba(X, y, y_pred)
    correct = y == (y_pred >= 0.5)
    assert np.all(proba[correct] == 0)
    np.testing.assert_allclose(proba[~correct].sum(axis=1), 1.0)


def test_too_few_errors_name_the_knob():
    X, y, _, _ = _data()
    with pytest.raises(FitError, match="min_cluster_size"):
        ErrorsOnlyMixture(2).fit(X, y, y)
