from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import multivariate_normal
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.mixture import GaussianMixture
from sklearn.utils.validation import check_is_fitted

from agent.errors import FitError, NotFittedError
from agent.slicing import ErrorAwareMixture
from agent.slicing.mixture import diag_gaussian_log_prob


def _data(seed: int = 0, n: int = 300, d: int = 5):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) + rng.integers(0, 3, n)[:, None] * 3
    y = (rng.random(n) < 0.4).astype(float)
    y_pred = np.where(rng.random(n) < 0.15, 1 - y, y)
    return X, y, y_pred


def test_gaussian_log_prob_matches_scipy():
    rng = np.random.default_rng(1)
    X, means, variances = rng.normal(size=(7, 3)), rng.normal(size=(2, 3)), rng.uniform(0.5, 2, (2, 3))
    ours = diag_gaussian_log_prob(X, means, variances)
    ref = np.column_stack([multivariate_normal(means[j], np.diag(variances[j])).logpdf(X) for j in range(2)])
    np.testing.assert_allclose(ours, ref, rtol=1e-10)


def test_responsibilities_match_a_naive_loop():
    X, y, y_pred = _data()
    m = ErrorAwareMixture(4, gamma=3.0, random_state=0).fit(X, y, y_pred)
    resp = m.predict_proba(X, y, y_pred)
    for i in range(0, len(X), 37):
        joint = []
        for j in range(4):
            lp = np.log(m.weights_[j]) + multivariate_normal(m.means_[j], np.diag(m.variances_[j])).logpdf(
                X[i]
            )
            for target, p in ((y[i], m.y_probs_[j]), (y_pred[i], m.y_pred_probs_[j])):
                lp += 3.0 * (target * np.log(p) + (1 - target) * np.log(1 - p))
            joint.append(lp)
        joint = np.array(joint)
        np.testing.assert_allclose(resp[i], np.exp(joint - np.logaddexp.reduce(joint)), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("init", ["confusion", "random"])
def test_lower_bound_never_falls_and_resp_sum_to_one(init):
    X, y, y_pred = _data(2)
    m = ErrorAwareMixture(6, init=init, max_iter=200, tol=1e-8, random_state=0).fit(X, y, y_pred)
    bounds = np.array(m.lower_bounds_)
    assert np.all(np.diff(bounds) >= -1e-8 * np.abs(bounds[1:]))
    np.testing.assert_allclose(m.predict_proba(X, y, y_pred).sum(axis=1), 1.0)
    np.testing.assert_allclose(m.membership(X).sum(axis=1), 1.0)


def test_confusion_init_separates_error_cells():
    X, y, y_pred = _data(3)
    m = ErrorAwareMixture(8, gamma=10, random_state=0).fit(X, y, y_pred)
    # With gamma = 10 every component is nearly pure in (y, y_pred).
    assert np.all((m.y_probs_ < 0.05) | (m.y_probs_ > 0.95))
    assert np.all((m.y_pred_probs_ < 0.05) | (m.y_pred_probs_ > 0.95))


def test_fit_is_deterministic_given_random_state():
    X, y, y_pred = _data(4)
    a = ErrorAwareMixture(5, random_state=7).fit(X, y, y_pred)
    b = ErrorAwareMixture(5, random_state=7).fit(X, y, y_pred)
    np.testing.assert_array_equal(a.means_, b.means_)


def test_constructor_only_stores_parameters():
    m = ErrorAwareMixture(3, gamma=-1.0, init="nonsense")
    assert (m.n_components, m.gamma, m.init) == (3, -1.0, "nonsense")
    X, y, y_pred = _data()
    with pytest.raises(FitError, match="gamma"):
        m.fit(X, y, y_pred)
    assert (m.gamma, m.init) == (-1.0, "nonsense")


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("reg_covar", -1.0),
        ("reg_covar", 0.0),
        ("gamma", -0.5),
        ("n_components", 0),
        ("max_iter", 0),
        ("tol", -1e-3),
        ("init", "kmeans"),
        ("min_init_size", 0),
        ("random_state", "seven"),
    ],
)
def test_parameters_are_validated_in_fit_against_their_constraints(param, value):
    X, y, y_pred = _data()
    m = ErrorAwareMixture(3).set_params(**{param: value})
    with pytest.raises(FitError, match=param):
        m.fit(X, y, y_pred)
    assert m.get_params()[param] == value
    assert not hasattr(m, "means_")


def test_clone_and_get_params_round_trip():
    m = ErrorAwareMixture(7, gamma=2.5, reg_covar=1e-3, init="random", random_state=3)
    params = m.get_params()
    assert params == {
        "n_components": 7,
        "gamma": 2.5,
        "max_iter": 100,
        "tol": 1e-4,
        "reg_covar": 1e-3,
        "init": "random",
        "min_init_size": 40,
        "random_state": 3,
        "init_params": None,
    }
    X, y, y_pred = _data()
    fitted = m.fit(X, y, y_pred)
    c = clone(fitted)
    assert c.get_params() == params
    assert not hasattr(c, "means_")
    np.testing.assert_array_equal(c.fit(X, y, y_pred).means_, fitted.means_)


@pytest.mark.parametrize("method", ["predict_proba", "predict", "score_samples", "membership"])
def test_prediction_is_guarded_until_fit(method):
    X, y, y_pred = _data()
    m = ErrorAwareMixture(2)
    args = (X, y, y_pred) if method == "predict_proba" else (X,)
    with pytest.raises(NotFittedError, match="not fitted"):
        getattr(m, method)(*args)
    with pytest.raises(SklearnNotFittedError):  # callers of scikit-learn's check catch it too
        check_is_fitted(m)
    m.fit(X, y, y_pred)
    check_is_fitted(m)
    with pytest.raises(FitError, match="features"):
        getattr(m, method)(X[:, :2], *args[1:])


def test_predict_is_the_most_probable_component():
    X, y, y_pred = _data(6)
    m = ErrorAwareMixture(5, gamma=2.0, random_state=0).fit(X, y, y_pred)
    np.testing.assert_array_equal(m.predict(X, y, y_pred), m.predict_proba(X, y, y_pred).argmax(axis=1))
    np.testing.assert_array_equal(m.predict(X, y), m.membership(X, y).argmax(axis=1))


def test_score_samples_matches_a_naive_mixture_density():
    X, y, y_pred = _data(7)
    m = ErrorAwareMixture(3, gamma=1.0, random_state=0).fit(X, y, y_pred)
    dens = sum(
        m.weights_[j]
        * multivariate_normal(m.means_[j], np.diag(m.variances_[j])).pdf(X)
        * np.where(y == 1, m.y_probs_[j], 1 - m.y_probs_[j])
        for j in range(3)
    )
    np.testing.assert_allclose(m.score_samples(X, y), np.log(dens), rtol=1e-9)
    # The mean lower bound of EM is the mean score of the full joint, under the parameters of the
    # last E-step (as scikit-learn's): the M-step after it raises it, by less than tol here.
    final = m.score_samples(X, y, y_pred).mean()
    assert m.lower_bound_ == m.lower_bounds_[-1]
    assert m.lower_bound_ - 1e-12 <= final < m.lower_bound_ + m.tol


def test_variances_are_stable_far_from_the_origin():
    rng = np.random.default_rng(8)
    X = 1e8 + rng.normal(scale=1e-2, size=(400, 3))
    y = np.zeros(400)
    m = ErrorAwareMixture(1, reg_covar=1e-12, random_state=0).fit(X, y, y)
    # E[x^2] - mu^2 here is rounding noise of order 1 (or 0, clipped); two passes keep ~1e-4.
    np.testing.assert_allclose(m.variances_[0], X.var(axis=0) + 1e-12, rtol=1e-6)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_gamma_zero_is_the_em_of_a_diagonal_gaussian_mixture():
    X, y, y_pred = _data(9, n=400, d=4)
    k, n_iter = 4, 25
    # One EM step from our own initialisation gives a starting point both fits share.
    start = ErrorAwareMixture(k, gamma=0.0, max_iter=1, tol=0.0, random_state=0).fit(X, y, y_pred)
    ours = ErrorAwareMixture(k, gamma=0.0, max_iter=n_iter + 1, tol=0.0, random_state=0).fit(X, y, y_pred)
    ref = GaussianMixture(
        k,
        covariance_type="diag",
        reg_covar=1e-6,
        max_iter=n_iter,
        tol=0.0,
        weights_init=start.weights_,
        means_init=start.means_,
        precisions_init=1.0 / start.variances_,
    ).fit(X)
    np.testing.assert_allclose(ours.weights_, ref.weights_, rtol=1e-6)
    np.testing.assert_allclose(ours.means_, ref.means_, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(ours.variances_, ref.covariances_, rtol=1e-6)
    np.testing.assert_allclose(ours.lower_bounds_[-1], ref.lower_bound_, rtol=1e-9)
    np.testing.assert_allclose(ours.score_samples(X), ref.score_samples(X), rtol=1e-6)
    np.testing.assert_allclose(ours.membership(X), ref.predict_proba(X), atol=1e-6)
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))


def test_degenerate_inputs_name_the_knob():
    X, y, y_pred = _data(n=10)
    with pytest.raises(FitError, match="n_components"):
        ErrorAwareMixture(25).fit(X, y, y_pred)
    with pytest.raises(FitError, match="binary"):
        ErrorAwareMixture(2).fit(X, y + 2, y_pred)
    with pytest.raises(FitError, match="NaN"):
        ErrorAwareMixture(2).fit(np.full_like(X, np.nan), y, y_pred)
    with pytest.raises(FitError, match="not fitted"):
        ErrorAwareMixture(2).membership(X)


def test_identical_points_do_not_collapse():
    X = np.zeros((40, 3))
    y = np.r_[np.zeros(20), np.ones(20)]
    m = ErrorAwareMixture(2, random_state=0).fit(X, y, y)
    assert np.all(np.isfinite(m.predict_proba(X, y, y)))
    assert np.all(m.variances_ >= m.reg_covar)


def test_fewer_components_than_confusion_cells():
    X, y, y_pred = _data(5)
    m = ErrorAwareMixture(2, random_state=0).fit(X, y, y_pred)
    np.testing.assert_allclose(m.predict_proba(X, y, y_pred).sum(axis=1), 1.0)


def test_logsumexp_rows_matches_scipy_and_ignores_what_underflows():
    from scipy.special import logsumexp

    from agent.slicing.mixture import logsumexp_rows

    rng = np.random.default_rng(2)
    a = rng.normal(size=(500, 25)) * 400  # most terms underflow against the row's largest
    a[3] = -1e300
    a[4, :] = 7.0
    np.testing.assert_allclose(logsumexp_rows(a), logsumexp(a, axis=1), rtol=1e-14)


def test_float32_input_is_fitted_in_float32_products_to_float64_parameters():
    X, y, y_pred = _data(3, n=600, d=6)
    X32 = X.astype(np.float32)
    a = ErrorAwareMixture(5, random_state=0).fit(X32, y, y_pred)
    b = ErrorAwareMixture(5, random_state=0).fit(X32.astype(np.float64), y, y_pred)
    # Products in float32, sums and parameters in float64: the same fit to float32's precision.
    assert a.means_.dtype == np.float64 and a.variances_.dtype == np.float64
    assert a.n_iter_ == b.n_iter_
    np.testing.assert_allclose(a.means_, b.means_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.variances_, b.variances_, rtol=1e-4)
    np.testing.assert_allclose(a.lower_bounds_, b.lower_bounds_, rtol=1e-6)
    # Memberships of the same parameters: float32 slabs change them by rounding only.
    np.testing.assert_allclose(a.membership(X32, y), a.membership(X32.astype(np.float64), y), atol=1e-5)
    assert np.array_equal(a.predict(X32, y, y_pred), b.predict(X32, y, y_pred))


def test_cold_fit_memberships_is_fit_then_membership():
    X, y, y_pred = _data(5, n=700, d=5)
    train = np.flatnonzero(np.arange(len(y)) % 3 != 0)
    for X_ in (X, X.astype(np.float32)):
        m = ErrorAwareMixture(6, random_state=0)
        membership = m.fit_memberships(X_, y, y_pred, train)
        fitted = ErrorAwareMixture(6, random_state=0).fit(X_[train], y[train], y_pred[train])
        np.testing.assert_array_equal(m.means_, fitted.means_)
        np.testing.assert_array_equal(membership, fitted.membership(X_, y))


def test_exp_flush_is_a_plain_exp_above_the_flush_and_zero_at_or_below():
    from agent.slicing.mixture import _LOG_FLUSH, _LOG_TINY, _exp_flushed_inplace

    a = np.array([[0.0, -1.0, -699.9, -700.0, -705.0, _LOG_TINY, _LOG_TINY - 1e-9, -800.0, -np.inf, np.nan]])
    expected = np.where(a > _LOG_FLUSH, np.exp(a), 0.0)
    expected[np.isnan(a)] = np.nan
    np.testing.assert_array_equal(_exp_flushed_inplace(a.copy()), expected)
    assert _LOG_FLUSH > _LOG_TINY  # nothing subnormal comes out


@pytest.mark.parametrize("slab", [7, 64, 1000])
def test_slabs_change_nothing_but_rounding(monkeypatch, slab):
    import agent.slicing.mixture as mixture

    X, y, y_pred = _data(4, n=900, d=5)
    whole = ErrorAwareMixture(6, random_state=0).fit(X, y, y_pred)
    monkeypatch.setattr(mixture, "_SLAB_ROWS", slab)
    sliced = ErrorAwareMixture(6, random_state=0).fit(X, y, y_pred)
    assert sliced.n_iter_ == whole.n_iter_
    np.testing.assert_allclose(sliced.means_, whole.means_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(sliced.lower_bounds_, whole.lower_bounds_, rtol=1e-12)
    np.testing.assert_allclose(sliced.membership(X, y), whole.membership(X, y), atol=1e-9)
    np.testing.assert_allclose(
        sliced.predict_proba(X, y, y_pred), whole.predict_proba(X, y, y_pred), atol=1e-9
    )


def _slid_windows(seed: int = 3, n: int = 4000, d: int = 16, shift: int = 200):
    """Two windows of one stream, the second slid by ``shift`` cases, in float32, with folds."""
    rng = np.random.default_rng(seed)
    total = n + shift
    X = (rng.normal(size=(total, d)) + rng.integers(0, 6, total)[:, None] * 2.5).astype(np.float32)
    y = (rng.random(total) < 0.4).astype(float)
    y_pred = np.where(rng.random(total) < 0.1, 1 - y, y)
    fold = rng.integers(0, 2, total)
    return (X[:n], y[:n], y_pred[:n], fold[:n]), (X[shift:], y[shift:], y_pred[shift:], fold[shift:])


def _warm_pair(seed: int = 3, *, soft: bool = False):
    from agent.slicing.mixture import MixtureParams

    (X0, y0, p0, f0), (X1, y1, p1, f1) = _slid_windows(seed)
    if soft:  # the model's probability of the target class, not a hard prediction
        p0, p1 = (np.clip(np.abs(p - 0.2), 0.0, 1.0) for p in (p0, p1))
    first = ErrorAwareMixture(8, random_state=0).fit(X0[f0 == 1], y0[f0 == 1], p0[f0 == 1])
    return MixtureParams.of(first), (X1, y1, p1, np.flatnonzero(f1 == 1))


@pytest.mark.parametrize("soft", [False, True])
def test_warm_fit_memberships_checks_convergence_in_the_memberships_pass(soft):
    start, (X, y, y_pred, train) = _warm_pair(soft=soft)
    m = ErrorAwareMixture(8, random_state=0, init_params=start)
    membership = m.fit_memberships(X, y, y_pred, train)
    # Two EM steps, then the memberships' pass found the bound still: it stopped there.
    assert m.warm_started_ and m.converged_ and m.n_iter_ == 3
    assert abs(m.lower_bounds_[-1] - m.lower_bounds_[-2]) < m.tol
    # The memberships are those of the parameters returned, and the bound is theirs.
    np.testing.assert_array_equal(membership, m.membership(X, y))
    bound = m.score_samples(X[train], y[train], y_pred[train]).mean()
    assert m.lower_bound_ == pytest.approx(bound, rel=1e-6)
    # The parameters of fit's first two steps, to the bit; fit itself takes one M-step more,
    # which moves the bound by under tol and the memberships' argmax almost nowhere.
    with pytest.warns(ConvergenceWarning):
        two = ErrorAwareMixture(8, max_iter=2, random_state=0, init_params=start)
        two.fit(X[train], y[train], y_pred[train])
    for name in ("weights_", "means_", "variances_", "y_probs_", "y_pred_probs_"):
        np.testing.assert_array_equal(getattr(m, name), getattr(two, name))
    fitted = ErrorAwareMixture(8, random_state=0, init_params=start).fit(X[train], y[train], y_pred[train])
    assert fitted.n_iter_ == 3
    assert (membership.argmax(axis=1) == fitted.membership(X, y).argmax(axis=1)).mean() > 0.999


def test_fit_memberships_never_reads_held_out_predictions():
    start, (X, y, y_pred, train) = _warm_pair()
    held_out = np.setdiff1d(np.arange(len(y)), train)
    flipped = y_pred.copy()
    flipped[held_out] = 1 - flipped[held_out]
    poisoned = y_pred.copy()
    poisoned[held_out] = np.nan
    for init in (start, None):
        runs = [ErrorAwareMixture(8, random_state=0, init_params=init) for _ in range(3)]
        out = [
            r.fit_memberships(X, y, p, train) for r, p in zip(runs, (y_pred, flipped, poisoned), strict=True)
        ]
        for other, r in zip(out[1:], runs[1:], strict=True):
            np.testing.assert_array_equal(other, out[0])
            np.testing.assert_array_equal(r.means_, runs[0].means_)


def test_warm_fit_memberships_goes_on_with_em_when_the_check_fails():
    from agent.slicing.mixture import MixtureParams

    start, (X, y, y_pred, train) = _warm_pair()
    # A start far from this window's fit: two steps do not reach it.
    poor = MixtureParams(
        start.weights, start.means[::-1] + 3.0, start.variances * 4, start.y_probs, start.y_pred_probs
    )
    m = ErrorAwareMixture(8, random_state=0, init_params=poor)
    membership = m.fit_memberships(X, y, y_pred, train)
    assert m.warm_started_ and m.converged_ and m.n_iter_ > 3
    np.testing.assert_array_equal(membership, m.membership(X, y))
    fitted = ErrorAwareMixture(8, random_state=0, init_params=poor).fit(X[train], y[train], y_pred[train])
    assert m.n_iter_ == fitted.n_iter_
    np.testing.assert_allclose(m.means_, fitted.means_, rtol=1e-4, atol=1e-4)
