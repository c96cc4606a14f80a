from __future__ import annotations

import io
import json

from agent.config import EventSettings
from agent.ingest import bounded_lines, read_jsonl
from agent.store import Store, StorePolicy
from agent.stream.replay import load_file

T = "2026-11-29T10:00:00Z"


def test_no_line_is_held_beyond_the_message_limit():
    data = b'{"a": 1}\n' + b"x" * 10_000_000 + b"\n" + b'{"b": 2}\n' + b"y" * 5000
    lines = list(bounded_lines(io.BytesIO(data), 1024))
    assert [len(line) for line in lines] == [9, 1025, 9, 1025]
    assert lines[2] == b'{"b": 2}\n'


def test_an_oversized_line_is_dead_lettered_and_the_next_lines_kept(tmp_path):
    inf = {
        "type": "inference",
        "event_id": "i1",
        "study_uid": "s1",
        "model": "m",
        "prediction": "p",
        "timestamp": T,
    }
    lab = {"type": "label", "event_id": "l1", "study_uid": "s1", "label": "p", "timestamp": T}
    big = {"type": "report", "event_id": "r1", "study_uid": "s1", "text": "word " * 400_000, "timestamp": T}
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in (inf, big, lab)) + "\n")
    store = Store(":memory:", StorePolicy(label_delay_seconds=1e9))
    summary = load_file(path, store, limits=EventSettings(max_message_bytes=65536))
    assert summary.dead_lettered == {"oversized_event": 1} and summary.joined == 1
    (letter,) = store.unsent_dead_letters()
    assert letter.source.endswith(":2") and len(letter.raw or b"") <= 4096


def test_the_batch_audit_reads_no_line_beyond_the_message_limit(tmp_path):
    """``slice-agent audit`` and ``summary --events`` read their file with the same bound: a line
    of 10 MB without a newline is one ``oversized_event`` problem, held at most 64 KiB at a time."""
    lab = {"type": "label", "event_id": "l1", "study_uid": "s1", "label": "p", "timestamp": T}
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"x": "' + b"a" * 10_000_000 + b'"}\n' + json.dumps(lab).encode() + b"\n")
    events, problems = read_jsonl(path, limits=EventSettings(max_message_bytes=65536))
    assert [(p.where, p.reason) for p in problems] == [("line 1", "oversized_event")]
    assert [where for where, _ in events] == ["line 2"]


def test_publish_reads_no_line_beyond_a_message(tmp_path):
    """``slice-agent publish`` holds at most a message and a byte of a line: a longer line comes
    cut, to be counted and not sent (the broker would refuse it)."""
    from agent.stream.publish import _lines

    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"a": 1}\n' + b"x" * 3_000_000 + b"\n\n" + b'{"b": 2}\n')
    assert [(n, len(line)) for n, line in _lines(path, 1024)] == [(1, 8), (2, 1025), (4, 8)]
