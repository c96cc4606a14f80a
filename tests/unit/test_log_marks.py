"""The store's record of where each partition's log was read (see agent.stream.continuity)."""

from __future__ import annotations

from agent.store import Incoming, LogMark
from agent.stream.continuity import batch_marks, rewinds
from agent.stream.ingest import Message


def test_marks_are_kept_with_their_batch_and_never_move_back(store):
    store.apply([], marks=[LogMark("labels", 0, 41, "a"), LogMark("labels", 1, 7, "b")])
    # A batch delivered again after a crash carries lower offsets: the mark stays.
    store.apply([], marks=[LogMark("labels", 0, 12, "old")])
    marks = store.log_marks([("labels", 0), ("labels", 1), ("reports", 0)])
    assert marks == {
        ("labels", 0): LogMark("labels", 0, 41, "a"),
        ("labels", 1): LogMark("labels", 1, 7, "b"),
    }


def test_a_batch_of_dead_letters_still_moves_the_mark(store):
    bad = Incoming("labels:0:3", b"x", reason="invalid_json", message="bad")
    store.apply([bad], marks=[LogMark("labels", 0, 3, "d")])
    assert store.log_marks([("labels", 0)])[("labels", 0)].offset == 3


def test_a_reset_forgets_the_marks_records_the_topic_id_and_counts(store):
    store.apply([], marks=[LogMark("labels", 0, 41, "a"), LogMark("labels", 1, 7, "b")])
    assert store.topic_id("labels") is None
    store.record_topic_id("labels", "id-1")
    store.reset_log("labels", "id-2", [0], "recreated")
    assert store.log_marks([("labels", 0), ("labels", 1)]) == {("labels", 1): LogMark("labels", 1, 7, "b")}
    assert store.topic_id("labels") == "id-2"
    store.count_rewind(2)
    counts = store.counts()
    assert counts["log_reset:recreated"] == 1 and counts["log_reset:rewound"] == 2


def test_batch_marks_take_each_partitions_last_message_and_skip_replays():
    messages = [
        Message("labels:0:8", b"a"),
        Message("labels:0:9", b"b"),
        Message("labels:2:3", b"c"),
        Message("replay:/tmp/x.jsonl:4", b"d"),
    ]
    marks = batch_marks(messages)
    assert [(m.topic, m.partition, m.offset) for m in marks] == [("labels", 0, 9), ("labels", 2, 3)]
    assert marks[0].digest != marks[1].digest


def test_a_batch_before_the_committed_offset_is_a_rewind():
    assert rewinds({("t", 0): 10, ("t", 1): 3}, {("t", 0): 10, ("t", 1): 50, ("t", 2): 1}) == {
        ("t", 1): (3, 50)
    }
