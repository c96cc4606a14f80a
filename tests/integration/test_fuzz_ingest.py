"""Malformed events thrown at the ingest path: no crash, every bad one dead-lettered, every good one kept.

The path is the one both shells use (:meth:`agent.stream.Sidecar.ingest`: decode, store, drift,
metrics), with a real store and a real metrics registry; only the embedding model is left out, since
ingest never calls it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness import NoModel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import AuditSettings, Settings, StreamSettings
from agent.events import REASONS
from agent.exporter import Exporter
from agent.stream import Message, Sidecar

CLASSES = ["pos", "neg"]
MAX_REPORT = 100


def _ts(hours: int) -> str:
    return f"2026-11-{20 + hours // 24:02d}T{hours % 24:02d}:00:00Z"


@st.composite
def good_events(draw: Any) -> list[dict[str, Any]]:
    n = draw(st.integers(1, 12))
    out: list[dict[str, Any]] = []
    for i in range(n):
        study = f"1.2.3.{i}"
        hours = draw(st.integers(0, 47))
        out.append(
            {
                "type": "inference",
                "event_id": f"inf-{i}",
                "study_uid": study,
                "model": draw(st.sampled_from(["ptx", "edema"])),
                "prediction": draw(st.sampled_from(CLASSES)),
                "timestamp": _ts(hours),
                "score": draw(st.floats(0, 1)),
                "metadata": {
                    "ViewPosition": draw(st.sampled_from(["PA", "AP", "LL"])),
                    "x": [1, {"y": None}],
                },
                "unknown_field": draw(st.text(max_size=5)),
            }
        )
        if draw(st.booleans()):
            out.append(
                {
                    "type": "label",
                    "event_id": f"lab-{i}",
                    "study_uid": study,
                    "label": draw(st.sampled_from(CLASSES)),
                    "timestamp": _ts(hours + 1),
                }
            )
        if draw(st.booleans()):
            text = draw(st.text(min_size=1, max_size=MAX_REPORT))
            out.append(
                {
                    "type": "report",
                    "event_id": f"rep-{i}",
                    "study_uid": study,
                    "text": text,
                    "timestamp": _ts(hours),
                }
            )
    return out


REQUIRED = {
    "inference": ["event_id", "study_uid", "timestamp", "model", "prediction"],
    "label": ["event_id", "study_uid", "timestamp", "label"],
    "report": ["event_id", "study_uid", "timestamp", "text"],
}
WRONG = {
    "event_id": [5, None, "", ["e"]],
    "study_uid": [1.5, {"a": 1}, "", "x" * 300],
    "timestamp": ["yesterday", [2026], {}],
    "model": [7, "", None],
    "prediction": [[1], 0.5, {"c": 1}, True],
    "label": [[1], 1.5, None, False],
    "text": [3, ["t"]],
    "score": [1.5, -0.1, "high"],
    "metadata": ["PA", [1]],
    "image": [5, {}],
}


@st.composite
def bad_message(draw: Any, goods: list[dict[str, Any]]) -> tuple[bytes, set[str]]:
    """A message that breaks the contract, and the reasons it may be dead-lettered for."""
    kind = draw(
        st.sampled_from(["bytes", "not_object", "unknown_type", "missing", "wrong", "oversized", "deep"])
    )
    base = dict(draw(st.sampled_from(goods)))
    base["event_id"] = f"bad-{draw(st.integers(0, 10**6))}"
    if kind == "bytes":
        raw = draw(st.binary(max_size=64))
        return raw, {"invalid_json", "not_an_object"}
    if kind == "not_object":
        value = draw(
            st.one_of(st.integers(), st.text(max_size=10), st.lists(st.integers(), max_size=3), st.none())
        )
        return json.dumps(value).encode(), {"not_an_object"}
    if kind == "deep":
        return b"[" * 50_000 + b"]" * 50_000, {"invalid_json"}
    if kind == "unknown_type":
        base["type"] = draw(st.one_of(st.text(max_size=8), st.integers()).filter(lambda t: t not in REQUIRED))
        return json.dumps(base).encode(), {"unknown_type"}
    if kind == "missing":
        del base[draw(st.sampled_from(REQUIRED[base["type"]]))]
        return json.dumps(base).encode(), {"missing_field"}
    if kind == "oversized" and base["type"] == "report":
        base["text"] = "word " * (MAX_REPORT // 4)
        return json.dumps(base).encode(), {"oversized_report"}
    fields = [f for f in WRONG if f in REQUIRED[base["type"]] or (base["type"] == "inference" and f in WRONG)]
    fields = [f for f in fields if f not in ("text",) or base["type"] == "report"]
    fields = [f for f in fields if f != "label" or base["type"] == "label"]
    field = draw(st.sampled_from(fields))
    base[field] = draw(st.sampled_from(WRONG[field]))
    # A string over its field's size limit is refused by size before its type is checked.
    too_long = isinstance(base[field], str) and len(base[field]) > 256
    return json.dumps(base).encode(), {"oversized_field"} if too_long else {"wrong_type"}


@st.composite
def streams(draw: Any) -> tuple[list[tuple[bytes, set[str] | None]], list[int]]:
    goods = draw(good_events())
    bads = draw(st.lists(bad_message(goods), max_size=15))
    items: list[tuple[bytes, set[str] | None]] = [(json.dumps(g).encode(), None) for g in goods]
    items += bads
    order = draw(st.permutations(range(len(items))))
    cuts = draw(st.lists(st.integers(1, 8), min_size=1, max_size=len(items) + 1))
    return [items[i] for i in order], cuts


def _sidecar() -> tuple[Sidecar, Exporter]:
    settings = Settings(
        audit=AuditSettings(max_report_chars=MAX_REPORT),
        stream=StreamSettings(store_path=Path(":memory:"), classes={"ptx": CLASSES, "edema": CLASSES}),
    )
    exporter = Exporter(process=False)
    return Sidecar(settings, NoModel(), exporter=exporter), exporter


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(streams())
def test_every_bad_event_is_dead_lettered_and_every_good_one_kept(stream):
    items, cuts = stream
    sidecar, exporter = _sidecar()
    messages = [Message(f"fuzz:0:{i}", raw) for i, (raw, _) in enumerate(items)]
    batches, i, k = [], 0, 0
    while i < len(messages):
        size = cuts[k % len(cuts)]
        batches.append(messages[i : i + size])
        i, k = i + size, k + 1
    for batch in batches:
        sidecar.ingest(batch)

    store = sidecar.store
    letters = {d.source: d for d in store.unsent_dead_letters(limit=10_000)}
    for i, (raw, reasons) in enumerate(items):
        source = f"fuzz:0:{i}"
        if reasons is None:
            assert source not in letters, (letters[source].reason, raw)
        else:
            assert source in letters, raw
            assert letters[source].reason in reasons and letters[source].reason in REASONS
    assert len(letters) == sum(r is not None for _, r in items)

    goods = [json.loads(raw) for raw, r in items if r is None]
    assert store.sizes()["seen"] == len(goods)  # every good event kept, once
    inferences = {g["study_uid"]: g for g in goods if g["type"] == "inference"}
    expected = {
        (inferences[g["study_uid"]]["model"], g["study_uid"], g["label"])
        for g in goods
        if g["type"] == "label"
    }
    window = {(m, s.study_uid, s.label) for m in ("ptx", "edema") for s in store.window(m)}
    assert window == expected
    total = sum(
        exporter.registry.get_sample_value("slice_agent_dead_lettered_total", {"reason": r}) or 0
        for r in REASONS
    )
    assert total == len(letters)
    sidecar.close()
