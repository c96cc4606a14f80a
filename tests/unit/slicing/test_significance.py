from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest

from agent.metrics import precision_at_k
from agent.simulate import planted_gaussian
from agent.slicing import ErrorAwareMixture, ErrorsOnlyMixture, discover_slices

SEEDS = range(6)


def _find(data, slicer="error_aware", seed=0):
    def make(s):
        if slicer == "errors_only":
            return ErrorsOnlyMixture(5, random_state=s)
        return ErrorAwareMixture(25, random_state=s)

    return discover_slices(make, data.X, data.y, data.y_pred, random_state=seed)


@pytest.mark.parametrize("slicer", ["error_aware", "errors_only"])
@pytest.mark.parametrize("seed", SEEDS)
def test_planted_slice_is_recovered(slicer, seed):
    data = planted_gaussian(2000, 32, seed=seed)
    findings = _find(data, slicer, seed)
    assert findings, "the planted slice was not reported"
    assert precision_at_k([f.ranking() for f in findings], data.in_group, k=10) >= 0.9
    top = findings[0]
    assert top.error_rate > 2 * top.rest_error_rate
    assert top.p_value < 1e-6


@pytest.mark.parametrize("slicer", ["error_aware", "errors_only"])
@pytest.mark.parametrize("seed", SEEDS)
def test_no_slice_is_reported_when_errors_are_uniform(slicer, seed):
    data = planted_gaussian(2000, 32, planted=False, seed=seed)
    assert _find(data, slicer, seed) == []


def test_in_sample_test_would_have_been_fooled():
    """The reason for cross-fitting: on the fitting samples, uniform errors look like a slice."""
    from scipy.stats import fisher_exact

    data = planted_gaussian(2000, 32, planted=False, seed=0)
    m = ErrorAwareMixture(25, random_state=0).fit(data.X, data.y, data.y_pred)
    err = data.y != data.y_pred
    resp = m.predict_proba(data.X, data.y, data.y_pred)
    j = int(np.argmax((resp.T @ err) / resp.sum(axis=0)))
    inside = resp[:, j] > 0.5
    _, p = fisher_exact(
        [[err[inside].sum(), (~err[inside]).sum()], [err[~inside].sum(), (~err[~inside]).sum()]],
        alternative="greater",
    )
    assert p < 1e-6  # naive in-sample p-value: wildly "significant"
    assert _find(data) == []  # the honest procedure reports nothing


def test_slices_are_sorted_by_p_value_and_bounded():
    data = planted_gaussian(3000, 16, seed=1)
    findings = _find(data)
    assert len(findings) <= 5
    assert [f.p_value for f in findings] == sorted(f.p_value for f in findings)


def test_all_correct_or_all_wrong_reports_nothing():
    data = planted_gaussian(200, 4, seed=0)
    assert discover_slices(lambda s: ErrorAwareMixture(3, random_state=s), data.X, data.y, data.y) == []


class _Counting:
    """A slicer that passes through to ErrorAwareMixture and counts the rows of every membership call."""

    calls: ClassVar[list[tuple[int, bool]]] = []

    def __init__(self, seed):
        self.inner = ErrorAwareMixture(25, random_state=seed)

    def fit(self, X, y, y_pred):
        self.inner.fit(X, y, y_pred)
        return self

    def membership(self, X, y=None):
        self.calls.append((len(X), y is not None))
        return self.inner.membership(X, y)


def test_memberships_are_computed_once_per_fold():
    data = planted_gaussian(3000, 16, seed=1)
    _Counting.calls = []
    findings = discover_slices(_Counting, data.X.astype(np.float32), data.y, data.y_pred)
    assert findings
    with_label = [n for n, labelled in _Counting.calls if labelled]
    without = [n for n, labelled in _Counting.calls if not labelled]
    # One pass over the window per fold with the label; one without it per fold a slice came from.
    assert with_label == [3000, 3000]
    assert len(without) == len({f.fold for f in findings}) and set(without) == {3000}


def test_float32_and_float64_windows_give_the_same_slices():
    data = planted_gaussian(3000, 16, seed=2)
    a = discover_slices(
        lambda s: ErrorAwareMixture(25, random_state=s), data.X.astype(np.float32), data.y, data.y_pred
    )
    b = discover_slices(
        lambda s: ErrorAwareMixture(25, random_state=s),
        data.X.astype(np.float32).astype(np.float64),
        data.y,
        data.y_pred,
    )
    assert [np.flatnonzero(f.members).tolist() for f in a] == [np.flatnonzero(f.members).tolist() for f in b]
    assert [f.p_value for f in a] == [f.p_value for f in b]
