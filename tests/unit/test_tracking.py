from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.tracking import SliceObservation, SliceTracker


def members(start: int, stop: int) -> frozenset[str]:
    return frozenset(f"s{i}" for i in range(start, stop))


def obs(fit_id: str, start: int, stop: int, **kw) -> SliceObservation:
    return SliceObservation(fit_id, members(start, stop), **kw)


def test_id_is_kept_while_members_overlap_and_the_window_slides():
    tracker = SliceTracker(emerging_after=3)
    ids = []
    for refit in range(6):
        # Members drift 10 studies per refit; the window holds the last 100 studies.
        lo = 10 * refit
        tracker.update([obs(f"fit-{refit}", lo + 50, lo + 80)], window=members(lo, lo + 100))
        ids.append(tracker.assignments[0])
    assert ids == ["fit-0"] * 6
    track = tracker.get("fit-0")
    assert track is not None and track.status == "emerging" and track.streak == 6 and track.age == 6


def test_emerging_after_m_consecutive_significant_refits():
    tracker = SliceTracker(emerging_after=3)
    statuses = []
    for significant in [True, True, False, True, True, True]:
        tracker.update([obs("a", 0, 40, significant=significant)])
        statuses.append(tracker.tracks[0].status)
    assert statuses == ["candidate", "candidate", "candidate", "candidate", "candidate", "emerging"]
    assert tracker.emerged == ("a",)


def test_resolved_after_it_fades_and_back_as_candidate_with_its_id():
    tracker = SliceTracker(emerging_after=1, resolve_after=2)
    tracker.update([obs("a", 0, 40)])
    assert tracker.emerged == ("a",)
    tracker.update([])
    assert tracker.tracks[0].status == "emerging" and tracker.resolved == ()  # one miss is tolerated
    tracker.update([obs("z", 100, 140, significant=False)])
    assert tracker.resolved == ("a",) and tracker.get("a").status == "resolved"
    tracker.update([obs("b", 5, 45)])
    assert tracker.assignments == ("a",)
    # Back, and with emerging_after=1 immediately emerging again.
    assert tracker.get("a").status == "emerging"


def test_a_slice_that_grows_or_shrinks_is_the_same_slice():
    tracker = SliceTracker(min_overlap=0.5)
    tracker.update([obs("core", 0, 40)])
    tracker.update([obs("wider", 0, 200)])  # Jaccard 0.2, but the core is all inside
    tracker.update([obs("narrow", 10, 30)])
    assert tracker.assignments == ("core",) and len(tracker.tracks) == 1


def test_two_slices_keep_their_own_ids_and_do_not_swap():
    tracker = SliceTracker()
    tracker.update([obs("a", 0, 50), obs("b", 100, 150)])
    tracker.update([obs("x", 105, 160), obs("y", 2, 48)])
    assert tracker.assignments == ("b", "a")
    # One new slice overlapping both: it takes the better match only; the other is missed.
    tracker.update([obs("z", 0, 45)])
    assert tracker.assignments == ("a",)
    assert tracker.get("b").misses == 1


def test_centroid_matches_only_when_members_have_left_the_window():
    tracker = SliceTracker(max_distance=0.05, min_members=5)
    tracker.update([obs("a", 0, 40, centroid=(1.0, 0.0, 0.0))])
    # Same members, far centroid: overlap decides.
    tracker.update([obs("b", 0, 40, centroid=(0.0, 1.0, 0.0))], window=members(0, 100))
    assert tracker.assignments == ("a",)
    # The window turned over: overlap cannot be measured, a close centroid matches...
    tracker.update([obs("c", 500, 540, centroid=(0.0, 0.99, 0.05))], window=members(400, 600))
    assert tracker.assignments == ("a",)
    # ...and a distant one does not.
    tracker.update([obs("d", 900, 940, centroid=(0.0, 0.0, 1.0))], window=members(800, 1000))
    assert tracker.assignments == ("d",)


def test_new_ids_never_collide_and_observations_are_not_changed():
    tracker = SliceTracker()
    first = obs("same", 0, 20)
    tracker.update([first])
    second = obs("same", 500, 520)
    tracker.update([second])
    assert tracker.assignments == ("same'",)
    assert first.members == members(0, 20) and second.id == "same"


def test_state_round_trip_continues_the_same_way():
    a = SliceTracker(emerging_after=2)
    a.update([obs("a", 0, 40, centroid=(0.5, 0.5))])
    state = json.loads(json.dumps(a.to_state()))
    b = SliceTracker.from_state(state, emerging_after=2)
    for t in (a, b):
        t.update([obs("again", 3, 43)])
    assert a.assignments == b.assignments == ("a",)
    assert a.tracks == b.tracks and a.emerged == b.emerged == ("a",)
    assert SliceTracker.from_state(None).tracks == ()


def test_old_tracks_are_forgotten():
    tracker = SliceTracker(forget_after=3)
    tracker.update([obs("a", 0, 40)])
    for _ in range(3):
        tracker.update([])
    assert tracker.tracks == ()


def test_bad_parameters_are_reported_on_update():
    tracker = SliceTracker(emerging_after=0)
    with pytest.raises(ValueError, match="emerging_after"):
        tracker.update([])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.integers(0, 60), st.integers(1, 40), st.booleans()), max_size=4),
        min_size=1,
        max_size=8,
    )
)
def test_invariants_over_random_refits(refits):
    tracker = SliceTracker(emerging_after=2, resolve_after=2)
    for n, refit in enumerate(refits):
        observations = [
            obs(f"f{n}-{i}", lo, lo + width, significant=sig) for i, (lo, width, sig) in enumerate(refit)
        ]
        tracker.update(observations)
        assert len(tracker.assignments) == len(observations)
        assert len(set(tracker.assignments)) == len(observations)  # one track per slice in a refit
        for tid, o in zip(tracker.assignments, observations, strict=True):
            track = tracker.get(tid)
            assert track is not None
            assert (track.streak >= 1) == o.significant
            assert track.status != "emerging" or track.misses < 2
        for track in tracker.tracks:
            assert track.status in ("candidate", "emerging", "resolved")
            assert track.streak == 0 or track.misses == 0
