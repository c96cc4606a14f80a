"""The store as a group of workers shares it: watermarks per event type, concurrent writers on
PostgreSQL, leases, retention, the vector cache, and schema versions."""

from __future__ import annotations

import json
import sqlite3
import threading

import numpy as np
import pytest
from test_store import DAY, T0, Feed, inf, lab, rep

from agent.events import decode_event
from agent.store import Incoming, Store, StoreError, StorePolicy, VectorCache
from agent.store.schema import SCHEMA_VERSION


def test_a_topic_two_delays_ahead_loses_no_label(make_store):
    # Inferences of 60 studies over 3 days arrive first (a backlog replayed), then their labels,
    # each 20 hours after its inference. One watermark for every topic expired them all.
    store = make_store(StorePolicy(label_delay_seconds=DAY), clock=lambda: T0.timestamp() + 30 * DAY)
    feed = Feed(store)
    studies = [(f"s{i}", i * 1.2) for i in range(60)]
    feed(*[inf(f"i-{s}", s, hours=h) for s, h in studies])
    result = feed(*[lab(f"l-{s}", s, hours=h + 20) for s, h in studies])
    assert len(result.joined) == 60 and not result.dead_lettered and not result.expired
    # And the other way round: labels run ahead of their inferences.
    late = [(f"t{i}", 100 + i * 1.2) for i in range(60)]
    result = feed(*[lab(f"l-{s}", s, hours=h + 20) for s, h in late])
    result.joined.extend(feed(*[inf(f"i-{s}", s, hours=h) for s, h in late]).joined)
    assert len(result.joined) == 60 and not result.dead_lettered
    assert store.window_size("ptx") == 120


def test_waiting_labels_and_reports_expire_when_every_topic_has_moved(make_store):
    store = make_store(StorePolicy(label_delay_seconds=DAY), clock=lambda: T0.timestamp() + 30 * DAY)
    feed = Feed(store)
    feed(lab("l-orphan", "nobody", hours=0), rep("r-orphan", "nobody", hours=0))
    # Only the inference topic moves: nothing that waits on the others expires.
    assert not feed(inf("i1", "s1", hours=50)).dead_lettered
    assert store.sizes()["labels"] == 1
    result = feed(lab("l1", "s1", hours=50), rep("r1", "s1", hours=50))
    assert result.dead_lettered == {"orphan_label": 1, "orphan_report": 1}
    assert store.watermarks().keys() == {"inference", "label", "report"}


def test_a_true_duplicate_is_dead_lettered_once_and_a_redelivery_is_not(store):
    feed = Feed(store)
    feed(inf("i1", "s1"), lab("l1", "s1"))
    again = feed(lab("l1", "s1"), source="other:0:9")
    assert again.dead_lettered == {"duplicate": 1}
    letter = store.unsent_dead_letters()[-1]
    assert letter.reason == "duplicate" and json.loads(letter.raw)["event_id"] == "l1"
    assert not feed(lab("l1", "s1"), source="other:0:9").dead_lettered  # the same input again


def test_dead_letters_keep_bounded_excerpts_and_no_report_text(make_store):
    store = make_store(StorePolicy(label_delay_seconds=DAY, dead_letter_excerpt_bytes=64))
    big = b"{" + b"x" * 10_000
    store.apply([Incoming("t:0:1", big, reason="invalid_json", message="bad")])
    feed = Feed(store)
    # s1 waits from 60 h and expires when both topics reach 100 h; its report comes too late.
    feed(inf("i1", "s1", hours=60), inf("i2", "s2", hours=100), lab("l2", "s2", hours=100))
    feed(rep("r1", "s1", text="SIGNED BY JOHN SMITH MD", hours=60.2))
    letters = {d.reason: d for d in store.unsent_dead_letters()}
    assert len(letters["invalid_json"].raw) == 64 and "of 10001 bytes" in letters["invalid_json"].message
    assert "late_report" in letters and b"SMITH" not in letters["late_report"].raw


def test_concurrent_workers_join_every_label(postgres_url):
    # Two workers apply the inferences and the labels of the same studies at the same time; without
    # per-study locks, an inference and its label committed together never meet.
    policy = StorePolicy(label_delay_seconds=DAY)
    stores = [Store(postgres_url, policy, clock=lambda: T0.timestamp()) for _ in range(2)]
    n = 400

    def run(store: Store, kind: str) -> None:
        for start in range(0, n, 20):
            events = [
                inf(f"i{i}", f"s{i}") if kind == "inference" else lab(f"l{i}", f"s{i}", hours=0)
                for i in range(start, start + 20)
            ]
            store.apply([Incoming(f"{kind}:{e['event_id']}", b"", decode_event(e)) for e in events])

    kinds = ["inference", "label"]
    threads = [threading.Thread(target=run, args=(s, k)) for s, k in zip(stores, kinds, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stores[0].window_size("ptx") == n
    assert stores[1].counts()["joined:ptx"] == n and stores[0].sizes()["labels"] == 0
    for s in stores:
        s.close()


def test_a_lease_is_held_by_one_worker_until_it_lapses(make_store):
    now = [T0.timestamp()]
    store = make_store(clock=lambda: now[0])
    assert store.acquire_lease("refit:m", "a", 30) and not store.acquire_lease("refit:m", "b", 30)
    assert store.acquire_lease("refit:m", "a", 30)  # renewal
    now[0] += 31
    assert store.acquire_lease("refit:m", "b", 30)
    holder, _, generation = store.lease("refit:m")
    assert holder == "b" and generation == 2
    # The old holder's refit finished late: it must not record over its successor's history.
    assert not store.record_refit("m", 1, 1, {"slices": []}, {}, lease=("refit:m", "a"))
    assert store.record_refit("m", 1, 1, {"slices": []}, {}, lease=("refit:m", "b"))
    store.release_lease("refit:m", "b")
    assert store.acquire_lease("refit:m", "c", 30)


def test_refits_beyond_keep_refits_are_dropped(make_store):
    store = make_store(StorePolicy(keep_refits=3))
    for number in range(1, 8):
        slices = [{"id": f"s{number}", "rank": 1, "status": "candidate"}]
        store.record_refit("m", "pos", number, {"window": {"n": 9}, "slices": slices}, {"n": number})
    assert [h["number"] for h in store.slice_history("m", "pos")] == [5, 6, 7]
    assert store.latest_report("m", "pos")["slices"][0]["id"] == "s7"
    assert store.tracker_state("m", "pos") == {"n": 7}
    assert [r["slices"][0]["id"] for r in store.latest_reports()] == ["s7"]


def test_vector_cache_round_trip_and_bound(make_store):
    store = make_store()
    cache = VectorCache(store, keep=150)
    vectors = {f"k{i}": np.full(4, i, dtype=np.float32) for i in range(200)}
    cache.put_many(vectors)
    found = cache.get_many(["k3", "nope", "k3"])
    assert np.array_equal(found[0], vectors["k3"]) and found[1] is None and cache.hits == 2
    assert cache.trim() == 50 and len(cache) == 150


OLD_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema', '1');
CREATE TABLE inferences (model TEXT NOT NULL, study_uid TEXT NOT NULL, event_id TEXT NOT NULL,
    ts REAL NOT NULL, prediction TEXT NOT NULL, score REAL, metadata TEXT, image TEXT,
    state TEXT NOT NULL, embedded INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (model, study_uid));
CREATE TABLE reports (study_uid TEXT PRIMARY KEY, event_id TEXT NOT NULL, ts REAL NOT NULL,
    text TEXT NOT NULL, source TEXT NOT NULL, raw BLOB, embedded INTEGER NOT NULL DEFAULT 0,
    matched INTEGER NOT NULL DEFAULT 0);
CREATE TABLE assignments (id INTEGER PRIMARY KEY AUTOINCREMENT, partitions TEXT NOT NULL, at REAL NOT NULL);
INSERT INTO inferences VALUES ('ptx', 's1', 'i1', 1.7e9, '"pos"', NULL, NULL, NULL, 'pending', 0);
"""


def test_an_older_schema_is_migrated_and_a_newer_one_refused(tmp_path):
    path = tmp_path / "v1.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SCHEMA)
    store = Store(path, StorePolicy(label_delay_seconds=1e9))
    work = store.unembedded(claim_seconds=60)
    assert [w.key for w in work] == [("ptx", "s1")]  # the claim column exists now
    store.record_assignment([("t", 0)], worker="w1")
    assert store.assignments("w1") == [[("t", 0)]]
    store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0] == str(
            SCHEMA_VERSION
        )
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(StoreError, match="newer than this agent"):
        Store(path)


def test_the_store_file_is_private(tmp_path):
    store = Store(tmp_path / "state" / "agent.sqlite")
    store.close()
    assert (tmp_path / "state").stat().st_mode & 0o077 == 0
    assert (tmp_path / "state" / "agent.sqlite").stat().st_mode & 0o077 == 0


def test_claimed_rows_are_left_to_their_worker_until_the_claim_lapses(make_store):
    now = [T0.timestamp()]
    store = make_store(StorePolicy(label_delay_seconds=1e9), clock=lambda: now[0])
    Feed(store)(inf("i1", "s1"), rep("r1", "s1"))
    assert len(store.unembedded(claim_seconds=60)) == 2
    assert store.unembedded(claim_seconds=60) == []
    now[0] += 61
    assert len(store.unembedded(claim_seconds=60)) == 2


def test_junk_model_names_leave_the_store_when_their_inferences_do(make_store):
    store = make_store(StorePolicy(label_delay_seconds=DAY), clock=lambda: T0.timestamp() + 30 * DAY)
    feed = Feed(store)
    feed(*[inf(f"j{i}", f"j{i}", model=f"junk-{i}") for i in range(50)], inf("i1", "s1"), lab("l1", "s1"))
    assert len(store.models()) == 51
    # Three label delays later (on every topic) the junk inferences expired and were forgotten.
    feed(inf("i2", "s2", hours=80), lab("l2", "s2", hours=80), rep("r2", "s2", hours=80))
    assert store.models() == ["ptx"] and store.window_size("ptx") == 2


def test_person_names_are_kept_as_digests_and_recognised(make_store):
    store = make_store(StorePolicy(label_delay_seconds=DAY))
    meta = {"ViewPosition": "AP", "PatientName": "QUENNEVILLE^THADDEUS", "ReferringPhysicianName": "Roe^Ann"}
    Feed(store)(inf("i1", "s1", metadata=meta), lab("l1", "s1"))
    assert store.window("ptx")[0].metadata == {"ViewPosition": "AP"}  # nothing else is stored
    assert store.known_names({"thaddeus", "Quenneville", "roe", "tube", "ann"}) == {
        "thaddeus",
        "Quenneville",
        "roe",
        "ann",
    }
    again = Store(store.url if store.postgres else ":memory:")
    assert again.known_names({"thaddeus"}) == (set() if not store.postgres else {"thaddeus"})
    again.close()


def test_an_unstorable_input_is_dead_lettered_and_the_rest_of_its_batch_kept(postgres_url):
    # PostgreSQL refuses NUL characters in text (SQLite stores them): the batch is applied again
    # input by input, and only that one is dead-lettered.
    store = Store(postgres_url, StorePolicy(label_delay_seconds=DAY), clock=lambda: T0.timestamp())
    batch = [inf("i1", "s1"), inf("i2", "bad\x00study"), lab("l1", "s1")]
    result = Feed(store)(*batch)
    assert result.dead_lettered == {"unprocessable": 1} and len(result.joined) == 1
    assert store.window_size("ptx") == 1
    store.close()


def test_what_the_agent_writes_is_private_to_its_user(tmp_path):
    from agent.paths import open_private
    from agent.stream.refit import _write_atomic

    _write_atomic(tmp_path / "reports" / "m" / "pos" / "refit-000001.json", "{}")
    with open_private(tmp_path / "dl" / "dead-letter.jsonl") as fh:
        fh.write("{}\n")
    for path in (tmp_path / "reports", tmp_path / "reports" / "m" / "pos", tmp_path / "dl"):
        assert path.stat().st_mode & 0o777 == 0o700, path
    for path in (
        tmp_path / "reports" / "m" / "pos" / "refit-000001.json",
        tmp_path / "dl" / "dead-letter.jsonl",
    ):
        assert path.stat().st_mode & 0o777 == 0o600, path
