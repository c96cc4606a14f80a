"""The log under the agent changes: topics deleted and created again while it runs.

A running consumer keeps its position in the old log. Where the new log is shorter, the broker
answers the fetch with nothing and the consumer waits at its old offset, skipping everything the new
log holds before it. The agent must notice, say so at ERROR, count it, and read the new log from its
start.
"""

from __future__ import annotations

import sqlite3
import time

from harness import open_store, stream_settings, wait_for, write_config
from kafka import KafkaAdminClient, KafkaProducer

from agent.simulate import StreamSpec, generate_stream, write_jsonl
from agent.store import LogMark
from agent.stream import ensure_topics, publish_file
from agent.stream.continuity import LogProbe, digest


def _seen(path, prefix: str = "") -> set[str]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT event_id FROM seen WHERE event_id LIKE ?", (prefix + "%",)).fetchall()
    return {r[0] for r in rows}


def _recreate(bootstrap: str, topics: list[str], settings) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.delete_topics(topics)
        wait_for(lambda: not set(topics) & set(admin.list_topics()), timeout=30, what="the topics to go")
    finally:
        admin.close()
    ensure_topics(settings)


def test_topics_recreated_under_a_running_agent_are_read_from_their_start(
    tansu, agents, embed_cache, tmp_path
):
    old, _ = generate_stream(StreamSpec(n_studies=150, seed=3))
    new, _ = generate_stream(StreamSpec(n_studies=30, seed=4))
    for e in new:  # another day's studies: ids the store has never seen
        e["study_uid"], e["event_id"] = f"new.{e['study_uid']}", f"new.{e['event_id']}"
    config = write_config(
        tmp_path / "agent",
        bootstrap=tansu.bootstrap,
        name="offsets",
        embed_cache=embed_cache,
        refit_every_labels=10**6,
        log_check_seconds=2,
    )
    settings = stream_settings(config)
    ensure_topics(settings)
    write_jsonl(old, tmp_path / "old.jsonl")
    publish_file(tmp_path / "old.jsonl", settings, create_topics=False)
    agent = agents(config, tmp_path / "agent.log")
    agent.start()
    open_store(config).close()
    wait_for(
        lambda: len(_seen(settings.store_path)) == len(old),
        timeout=180,
        what="every event of the first log applied",
        diagnose=agent.tail,
    )

    topics = [settings.inference_topic, settings.label_topic, settings.report_topic]
    _recreate(tansu.bootstrap, topics, settings)
    write_jsonl(new, tmp_path / "new.jsonl")
    publish_file(tmp_path / "new.jsonl", settings, create_topics=False)
    # Each new partition holds fewer messages than the agent had read from the old one.
    wanted = {e["event_id"] for e in new}
    wait_for(
        lambda: _seen(settings.store_path, "new.") == wanted,
        timeout=180,
        what="every event of the recreated topics applied",
        diagnose=agent.tail,
    )
    store = open_store(config)
    try:
        resets = store.counts().get("log_reset:recreated", 0)
        assert 1 <= resets <= len(topics) * settings.partitions, store.counts()
        assert store.dead_letter_counts().get("duplicate", 0) == 0
    finally:
        store.close()
    assert "is not the one this agent read (recreated" in agent.log.read_text(errors="replace")
    assert agent.stop() == 0, agent.tail()


def test_probe_tells_an_intact_log_from_a_reused_and_a_short_one(tansu):
    topic = "probe-topic"
    admin = KafkaAdminClient(bootstrap_servers=tansu.bootstrap)
    producer = KafkaProducer(bootstrap_servers=tansu.bootstrap, linger_ms=20)
    probe = LogProbe(tansu.bootstrap)
    try:
        from kafka.admin import NewTopic

        def fill(values: list[bytes]) -> None:
            admin.create_topics([NewTopic(topic, 1, 1)])
            for value in values:
                producer.send(topic, value, partition=0)
            producer.flush()

        fill([f"old-{i}".encode() for i in range(50)])
        first_id = probe.topic_ids([topic])[topic]
        assert first_id is not None
        mark = LogMark(topic, 0, 40, digest(b"old-40"))
        assert probe.verify([mark]) == {(topic, 0): "intact"}

        admin.delete_topics([topic])
        wait_for(lambda: topic not in admin.list_topics(), timeout=30, what="the topic to go")
        fill([f"new-{i}".encode() for i in range(60)])
        assert probe.topic_ids([topic])[topic] not in (None, first_id)
        assert probe.verify([mark]) == {(topic, 0): "reused"}

        admin.delete_topics([topic])
        wait_for(lambda: topic not in admin.list_topics(), timeout=30, what="the topic to go")
        fill([f"short-{i}".encode() for i in range(10)])
        started = time.monotonic()
        assert probe.verify([mark]) == {(topic, 0): "short"}
        assert time.monotonic() - started < 60  # a hang guard, not a speed goal
    finally:
        probe.close()
        producer.close()
        admin.close()
