"""The neighbour scan: where errors are dense among nearest neighbours, calibrated by permutation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

from agent.errors import FitError, NotFittedError
from agent.metrics import precision_at_k
from agent.slicing import ErrorAwareMixture, NeighbourScanSlicer, Space, discover_in_spaces
from agent.slicing.base import contrast, max_t_p_values, tail_p_values

Window = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _window(n: int, seed: int, *, share: float, shift: float = 1.5, error_in: float = 0.5) -> Window:
    """32 dimensions, 8 of them ten times wider; a group of ``share`` moved along a narrow one
    (a minor direction of the variance, as a burned-in marker is in an image embedding)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 32))
    X[:, :8] *= 10
    group = rng.random(n) < share
    X[group, 20] += shift * 2.5
    X[group, 21] += shift * 2.5
    y = (rng.random(n) < 0.4).astype(float)
    err = rng.random(n) < np.where(group, error_in, 0.06)
    return X, y, np.where(err, 1 - y, y), group


def _scan(seed: int) -> NeighbourScanSlicer:
    return NeighbourScanSlicer(min_support=10)


def test_a_group_along_a_minor_direction_is_found_by_the_scan_not_the_mixture():
    X, y, y_pred, group = _window(1000, 3, share=0.05)
    scan = discover_in_spaces(
        [Space("image neighbours", X, _scan, permutations=199)], y, y_pred, random_state=3
    )
    assert scan and scan[0].space == "image neighbours" and scan[0].fold == -1
    assert precision_at_k([scan[0].ranking()], group, 10) >= 0.9
    mixture = discover_in_spaces(
        [Space("image", X, lambda s: ErrorAwareMixture(16, random_state=s))], y, y_pred, random_state=3
    )
    assert not any(precision_at_k([f.ranking()], group, 10) >= 0.9 for f in mixture)


def test_the_scan_keeps_the_null_false_alarm_rate():
    """60 seeded windows with the same geometry and no error group: at most 5 alarms, the 90th
    percentile of a binomial(60, 0.05)."""
    alarms = 0
    for seed in range(60):
        X, y, y_pred, _ = _window(600, 100 + seed, share=0.05, error_in=0.06)
        alarms += bool(
            discover_in_spaces(
                [Space("image neighbours", X, _scan, permutations=99)], y, y_pred, random_state=seed
            )
        )
    assert alarms <= 5, f"{alarms} false alarms in 60 null windows"


def test_the_scan_is_an_estimator_with_validated_parameters():
    X, y, y_pred, _ = _window(400, 5, share=0.05)
    scan = NeighbourScanSlicer(n_neighbors=5)
    assert clone(scan).get_params()["n_neighbors"] == 5
    with pytest.raises(NotFittedError):
        scan.membership(X)
    with pytest.raises(FitError, match="n_neighbors"):
        NeighbourScanSlicer(n_neighbors=0).fit(X, y, y_pred)
    with pytest.raises(FitError, match="shares"):
        NeighbourScanSlicer(shares=(0.5, 1.0)).fit(X, y, y_pred)
    with pytest.raises(FitError, match="n_permutations"):
        scan.fit_calibrated(X, y, y_pred, n_permutations=0)
    scan.fit_calibrated(X, y, y_pred, n_permutations=19, random_state=2)
    # A class's components hold exactly their share of the class; the halves of the scan over
    # both classes together hold their share of the window; all only cases of their class.
    inside = scan.membership(X, y) > 0
    for j, c in enumerate(scan.classes_):
        if not scan.joint_[j]:
            assert inside[:, j].sum() == round(scan.shares_[j] * (y == c).sum())
        assert set(np.unique(y[inside[:, j]])) <= {c}
    joint = np.flatnonzero(scan.joint_)
    assert len(joint) == 2 * len(set(scan.shares_[joint]))
    for share in set(scan.shares_[joint]):
        halves = joint[scan.shares_[joint] == share]
        assert sorted(scan.classes_[halves]) == [0.0, 1.0]
        assert inside[:, halves].sum() == round(share * len(y))
        assert scan.strength_[halves[0]] == scan.strength_[halves[1]]
    with pytest.raises(FitError, match="rows it was fitted on"):
        scan.membership(X[:100])
    # Same seed, same scan and p-values.
    again = NeighbourScanSlicer(n_neighbors=5).fit_calibrated(X, y, y_pred, n_permutations=19, random_state=2)
    assert np.array_equal(again.p_values_, scan.p_values_)
    assert np.array_equal(again.membership(X, y), scan.membership(X, y))


def test_a_case_is_never_its_own_neighbour_even_on_a_sampled_reference():
    """Above ``max_reference`` the neighbours come from a seeded sample; a case's own error must
    still not raise its score (duplicated rows would otherwise pull each other in)."""
    rng = np.random.default_rng(0)
    X = np.repeat(rng.normal(size=(300, 4)), 2, axis=0)  # every row twice
    y = np.zeros(600)
    err = np.zeros(600, dtype=bool)
    err[::2] = True  # exactly one of each twin is an error
    scan = NeighbourScanSlicer(n_neighbors=1, max_reference=400, min_support=5).fit(
        X, y, np.where(err, 1 - y, y)
    )
    neighbour = scan._components[0].graph.indices  # one per case (n_neighbors=1, one class)
    assert (neighbour != np.arange(600)).all()
    # A twin whose other half is among the reference cases has it as its nearest neighbour.
    twin = np.arange(600) ^ 1
    sampled = np.isin(twin, np.unique(neighbour))
    assert (neighbour[sampled] == twin[sampled]).mean() > 0.95


def test_a_class_above_max_cases_is_scanned_on_a_seeded_sample():
    """The scan's cost is bounded on any window: a larger class is read through a uniform sample,
    whose shares and members the components take; a planted group is found in it all the same."""
    rng = np.random.default_rng(3)
    n = 6000
    X = rng.normal(size=(n, 8))
    group = np.zeros(n, dtype=bool)
    group[rng.choice(n, n // 20, replace=False)] = True
    X[group, 5] += 6.0
    y = np.zeros(n)
    y[: n // 2] = 1.0
    err = rng.random(n) < np.where(group, 0.6, 0.05)
    y_pred = np.where(err, 1 - y, y)
    scan = NeighbourScanSlicer(max_cases=1000).fit_calibrated(X, y, y_pred, n_permutations=99)
    for p in scan._components:
        assert len(p.rows) == 1000 and p.size == round(p.share * 1000)
    inside = scan.membership(X, y) > 0
    # At most the two classes' largest share of 1,000, and the largest share of the 2,000 read.
    assert inside[:, ~scan.joint_].any(axis=1).sum() <= 2 * 100
    assert inside[:, scan.joint_].any(axis=1).sum() <= 200
    best = int(np.argmax(scan.strength_))
    assert scan.p_values_[best] < 0.05
    assert group[inside[:, best]].mean() > 0.8
    again = NeighbourScanSlicer(max_cases=1000).fit_calibrated(X, y, y_pred, n_permutations=99)
    assert np.array_equal(again.membership(X, y), scan.membership(X, y))
    # At or under max_cases nothing is sampled: the default scan of a smaller window is unchanged.
    small = slice(0, 1500), slice(3000, 4500)
    rows = np.r_[small[0], small[1]]
    a = NeighbourScanSlicer().fit(X[rows], y[rows], y_pred[rows])
    b = NeighbourScanSlicer(max_cases=1500).fit(X[rows], y[rows], y_pred[rows])
    assert np.array_equal(a.membership(X[rows], y[rows]), b.membership(X[rows], y[rows]))


def test_max_cases_is_validated():
    with pytest.raises(FitError, match="max_cases"):
        NeighbourScanSlicer(max_cases=1).fit(np.zeros((50, 2)), np.zeros(50), np.zeros(50))


def test_members_are_ranked_core_first():
    """A member's rank is the mean of its neighbours' error rate and of the share of its neighbours
    that are members too: over seeded windows with a faint group, the first ten members hold more
    of the group than a ranking by the neighbours' error rate alone (the fringe comes last)."""
    core_hits = rate_hits = 0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        X = rng.normal(size=(1000, 12))
        group = np.zeros(1000, dtype=bool)
        group[rng.choice(1000, 50, replace=False)] = True
        X[group, 7] += 2.5  # a faint direction: the group's neighbourhoods are mixed
        y = rng.integers(0, 2, 1000).astype(float)
        err = rng.random(1000) < np.where(group, 0.5, 0.06)
        scan = NeighbourScanSlicer(both_classes=False).fit(X, y, np.where(err, 1 - y, y))
        j = int(np.argmax(scan.strength_))
        p = scan._components[j]
        members = np.flatnonzero(scan._members[:, j])
        chosen = np.searchsorted(p.rows, members)
        inside = np.zeros(len(p.rows))
        inside[chosen] = 1.0
        rate = np.asarray(p.graph @ err[p.rows].astype(float)) + p.jitter
        core = np.asarray(p.graph @ inside)
        got = scan.membership(X, y)[members, j]
        np.testing.assert_allclose(got, 0.5 * (rate[chosen] + core[chosen]))
        core_hits += group[members[np.argsort(-got, kind="stable")[:10]]].sum()
        rate_hits += group[members[np.argsort(-rate[chosen], kind="stable")[:10]]].sum()
    assert core_hits > rate_hits, (core_hits, rate_hits)


def _spread_group(seed: int, n_group: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """1,000 cases in 16 dimensions, 40% positives; a group of ``n_group`` drawn over both classes
    along one direction, erring at 50% against 6%."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(1000, 16))
    group = np.zeros(1000, dtype=bool)
    group[rng.choice(1000, n_group, replace=False)] = True
    X[group, 9] += 6.0
    y = (rng.random(1000) < 0.4).astype(float)
    err = rng.random(1000) < np.where(group, 0.5, 0.06)
    return X, y, np.where(err, 1 - y, y), group


def test_a_group_over_both_classes_is_found_by_the_scan_over_both():
    """A marker that both classes carry holds half its errors in each. The scan over both classes
    (neighbours of any class, errors beyond each class's rate) finds a 3% group in 10 seeded
    windows of 1,000 at least 9 times, and a 2% group more often than the scans of one class."""

    def found(n_group: int, both: bool) -> int:
        hits = 0
        for seed in range(10):
            X, y, y_pred, group = _spread_group(seed, n_group)
            scan = lambda s: NeighbourScanSlicer(both_classes=both)  # noqa: E731
            got = discover_in_spaces([Space("s", X, scan, permutations=199)], y, y_pred, random_state=seed)
            hits += bool(got) and precision_at_k([got[0].ranking()], group, 10) >= 0.9
        return hits

    assert found(30, True) >= 9
    assert found(20, True) > found(20, False)


def test_a_half_whose_class_does_not_err_is_not_reported():
    """The group's cases of class 1 err at the base rate: the scan over both classes takes them in
    (their neighbours err) beside the erring class-0 cases. Each half takes the larger of the
    share's p-value and its own, and 1 where its own is above 0.05: in some windows a share's
    class-0 half is significant while its class-1 half is not reported."""
    stopped = 0
    for seed in range(6):
        X, y, _, group = _spread_group(seed, 80)
        rng = np.random.default_rng([seed, 1])
        err = rng.random(1000) < np.where(group & (y == 0), 0.5, 0.06)
        y_pred = np.where(err, 1 - y, y)
        scan = NeighbourScanSlicer().fit_calibrated(X, y, y_pred, n_permutations=99, random_state=seed)
        inside = scan.membership(X, y) > 0
        for j in np.flatnonzero(scan.joint_ & (scan.p_values_ < 1)):
            own = contrast(inside[:, j], y == scan.classes_[j], err.astype(float)).p_value()
            assert own <= 0.05 and scan.p_values_[j] >= own
        assert (scan.p_values_[scan.classes_ == 0] < 0.05).any()
        for share in set(scan.shares_[scan.joint_]):
            halves = scan.joint_ & (scan.shares_ == share)
            p0 = scan.p_values_[halves & (scan.classes_ == 0)]
            p1 = scan.p_values_[halves & (scan.classes_ == 1)]
            stopped += bool(p0 < 0.05) and bool(p1 == 1.0)
    assert stopped > 0


def test_a_slice_beyond_every_permutation_is_ranked_by_its_tail_estimate():
    """The permutation floor is a bound, not a p-value. A strong small group that the scan finds
    (5%, 70% errors) and a broad, weaker one that a cross-fitted mixture finds in another space
    (20% of the window, 45% errors): the scan's slice is beyond all 199
    permutations, so its p-value was the floor, and the mixture's held-out p-value, below that
    floor, ranked the weaker group first. Ranked by the permutation maxima's tail estimate, the
    strong group comes first; what is significant does not change."""
    X, y, y_pred, group = _window(1000, 3, share=0.05, error_in=0.7)
    rng = np.random.default_rng(4)
    broad = (rng.random(len(y)) < 0.2) & ~group
    W = rng.normal(size=(len(y), 4))
    W[broad, 0] += 8
    y_pred = np.where(broad & (rng.random(len(y)) < 0.45), 1 - y, y_pred)
    spaces = [
        Space("image neighbours", X, _scan, permutations=199),
        Space("report", W, lambda s: ErrorAwareMixture(2, random_state=s)),
    ]
    found = discover_in_spaces(spaces, y, y_pred, random_state=3)
    scan, other = found[0], next(f for f in found if f.space == "report")
    assert scan.space == "image neighbours" and precision_at_k([scan.ranking()], group, 10) >= 0.9
    assert broad[other.members].mean() > 0.9
    floor = (scan.p_value / scan.p_value_raw) / 200  # the floor, adjusted as the scan's p-value is
    assert scan.p_value < other.p_value < floor  # the floor would have ranked the broad group first
    assert [f.p_value for f in found] == sorted(f.p_value for f in found)


def test_the_tail_estimate_only_lowers_p_values_at_the_floor():
    """``p_values_`` (what decides) are the permutation test's; ``p_estimates_`` differ from them
    only for scores beyond every permutation's largest, where they are below the floor and keep
    the order of the scores."""
    X, y, y_pred, _ = _window(1000, 3, share=0.05, error_in=0.7)
    scan = NeighbourScanSlicer().fit_calibrated(X, y, y_pred, n_permutations=199, random_state=3)
    beyond = scan.strength_ > scan.null_max_.max()
    assert beyond.any() and not beyond.all()
    assert np.all(scan.p_values_[beyond] >= 1 / 200)  # the floor, or a gated half's own p-value
    assert np.all(scan.p_estimates_[beyond] < 1 / 200)
    assert np.array_equal(scan.p_estimates_[~beyond], scan.p_values_[~beyond])
    one = beyond & ~scan.joint_  # one-class components: no gate, the order of their scores
    order = np.argsort(-scan.strength_[one])
    assert np.all(np.diff(scan.p_estimates_[one][order]) >= 0)


@pytest.mark.parametrize(
    ("null", "observed"),
    [
        (np.full(500, -np.inf), [3.0]),  # no permutation produced a component
        (np.full(500, 4.0), [9.0]),  # every maximum equal: no tail to fit
        (np.arange(50.0), [80.0]),  # 50 permutations: 5 maxima in the tail, too few
    ],
)
def test_the_tail_estimate_keeps_the_floor_where_it_cannot_be_fitted(null, observed):
    assert np.array_equal(tail_p_values(null, np.array(observed)), max_t_p_values(null, np.array(observed)))


def test_the_tail_estimate_is_never_zero():
    null = 5 + np.random.default_rng(0).exponential(0.01, 500)  # a tail of scale 0.01
    p = tail_p_values(null, np.array([1e6, 10.0]))
    assert np.all(p > 0) and p[0] <= p[1] < 1 / 501


@pytest.mark.parametrize("max_reference", [4000, 60])
def test_nearest_cases_are_the_most_similar_and_never_the_case_itself(max_reference):
    rng = np.random.default_rng(11)
    unit = rng.normal(size=(300, 6))
    unit[100:120] = unit[100]  # twenty exact twins: more than k + 1 tie at distance 0
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    scan = NeighbourScanSlicer(max_reference=max_reference)
    k = 5
    near = scan._nearest(unit, k, np.random.default_rng(0))
    assert near.shape == (300, k)
    assert not (near == np.arange(300)[:, None]).any()
    got = np.take_along_axis(unit @ unit.T, near, axis=1)
    assert (np.diff(got, axis=1) <= 1e-6).all()  # most similar first
    if max_reference >= 300:  # every case a reference: the k most similar (to float32's rounding)
        similar = unit @ unit.T
        np.fill_diagonal(similar, -np.inf)
        np.testing.assert_allclose(got, -np.sort(-similar, axis=1)[:, :k], atol=1e-6)
        assert np.isin(near[100:120], np.arange(100, 120)).all()  # a twin's nearest: its twins
    else:  # a sample of 60 references
        assert len(np.unique(near)) <= 60


@pytest.mark.parametrize("seed", range(40))
def test_top_k_is_each_rows_k_largest_largest_first_ties_by_column(seed):
    """The floor-and-sort selection against the definition: a lexicographic sort of every row by
    value (largest first), then column. Blocks with many ties, signed zeros, and one row's own
    similarity at -inf (as the scan writes it), at probes below, at and above the columns."""
    from agent.slicing.scan import _top_k

    rng = np.random.default_rng(seed)
    rows, columns = int(rng.integers(1, 70)), int(rng.integers(2, 2500))
    if seed % 3 == 0:
        block = rng.integers(-3, 4, size=(rows, columns)).astype(np.float32)
        block[:, ::5] *= -0.0  # -0.0 beside +0.0: equal values, ordered by column
    else:
        block = rng.normal(size=(rows, columns)).astype(np.float32)
    if seed % 2 == 0:
        block[np.arange(rows), rng.integers(0, columns, rows)] = -np.inf
    k = int(rng.integers(1, min(columns - 1, 40) + 1))
    probe = int(rng.choice([1, k, 64, 1024, columns + 7]))
    expected = np.stack([np.lexsort((np.arange(columns), -row))[:k] for row in block])
    np.testing.assert_array_equal(_top_k(block, k, probe=probe), expected)
