from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import EventSettings
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


# ------------------------------------------------------------------------------------ size limits


def _reason(raw, **kwargs) -> str:
    with pytest.raises(EventError) as info:
        decode_event(raw, **kwargs)
    assert info.value.reason in REASONS
    return info.value.reason


def test_an_oversized_message_is_refused_before_it_is_parsed(monkeypatch):
    def no_parse(*args, **kwargs):
        raise AssertionError("json.loads was called on an oversized message")

    big = json.dumps({**GOOD, "junk": "x" * (2**20)})
    monkeypatch.setattr(json, "loads", no_parse)
    assert _reason(big) == "oversized_event"
    assert _reason(big.encode()) == "oversized_event"
    # multi-byte text counts in UTF-8 bytes, not characters
    limits = EventSettings(max_message_bytes=4096)
    assert _reason('{"x": "' + "é" * 3000 + '"}', limits=limits) == "oversized_event"


def test_the_message_limit_is_configurable():
    raw = json.dumps({**GOOD, "junk": "x" * 5000})
    assert decode_event(raw).event_id == "e1"
    assert _reason(raw, limits=EventSettings(max_message_bytes=4096)) == "oversized_event"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("event_id", "e" * 257),
        ("study_uid", "1" * 257),
        ("model", "m" * 257),
        ("model_version", "v" * 257),
        ("image_uid", "1." * 200),
        ("prediction", "p" * 129),
        ("image", "/data/" + "a" * 5000),
        ("metadata", {f"k{i}": i for i in range(15_000)}),
        ("metadata", {"k" * 65: 1}),
        ("metadata", {"Modality": "x" * 1025}),
        ("metadata", {"Modality": [[[[[[[[[1]]]]]]]]]}),
    ],
)
def test_every_field_has_a_size_limit(field, value):
    with pytest.raises(EventError) as info:
        decode_event(json.dumps({**GOOD, field: value}))
    assert info.value.reason == "oversized_field"
    assert f"'{field}'" in str(info.value)
    assert str(value)[:50] not in str(info.value)  # the limit is named, the value is not echoed


def test_a_long_label_is_an_oversized_field():
    label = {"type": "label", "event_id": "l1", "study_uid": "s", "timestamp": "2026-11-29T10:00:00Z"}
    assert decode_event({**label, "label": "x" * 128}).label == "x" * 128
    assert _reason({**label, "label": "x" * 129}) == "oversized_field"


def test_fields_at_their_limits_decode():
    event = decode_event(
        json.dumps(
            {
                **GOOD,
                "event_id": "e" * 256,
                "image": "/d/" + "a" * 4000,
                "metadata": {f"k{i}": "v" * 1000 for i in range(64)},
            }
        )
    )
    assert isinstance(event, InferenceEvent) and len(event.metadata or {}) == 64
