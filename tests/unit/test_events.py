from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import EventError
from agent.events import REASONS, InferenceEvent, decode_event

GOOD = {
    "type": "inference",
    "event_id": "e1",
    "study_uid": "1.2.3",
    "model": "ptx",
    "prediction": "pos",
    "timestamp": "2026-11-29T10:00:00Z",
    "score": 0.9,
    "metadata": {"ViewPosition": "AP"},
}


def test_good_event_and_unknown_fields_are_kept():
    event = decode_event(json.dumps({**GOOD, "site": "north"}))
    assert isinstance(event, InferenceEvent)
    assert event.prediction == "pos" and event.model_extra == {"site": "north"}


@pytest.mark.parametrize(
    ("change", "reason", "field"),
    [
        ({"event_id": None}, "wrong_type", "event_id"),
        ({"prediction": 1.5}, "wrong_type", "prediction"),
        ({"prediction": True}, "wrong_type", "prediction"),
        ({"score": 2.0}, "wrong_type", "score"),
        ({"timestamp": "yesterday"}, "wrong_type", "timestamp"),
        ({"study_uid": 42}, "wrong_type", "study_uid"),
    ],
)
def test_wrong_types_name_the_field(change, reason, field):
    with pytest.raises(EventError) as info:
        decode_event({**GOOD, **change})
    assert info.value.reason == reason and field in str(info.value)


def test_missing_field():
    raw = dict(GOOD)
    del raw["model"]
    with pytest.raises(EventError, match="missing field 'model'") as info:
        decode_event(raw)
    assert info.value.reason == "missing_field"


def test_oversized_report():
    raw = {
        "type": "report",
        "event_id": "r",
        "study_uid": "s",
        "timestamp": "2026-11-29T10:00:00Z",
        "text": "x" * 50,
    }
    with pytest.raises(EventError) as info:
        decode_event(raw, max_report_chars=10)
    assert info.value.reason == "oversized_report"


@given(st.one_of(st.binary(max_size=200), st.text(max_size=200)))
def test_garbage_never_escapes_as_anything_but_event_error(raw):
    try:
        decode_event(raw)
    except EventError as err:
        assert err.reason in REASONS


@given(
    st.dictionaries(
        st.sampled_from([*list(GOOD), "label", "text", "junk"]),
        st.one_of(
            st.none(),
            st.integers(),
            st.floats(allow_nan=True),
            st.text(max_size=20),
            st.booleans(),
            st.lists(st.integers(), max_size=2),
            st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
        ),
    )
)
def test_mutated_objects_either_decode_or_fail_with_a_reason(obj):
    obj.setdefault("type", "inference")
    try:
        decode_event(obj)
    except EventError as err:
        assert err.reason in REASONS


def test_deeply_nested_json_is_an_event_error():
    with pytest.raises(EventError) as info:
        decode_event("[" * 100_000 + "]" * 100_000)
    assert info.value.reason == "invalid_json"
