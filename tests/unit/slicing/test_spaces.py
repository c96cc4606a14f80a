"""Discovery over several spaces, and the term-rule slicer of the sparse view."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

from agent.errors import FitError, NotFittedError
from agent.metrics import precision_at_k
from agent.simulate import planted_gaussian
from agent.slicing import (
    ErrorAwareMixture,
    ErrorScoreSlicer,
    Space,
    TermRuleSlicer,
    discover_in_spaces,
    discover_slices,
)
from agent.slicing.base import contrast


def _mixture(seed: int) -> ErrorAwareMixture:
    return ErrorAwareMixture(6, random_state=seed)


def _terms(seed: int) -> TermRuleSlicer:
    return TermRuleSlicer(min_support=10)


Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _window(n: int, seed: int, *, share: float = 0.0) -> Arrays:
    """Random term presence (200 terms of 1-20% frequency); term 0 marks a group of ``share``."""
    rng = np.random.default_rng(seed)
    terms = (rng.random((n, 200)) < rng.uniform(0.01, 0.2, 200)).astype(np.float32)
    group = rng.random(n) < share
    terms[:, 0] = group
    y = (rng.random(n) < 0.4).astype(float)
    err = rng.random(n) < np.where(group, 0.5, 0.06)
    return terms, y, np.where(err, 1 - y, y), group


def test_null_false_alarms_stay_under_alpha_over_every_space():
    """Uniform errors, three spaces (two embeddings and the terms) per window: the family-wise
    rate over 40 seeded windows stays at or under alpha = 0.05 (2 of 40)."""
    alarms = 0
    for seed in range(40):
        data = planted_gaussian(600, 8, planted=False, seed=seed)
        terms, _, _, _ = _window(600, 1000 + seed)
        rng = np.random.default_rng(seed)
        spaces = [
            Space("fused", data.X, _mixture),
            Space("other", data.X[:, ::-1] + rng.normal(size=data.X.shape), _mixture),
            Space("terms", terms, _terms, permutations=199 if seed % 2 else 0),
        ]
        alarms += bool(discover_in_spaces(spaces, data.y, data.y_pred, alpha=0.05, random_state=seed))
    assert alarms <= 2, f"{alarms} false alarms in 40 null windows"


def test_whole_window_term_rules_keep_the_null_false_alarm_rate():
    """Rules chosen and tested on the same cases: the max-T calibration covers the selection.
    80 seeded null windows of 600 cases (200 terms, pairs of the best 30 too): at most 6 alarms,
    the 90th percentile of a binomial(80, 0.05)."""
    alarms = 0
    for seed in range(80):
        terms, y, _, _ = _window(600, 2000 + seed)
        rng = np.random.default_rng(seed)
        err = rng.random(600) < 0.08
        spaces = [Space("terms", terms, _terms, permutations=199)]
        alarms += bool(discover_in_spaces(spaces, y, np.where(err, 1 - y, y), random_state=seed))
    assert alarms <= 6, f"{alarms} false alarms in 80 null windows"


def test_a_small_term_slice_is_found_on_the_whole_window_and_missed_by_one_fold():
    """3% of 1,000 cases over two classes: about 15 members per class, 7 in a held-out fold,
    under the 10 a fold's test needs; the whole window tests all of them."""
    terms, y, y_pred, group = _window(1000, 11, share=0.03)
    whole = discover_in_spaces([Space("terms", terms, _terms, permutations=199)], y, y_pred, random_state=1)
    assert whole and whole[0].fold == -1
    assert precision_at_k([whole[0].ranking()], group, 10) >= 0.9
    assert whole[0].n_tested == int((whole[0].members).sum())
    folds = discover_in_spaces([Space("terms", terms, _terms)], y, y_pred, random_state=1)
    assert not any(precision_at_k([f.ranking()], group, 10) >= 0.9 for f in folds)


def test_calibrated_p_values_are_the_slicers_own_when_the_terms_are_the_only_space():
    terms, y, y_pred, _ = _window(1000, 12, share=0.05)
    found = discover_in_spaces([Space("terms", terms, _terms, permutations=99)], y, y_pred, random_state=4)
    slicer = _terms(0).fit_calibrated(terms, y, y_pred, n_permutations=99, random_state=4)
    assert found
    # One whole-window space weighs n_slices * n_splits, out of the same total: factor 1.
    assert found[0].p_value == pytest.approx(slicer.p_values_[found[0].component])
    # Never below what 99 permutations can show, doubled for taking the smaller of two p-values.
    assert (slicer.p_values_ >= 0).all() and (slicer.p_values_ <= 1).all()
    with pytest.raises(FitError, match="n_permutations"):
        _terms(0).fit_calibrated(terms, y, y_pred, n_permutations=0)
    # Same seed, same p-values.
    again = _terms(0).fit_calibrated(terms, y, y_pred, n_permutations=99, random_state=4)
    assert np.array_equal(again.p_values_, slicer.p_values_)


def test_the_bonferroni_factor_counts_the_components_of_every_space():
    data = planted_gaussian(1500, 16, seed=3)
    one = discover_slices(_mixture, data.X, data.y, data.y_pred, random_state=3)
    two = discover_in_spaces(
        [Space("a", data.X, _mixture), Space("b", data.X, _mixture)], data.y, data.y_pred, random_state=3
    )
    assert one and two
    # The same space twice chooses every component twice: twice the factor, the same raw p.
    assert two[0].p_value_raw == pytest.approx(one[0].p_value_raw)
    assert two[0].p_value == pytest.approx(min(1.0, 2 * one[0].p_value))
    # ...and the copy found in the second space is a duplicate, not a second slice.
    assert len(two) == len(one)


def test_a_slice_that_one_term_defines_is_found_in_the_term_space():
    terms, y, y_pred, group = _window(1000, 7, share=0.06)
    noise = np.random.default_rng(7).normal(size=(1000, 8))
    found = discover_in_spaces(
        [Space("fused", noise, _mixture), Space("terms", terms, _terms)], y, y_pred, random_state=7
    )
    assert found and found[0].space == "terms"
    assert precision_at_k([found[0].ranking()], group, 10) >= 0.9
    # The embedding alone, where the group does not show, finds nothing.
    assert discover_slices(_mixture, noise, y, y_pred, random_state=7) == []


def test_a_space_with_the_wrong_number_of_rows_is_a_clear_error():
    data = planted_gaussian(200, 4, seed=0)
    with pytest.raises(FitError, match="rows in space 'short'"):
        discover_in_spaces([Space("short", data.X[:100], _mixture)], data.y, data.y_pred)


def test_term_rules_are_estimators_with_validated_parameters():
    terms, y, y_pred, _ = _window(800, 2, share=0.05)
    slicer = TermRuleSlicer(n_rules=3)
    assert clone(slicer).get_params() == {
        "n_rules": 3,
        "min_support": 10,
        "n_pair_terms": 30,
        "both_classes": True,
        "half_level": 0.05,
    }
    with pytest.raises(NotFittedError):
        slicer.membership(terms)
    with pytest.raises(FitError, match="n_rules"):
        TermRuleSlicer(n_rules=0).fit(terms, y, y_pred)
    with pytest.raises(FitError, match="half_level"):
        TermRuleSlicer(half_level=0).fit(terms, y, y_pred)
    with pytest.raises(FitError, match="both_classes"):
        TermRuleSlicer(both_classes="yes").fit(terms, y, y_pred)  # type: ignore[arg-type]
    slicer.fit(terms, y, y_pred)
    assert 0 in slicer.rules_[:, 0]
    by_class = slicer.membership(terms, y)
    # Given labels, a rule holds only cases of its class; without, every carrier of its terms.
    for k, c in enumerate(slicer.classes_):
        assert set(np.unique(y[by_class[:, k] > 0])) <= {c}
    assert (slicer.membership(terms) >= by_class).all()
    with pytest.raises(FitError, match="term columns"):
        slicer.membership(terms[:, :5])


def test_a_pair_of_terms_is_a_rule_when_it_beats_either_term():
    rng = np.random.default_rng(4)
    n = 2000
    terms = (rng.random((n, 20)) < 0.3).astype(float)
    both = (terms[:, 1] > 0) & (terms[:, 2] > 0)
    y = (rng.random(n) < 0.5).astype(float)
    err = rng.random(n) < np.where(both, 0.6, 0.05)
    slicer = TermRuleSlicer(n_rules=1).fit(terms, y, np.where(err, 1 - y, y))
    assert sorted(slicer.rules_[0]) == [1, 2]


def test_the_error_score_slicer_ranks_the_group_first_and_validates_its_shares():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(1200, 10))
    group = X[:, 4] > 1.6
    y = (rng.random(1200) < 0.4).astype(float)
    err = rng.random(1200) < np.where(group, 0.6, 0.05)
    found = discover_in_spaces(
        [Space("image score", X, lambda s: ErrorScoreSlicer())], y, np.where(err, 1 - y, y), random_state=5
    )
    assert found and precision_at_k([found[0].ranking()], group, 10) >= 0.9
    with pytest.raises(FitError, match="shares"):
        ErrorScoreSlicer(shares=(0.0, 0.5)).fit(X, y, np.where(err, 1 - y, y))
    with pytest.raises(FitError, match="both misclassified and correct"):
        ErrorScoreSlicer().fit(X, y, y)


def test_sparse_term_presence_gives_the_same_rules_as_dense():
    """A stream's window of 50,000 reports and thousands of terms stays sparse end to end."""
    from scipy import sparse

    terms, y, y_pred, _ = _window(1200, 13, share=0.04)
    dense = discover_in_spaces([Space("terms", terms, _terms, permutations=99)], y, y_pred, random_state=2)
    thin = discover_in_spaces(
        [Space("terms", sparse.csc_matrix(terms), _terms, permutations=99)], y, y_pred, random_state=2
    )
    assert dense
    assert [np.flatnonzero(f.members).tolist() for f in thin] == [
        np.flatnonzero(f.members).tolist() for f in dense
    ]
    assert [f.p_value for f in thin] == [f.p_value for f in dense]
    with pytest.raises(FitError, match="got 100"):
        discover_in_spaces([Space("terms", sparse.csr_matrix(terms[:100]), _terms)], y, y_pred)
    folds = discover_in_spaces([Space("terms", sparse.csr_matrix(terms), _terms)], y, y_pred, random_state=2)
    assert [f.p_value for f in folds] == [
        f.p_value for f in discover_in_spaces([Space("terms", terms, _terms)], y, y_pred, random_state=2)
    ]


def _two_class_window(seed: int, per_class: int, rate: float) -> Arrays:
    """1,000 cases, 200 random terms; term 0 marks ``per_class`` cases of each class, erring at ``rate``."""
    rng = np.random.default_rng(seed)
    terms = (rng.random((1000, 200)) < rng.uniform(0.01, 0.2, 200)).astype(np.float32)
    y = (rng.random(1000) < 0.4).astype(float)
    group = np.zeros(1000, dtype=bool)
    for c in (0, 1):
        group[rng.choice(np.flatnonzero(y == c), per_class, replace=False)] = True
    terms[:, 0] = group
    err = rng.random(1000) < np.where(group, rate, 0.06)
    return terms, y, np.where(err, 1 - y, y), group


def test_a_group_too_small_in_either_class_is_a_rule_over_both():
    """9 carriers in each class: under the 10 a rule of one class needs, so only a rule over
    both classes can name the group. It is kept as one component per class, and the whole
    window's test finds it (10 seeded windows: at least 9 at p < 0.05)."""
    significant = 0
    for seed in range(10):
        terms, y, y_pred, _ = _two_class_window(seed, 9, 0.65)
        one = TermRuleSlicer(both_classes=False).fit(terms, y, y_pred)
        assert not (one.rules_ == 0).any()
        both = TermRuleSlicer().fit_calibrated(terms, y, y_pred, n_permutations=199, random_state=seed)
        on_group = np.flatnonzero((both.rules_ == 0).all(axis=1))
        assert sorted(both.classes_[on_group]) == [0.0, 1.0]
        assert both.joint_[on_group].all()
        assert both.strength_[on_group[0]] == both.strength_[on_group[1]]
        significant += bool((both.p_values_[on_group] < 0.05).all())
    assert significant >= 9, f"found in {significant} of 10 windows"


def test_a_class_whose_carriers_do_not_err_is_not_reported_with_the_other():
    """Term 0: 40 carriers of class 0, half of them errors; 40 of class 1 with 4 errors (10%,
    above the 6% elsewhere, but not significantly). A rule over both classes scores the term,
    and its class-1 component is gated out (p = 1): only the class-0 failure is reported."""
    for seed in range(5):
        terms, y, _, group = _two_class_window(seed, 40, 0.06)
        rng = np.random.default_rng([seed, 1])
        err = rng.random(1000) < 0.06
        for c, n_err in ((0, 20), (1, 4)):
            carriers = np.flatnonzero(group & (y == c))
            err[carriers] = False
            err[rng.choice(carriers, n_err, replace=False)] = True
        y_pred = np.where(err, 1 - y, y)
        assert contrast(group, y == 1, err.astype(float)).p_value() > 0.05  # the premise
        slicer = TermRuleSlicer().fit_calibrated(terms, y, y_pred, n_permutations=199, random_state=seed)
        joint = (slicer.rules_ == 0).all(axis=1) & slicer.joint_
        assert sorted(slicer.classes_[joint]) == [0.0, 1.0]
        assert slicer.p_values_[joint & (slicer.classes_ == 1)] == [1.0]
        assert slicer.p_values_[joint & (slicer.classes_ == 0)] < 0.05
        found = discover_in_spaces(
            [Space("terms", terms, _terms, permutations=199)], y, y_pred, random_state=seed
        )
        assert found and found[0].slice_class == 0 and found[0].members[group & (y == 0)].all()
        assert not any(f.members[group & (y == 1)].any() for f in found)
