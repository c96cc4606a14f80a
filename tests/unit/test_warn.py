"""The early warning's parts: calibration, estimates, slice descriptions and live assignment, the
share test on the simulated stream (false alarms over seeds, power), where the calibrated estimate
holds and where it breaks, and the store's tables on both backends."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.audit import FitView, embed_samples, run_audit
from agent.config import load_settings
from agent.simulate.early import DAY, TARGET, EarlySpec, WordEmbedder, early_samples
from agent.store import BucketRow, LiveCase
from agent.warn import Calibration, SliceSpace, describe_fit, estimate, share_test

SETTINGS = load_settings(overrides={"modalities": ["metadata"]})
EMBEDDER = WordEmbedder()


def _describe(spec: EarlySpec, seed: int) -> tuple[SliceSpace, FitView]:
    """A refit at day 0 on the labels that came by then (inferences of days -30 to -10)."""
    window = early_samples(spec, seed, -spec.history_days, -spec.label_delay_days)
    fits: list[FitView] = []
    report, _ = run_audit(
        window, embedder=EMBEDDER, settings=SETTINGS, target_class=TARGET, on_fit=fits.append
    )
    assert report.slices, "the weak group must be found by the refit for the early warning to know it"
    space = describe_fit(fits[0], [s.id for s in report.slices], 1, SETTINGS.warn, beta=SETTINGS.audit.beta)
    assert space is not None
    return space, fits[0]


def _assign(space: SliceSpace, samples) -> np.ndarray:
    emb = embed_samples(samples, ["metadata"], EMBEDDER)
    return space.assign(space.fuse(emb.blocks, len(samples)))


def _daily_warnings(space: SliceSpace, samples) -> list[int]:
    """Days (from 0) whose bucket raised a warning for any slice."""
    inside = _assign(space, samples)
    day = np.array([math.floor(s.timestamp.timestamp() / DAY) for s in samples])
    warned = []
    for d in np.unique(day):
        rows = day == d
        for j, known in enumerate(space.slices):
            t = share_test(
                int(inside[rows, j].sum()),
                int(rows.sum()),
                known.window_inside,
                known.window_n,
                n_slices=len(space.slices),
                alpha=SETTINGS.warn.alpha,
                min_cases=SETTINGS.warn.min_bucket_cases,
            )
            if t.warned:
                warned.append(int(d - day.min()))
                break
    return warned


def test_calibration_recovers_the_error_probability_of_each_side_and_survives_a_round_trip():
    rng = np.random.default_rng(1)
    n = 4000
    side = rng.random(n) < 0.4
    score = rng.random(n)
    truth = np.where(side, 1 - score, 0.5 * (1 - score))  # the sides differ
    err = (rng.random(n) < truth).astype(float)
    score[:200] = np.nan  # no score: the side's rate
    cal = Calibration.fit(score, side, err)
    grid = np.linspace(0.05, 0.95, 10)
    assert np.abs(cal.predict(grid, np.ones(10, bool)) - (1 - grid)).max() < 0.08
    assert np.abs(cal.predict(grid, np.zeros(10, bool)) - 0.5 * (1 - grid)).max() < 0.06
    assert Calibration.from_dict(cal.to_dict()) == cal
    few = Calibration.fit(np.array([0.9, 0.8]), np.array([True, True]), np.array([0.0, 1.0]))
    assert 0 < few.predict(np.array([0.5]), np.array([True]))[0] < 1  # a constant, never 0 or 1


def test_the_estimate_interval_covers_the_realised_rate_when_calibration_holds():
    rng = np.random.default_rng(2)
    covered = 0
    for _ in range(200):
        p = rng.beta(1, 6, size=300)
        e = estimate(p, 0.95)
        covered += e.lower <= (rng.random(300) < p).mean() <= e.upper
    assert covered >= 180  # 95 % nominal: 190 expected, a binomial sd of 3


def test_share_test_is_one_sided_and_bonferroni_adjusted():
    assert share_test(20, 100, 100, 1000, n_slices=1, alpha=0.01, min_cases=30).warned
    assert not share_test(20, 100, 100, 1000, n_slices=1000, alpha=0.01, min_cases=30).warned
    assert not share_test(0, 100, 500, 1000, n_slices=1, alpha=0.01, min_cases=30).warned  # a fall
    assert not share_test(29, 29, 1, 1000, n_slices=1, alpha=0.01, min_cases=30).warned  # too few


def test_a_description_assigns_the_window_as_it_counted_it_and_survives_the_store_record():
    spec = EarlySpec()
    space, view = _describe(spec, 0)
    again = SliceSpace.from_record(*space.to_record())
    inside = _assign(again, list(view.samples))
    for j, known in enumerate(again.slices):
        assert inside[:, j].sum() == known.window_inside  # the live view of the window, float32 through
    assert again.calibration == space.calibration
    # the weak group (lateral Agfa films) is what the top slice covers
    weak = np.array(
        [
            (s.metadata or {}).get("Manufacturer") == "Agfa"
            and (s.metadata or {}).get("ViewPosition") == "LL"
            for s in view.samples
        ]
    )
    top = inside[:, 0]
    # A region of the fused space around the group (its neighbours share its view or maker): the
    # group is several times as frequent inside as in the window, and most of it is inside.
    assert weak[top].mean() > 3 * weak.mean() and top[weak].mean() > 0.3, (weak[top].mean(), weak.mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_shift_raises_no_warning_and_the_growing_weak_group_does(seed):
    """Two weeks of daily buckets after the refit, per seed: with no shift, no bucket warns (the
    stated rate is warn.alpha = 0.001 per bucket: at most 0.04 false alarms expected over these 42
    buckets); with the weak group growing from 5 % to 25 %, a warning comes within the two weeks."""
    still = EarlySpec(shift="none")
    space, _ = _describe(still, seed)
    assert _daily_warnings(space, early_samples(still, seed, 0, 14)) == []
    growing = EarlySpec()
    space, _ = _describe(growing, seed)
    warned = _daily_warnings(space, early_samples(growing, seed, 0, 14))
    assert warned and warned[0] <= 12


def _estimate_against_realised(spec: EarlySpec) -> tuple[float, float, float, float]:
    """(estimated, lower, upper, realised) error rate of days 0-14 from the day-0 calibration."""
    space, _ = _describe(spec, 0)
    cases = early_samples(spec, 0, 0, 14)
    scores = np.array([s.score for s in cases], dtype=float)
    side = np.array([s.prediction == TARGET for s in cases])
    e = estimate(space.calibration.predict(scores, side))
    realised = np.mean([(s.label == TARGET) != (s.prediction == TARGET) for s in cases])
    return e.rate, e.lower, e.upper, float(realised)


def test_calibrated_estimate_holds_under_the_weak_group_shift_and_breaks_under_a_prevalence_shift():
    """The weak group's growth is a covariate shift (its scores say it is weak): the estimate
    follows the realised rate. A prevalence shift with a new presentation the model misses with
    the confidence of a true negative is invisible in the scores: the estimate stays near the
    labeled window's rate while the realised error climbs, far outside the interval."""
    rate, lower, upper, realised = _estimate_against_realised(EarlySpec())
    assert abs(rate - realised) < 0.015 and lower <= realised <= upper
    rate, lower, upper, realised = _estimate_against_realised(EarlySpec(shift="prevalence"))
    assert realised - rate > 0.08 and realised > upper


def test_store_keeps_descriptions_live_cases_and_first_bucket_results(make_store):
    store = make_store()
    space, _ = _describe(EarlySpec(), 0)
    store.record_slice_space("m", TARGET, 1, space.to_record())
    store.record_slice_space("m", TARGET, 2, space.to_record())
    store.record_slice_space("m", TARGET, 1, space.to_record())  # an older one does not win
    assert store.slice_space_numbers() == {("m", '"finding"'): 2}
    assert SliceSpace.from_record(*store.slice_spaces()[0]).slices[0].id == space.slices[0].id
    cases = [
        LiveCase("m", TARGET, f"s{i}", 2, 1000.0 + i, 0.1, {"s-a": 0.3} if i % 2 else {}) for i in range(4)
    ]
    store.record_live_cases(cases)
    store.record_live_cases([LiveCase("m", TARGET, "s0", 2, 5.0, 0.9, {})])  # first assignment wins
    got = store.live_outcomes("m", TARGET, 0.0)
    assert [o.study_uid for o in got] == ["s0", "s1", "s2", "s3"] and got[0].p_error == 0.1
    assert got[1].slices == {"s-a": 0.3} and got[1].label is None
    row = BucketRow("s-a", 0.0, 2, 1, 100, 30, 0.05, 1e-5, True, 7.0)
    assert store.record_buckets("m", TARGET, [row]) == 1
    assert store.record_buckets("m", TARGET, [row]) == 0  # tested once
    assert store.buckets("m", TARGET) == [row]
    assert store.prune_live_cases(1002.0) == 2
