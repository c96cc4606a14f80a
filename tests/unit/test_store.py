from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from agent.events import REASONS, decode_event
from agent.store import Incoming, Store, StorePolicy

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
DAY = 24 * 3600.0


def _ts(hours: float) -> str:
    return (T0 + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")


def inf(eid, study, *, model="ptx", pred="pos", hours=0.0, **extra):
    return {
        "type": "inference",
        "event_id": eid,
        "study_uid": study,
        "model": model,
        "prediction": pred,
        "timestamp": _ts(hours),
        "metadata": {"ViewPosition": "PA"},
        **extra,
    }


def lab(eid, study, label="pos", *, hours=1.0, **extra):
    return {
        "type": "label",
        "event_id": eid,
        "study_uid": study,
        "label": label,
        "timestamp": _ts(hours),
        **extra,
    }


def rep(eid, study, text="Chest tube in place.", *, hours=0.5):
    return {"type": "report", "event_id": eid, "study_uid": study, "text": text, "timestamp": _ts(hours)}


class Feed:
    """Numbered inputs, as a topic partition would give them."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.offset = 0

    def __call__(self, *events, source=None):
        items = []
        for e in events:
            raw = json.dumps(e).encode()
            items.append(Incoming(source or f"t:0:{self.offset}", raw, decode_event(raw)))
            self.offset += 1
        return self.store.apply(items)


def test_join_in_either_order_with_a_late_report(store):
    feed = Feed(store)
    feed(inf("i1", "s1"), lab("l2", "s2", "neg"))
    assert store.window("ptx") == []
    r = feed(lab("l1", "s1"), inf("i2", "s2", pred="neg"))
    assert [j.model for j in r.joined] == ["ptx", "ptx"]
    feed(rep("r1", "s1"))  # the report comes after the label and still reaches the window
    window = {s.study_uid: s for s in store.window("ptx")}
    assert set(window) == {"s1", "s2"}
    assert window["s1"].report == "Chest tube in place." and window["s2"].report is None
    assert window["s1"].label == "pos" and window["s2"].prediction == "neg"
    assert window["s1"].metadata == {"ViewPosition": "PA"}
    assert store.counts()["joined:ptx"] == 2


def test_redelivery_is_a_no_op_and_a_true_duplicate_is_counted(store):
    feed = Feed(store)
    events = [inf("i1", "s1"), lab("l1", "s1")]
    items = [Incoming(f"t:0:{i}", json.dumps(e).encode(), decode_event(e)) for i, e in enumerate(events)]
    first = store.apply(items)
    again = store.apply(items)
    assert len(first.joined) == 1 and not again.joined and again.redelivered == 2 and again.duplicates == 0
    dup = feed(lab("l1", "s1"), source="t:0:99")
    assert dup.duplicates == 1 and not dup.joined
    counts = store.counts()
    assert counts["joined:ptx"] == 1 and counts["duplicate"] == 1
    assert len(store.window("ptx")) == 1


def test_conflicting_inference_and_unknown_class_are_dead_lettered(make_store):
    policy = StorePolicy(label_delay_seconds=DAY, classes={"ptx": ("pos", "neg")})
    store = make_store(policy, clock=lambda: T0.timestamp())
    feed = Feed(store)
    r = feed(inf("i1", "s1"), inf("i1b", "s1", pred="neg"), lab("l1", "s1", "fracture"))
    assert r.dead_lettered == {"conflicting_inference": 1, "unknown_class": 1}
    # A label that came first is judged when its inference arrives.
    r = feed(lab("l2", "s2", "fracture"), lab("l2b", "s2", "neg", hours=2), inf("i2", "s2"))
    assert r.dead_lettered == {"unknown_class": 1}
    assert [(s.study_uid, s.label) for s in store.window("ptx")] == [("s2", "neg")]
    assert store.dead_letter_counts() == {"conflicting_inference": 1, "unknown_class": 2}


def test_without_configured_classes_a_label_must_name_a_predicted_class(make_store):
    # A label alone never makes a class: a record number in the label field cannot join a window,
    # so it can never become the audited target class either.
    store = make_store(StorePolicy(label_delay_seconds=DAY), clock=lambda: T0.timestamp())
    feed = Feed(store)
    r = feed(inf("i1", "s1", pred="pos"), inf("i0", "s0", pred="neg"), lab("l1", "s1", "neg"))
    r2 = feed(lab("l2", "s2", "MRN0012345"), inf("i2", "s2"), lab("l3", "s0", "pos"))
    assert not r.dead_lettered and len(r.joined) == 1
    assert r2.dead_lettered == {"unknown_class": 1} and len(r2.joined) == 1
    assert sorted(s.label for s in store.window("ptx")) == ["neg", "pos"]
    # An audit's --target-class (extra_classes) admits a class the model has not predicted.
    extra = make_store(StorePolicy(label_delay_seconds=DAY, extra_classes=("cm",)))
    r3 = Feed(extra)(inf("x1", "x1", pred="pos", model="cmx"), lab("y1", "x1", "cm"))
    assert not r3.dead_lettered and [s.label for s in extra.window("cmx")] == ["cm"]


def test_expiry_late_orphan_and_extra_labels(store):
    feed = Feed(store)
    feed(inf("i1", "s1", hours=0), lab("l0", "s0", hours=0), rep("r0", "s0", hours=0))
    feed(inf("i3", "s3", hours=0), lab("l3", "s3", hours=1), lab("l3b", "s3", "pos", hours=2))
    # Event time moves 30 hours on, on every topic: everything older than a day expires.
    r = feed(inf("i9", "s9", hours=30), lab("l9", "s9", hours=30), rep("r9", "s9", hours=30))
    assert r.expired == 1
    assert r.dead_lettered == {"orphan_label": 1, "orphan_report": 1}
    counts = store.counts()
    assert counts["expired_unlabeled:ptx"] == 1 and counts["extra_label"] == 1
    late = feed(lab("l1", "s1", hours=31), rep("r1", "s1", hours=31))
    assert late.dead_lettered == {"late_label": 1, "late_report": 1}
    assert [s.study_uid for s in store.window("ptx")] == ["s3", "s9"]
    assert set(store.dead_letter_counts()) <= set(REASONS)


def test_far_future_event_does_not_expire_what_waits(make_store):
    policy = StorePolicy(label_delay_seconds=DAY, max_future_seconds=3600)
    store = make_store(policy, clock=lambda: T0.timestamp())
    feed = Feed(store)
    feed(inf("i1", "s1"))
    ahead = feed(inf("i2", "s2", hours=24 * 365 * 50))  # fifty years ahead of the clock
    assert ahead.dead_lettered == {"future_event": 1}
    assert "expired_unlabeled:ptx" not in store.counts()
    assert feed(lab("l1", "s1")).joined


def test_a_sample_dated_years_ahead_does_not_empty_the_window(make_store):
    """The window's age runs from its newest sample: one pair dated 9999 would have pushed every
    real sample out (50 -> 1), and stayed for good. It is dead-lettered, twice delivered or not,
    and nothing of it is kept, not even its event id."""
    policy = StorePolicy(label_delay_seconds=DAY, window_max_age_seconds=90 * DAY, max_future_seconds=3600)
    store = make_store(policy, clock=lambda: T0.timestamp() + 3600)
    feed = Feed(store)
    for i in range(50):
        feed(inf(f"i{i}", f"s{i}"), lab(f"l{i}", f"s{i}", hours=1))
    assert len(store.window("ptx")) == 50
    far = {"timestamp": "9999-12-31T00:00:00Z"}
    r = feed(inf("x1", "s99", **far), lab("x2", "s99", **far))
    assert r.dead_lettered == {"future_event": 2} and not r.joined
    assert len(store.window("ptx")) == 50
    assert store.dead_letter_counts() == {"future_event": 2}
    again = feed(inf("x1", "s99", **far))  # the same id again: dead-lettered, not a duplicate
    assert again.duplicates == 0 and store.sizes()["seen"] == 100


def test_window_keeps_the_newest_by_count_and_age(make_store):
    policy = StorePolicy(label_delay_seconds=1e9, window_size=3, window_max_age_seconds=10 * 3600)
    store = make_store(policy, clock=lambda: T0.timestamp())
    feed = Feed(store)
    for i, hours in enumerate([0, 5, 1, 9, 8]):
        feed(
            inf(f"i{i}", f"s{i}", hours=hours), lab(f"l{i}", f"s{i}", hours=hours + 1), rep(f"r{i}", f"s{i}")
        )
    assert [s.study_uid for s in store.window("ptx")] == ["s1", "s4", "s3"]
    feed(inf("i5", "s5", hours=16), lab("l5", "s5", hours=17))
    # s1 (5 h) is more than 10 hours older than the newest sample (16 h).
    assert [s.study_uid for s in store.window("ptx")] == ["s4", "s3", "s5"]
    assert store.counts()["joined:ptx"] == 6
    # Reports of samples that left the window are gone too.
    n_reports = store.sizes()["reports"]
    assert n_reports == 2


def test_label_for_one_model_and_label_for_every_model(store):
    feed = Feed(store)
    feed(inf("a1", "s1", model="ptx"), inf("b1", "s1", model="edema"))
    feed(lab("l1", "s1", "pos", model="edema"))
    assert store.window("ptx") == [] and len(store.window("edema")) == 1
    feed(lab("l2", "s1", "pos"))
    assert len(store.window("ptx")) == 1
    # A label without model that arrives first serves an inference of any model that comes later.
    feed(lab("l3", "s2", "pos"), inf("a2", "s2", model="ptx"), inf("b2", "s2", model="edema"))
    assert {s.study_uid for s in store.window("edema")} == {"s1", "s2"}


def test_undecodable_inputs_are_dead_lettered_once_by_source(store):
    bad = Incoming("t:0:7", b"{", reason="invalid_json", message="invalid JSON")
    assert store.apply([bad]).dead_lettered == {"invalid_json": 1}
    assert store.apply([bad]).dead_lettered == {}
    letters = store.unsent_dead_letters()
    assert [(d.source, d.reason, d.raw) for d in letters] == [("t:0:7", "invalid_json", b"{")]
    store.mark_dead_letters_sent([d.id for d in letters])
    assert store.unsent_dead_letters() == []
    assert store.dead_letter_counts() == {"invalid_json": 1}


def test_state_survives_reopening(tmp_path):
    path = tmp_path / "state.sqlite"
    store = Store(path, StorePolicy(label_delay_seconds=DAY), clock=lambda: T0.timestamp())
    Feed(store)(inf("i1", "s1"), inf("i2", "s2"), lab("l1", "s1"))
    store.apply([], position=("replay:f", 3))
    store.close()
    again = Store(path, StorePolicy(label_delay_seconds=DAY), clock=lambda: T0.timestamp())
    assert again.position("replay:f") == 3 and again.position("other") == 0
    r = Feed(again)(lab("l2", "s2"), inf("i1", "s1"), source=None)
    assert len(r.joined) == 1 and r.duplicates == 1
    assert [s.study_uid for s in again.window("ptx")] == ["s1", "s2"]


def test_refit_schedule_by_labels_and_by_time(make_store):
    now = [T0.timestamp()]
    store = make_store(StorePolicy(label_delay_seconds=DAY), clock=lambda: now[0])
    feed = Feed(store)
    for i in range(5):
        feed(inf(f"i{i}", f"s{i}"), lab(f"l{i}", f"s{i}"))
    assert store.due_models(now[0], every_labels=5, every_seconds=60) == ["ptx"]
    assert store.due_models(now[0], every_labels=6, every_seconds=60) == []
    assert store.due_models(now[0] + 61, every_labels=6, every_seconds=60) == ["ptx"]
    _, total = store.snapshot("ptx")
    store.mark_refit("ptx", total, now[0] + 61)
    assert store.labels_since_refit("ptx") == 0
    assert store.due_models(now[0] + 500, every_labels=1, every_seconds=60) == []
    feed(inf("i9", "s9"), lab("l9", "s9"))
    assert store.due_models(now[0] + 62, every_labels=2, every_seconds=60) == []
    assert store.due_models(now[0] + 122, every_labels=2, every_seconds=60) == ["ptx"]


def test_refit_history_and_tracker_state_round_trip(store):
    report = {
        "window": {"n": 50, "n_errors": 9},
        "slices": [
            {"id": "s-a", "rank": 1, "status": "emerging", "size": 12, "error_rate": 0.6, "p_value": 1e-4},
        ],
    }
    assert store.next_refit_number("ptx", "pos") == 1
    store.record_refit("ptx", "pos", 1, report, {"n_updates": 1, "tracks": []})
    store.record_refit("ptx", "pos", 1, report, {"n_updates": 1, "tracks": []})  # a retried refit
    assert store.next_refit_number("ptx", "pos") == 2
    assert store.next_refit_number("ptx", 1) == 1  # the class 1 is not the class "1" or "pos"
    assert store.tracker_state("ptx", "pos") == {"n_updates": 1, "tracks": []}
    assert store.latest_report("ptx", "pos") == report
    history = store.slice_history("ptx", "pos")
    assert [(h["number"], h["slice_id"], h["status"]) for h in history] == [(1, "s-a", "emerging")]


def test_embedding_bookkeeping(store):
    feed = Feed(store)
    feed(inf("i1", "s1"), rep("r1", "s1"), rep("r2", "s2"))
    work = store.unembedded()
    assert sorted(w.kind for w in work) == ["inference", "report", "report"]
    texts = {w.sample.report for w in work if w.kind == "report"}
    assert texts == {"Chest tube in place."}
    store.mark_embedded(work[:2])
    assert len(store.unembedded()) == 1


def test_drift_events_and_assignments_are_recorded_once(store):
    assert store.record_drift("ptx", "pos", 17, 0.4)
    assert not store.record_drift("ptx", "pos", 17, 0.4)
    assert store.drift_events("ptx") == [("pos", 17, 0.4)]
    store.record_assignment([("label-events", 1), ("inference-events", 1)])
    assert store.assignments() == [[("inference-events", 1), ("label-events", 1)]]


def test_a_deeply_nested_unknown_field_is_ignored_not_fatal(store):
    """Unknown fields are kept and ignored (the event contract): one nested 300 levels deep
    failed the dead-letter form every label is given, and the valid label was lost as
    ``unprocessable``."""
    nested: list = []
    for _ in range(300):
        nested = [nested]
    feed = Feed(store)
    r = feed(inf("i1", "s1"), lab("l1", "s1", trace=nested))
    assert len(r.joined) == 1 and not r.dead_lettered
    again = feed(lab("l1", "s1", trace=nested))  # the same label from elsewhere: its dead letter
    assert again.dead_lettered == {"duplicate": 1}
