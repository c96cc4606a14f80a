from __future__ import annotations

from agent.events import decode_event
from agent.join import join_events

T = "2026-11-29T10:00:00Z"


def _inf(i, study, pred="pos", model="ptx"):
    return decode_event(
        {
            "type": "inference",
            "event_id": f"i{i}",
            "study_uid": study,
            "model": model,
            "prediction": pred,
            "timestamp": T,
        }
    )


def _lab(i, study, label="pos", **extra):
    return decode_event(
        {"type": "label", "event_id": f"l{i}", "study_uid": study, "label": label, "timestamp": T, **extra}
    )


def test_join_duplicates_orphans_and_unknown_classes():
    events = [
        ("line 1", _inf(1, "s1")),
        ("line 2", _inf(2, "s2", pred="neg")),
        ("line 3", _inf(3, "s3")),
        ("line 4", _lab(1, "s1", "neg")),
        ("line 5", _lab(1, "s1", "neg")),  # duplicate event_id
        ("line 6", _lab(2, "s2", "fracture")),  # unknown class
        ("line 7", _lab(3, "s9")),  # orphan
        (
            "line 8",
            decode_event(
                {"type": "report", "event_id": "r1", "study_uid": "s1", "text": "tube", "timestamp": T}
            ),
        ),
    ]
    result = join_events(events)
    assert [(s.study_uid, s.label, s.report) for s in result.samples] == [("s1", "neg", "tube")]
    reasons = {(p.where, p.reason) for p in result.problems}
    assert reasons == {("line 5", "duplicate"), ("line 6", "unknown_class"), ("line 7", "orphan_label")}
    assert result.unlabeled == 2


def test_configured_classes_admit_a_class_never_predicted():
    result = join_events(
        [("a", _inf(1, "s1", pred="neg")), ("b", _lab(1, "s1", "pos"))], classes={"ptx": ["pos", "neg"]}
    )
    assert result.samples[0].label == "pos" and not result.problems


def test_label_with_model_applies_to_that_model_only():
    events = [
        ("a", _inf(1, "s1", model="ptx")),
        ("b", _inf(2, "s1", pred="cardio", model="cm")),
        ("c", _lab(1, "s1", "pos", model="ptx")),
    ]
    result = join_events(events)
    assert [(s.model, s.label) for s in result.samples] == [("ptx", "pos")]
