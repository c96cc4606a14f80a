"""SIGKILL the agent at random points while it consumes; restart it; nothing is lost or counted twice."""

from __future__ import annotations

import random

from harness import open_store, stream_settings, wait_for, write_config

from agent.simulate import StreamSpec, generate_stream, write_jsonl
from agent.stream import ensure_topics, publish_file

N_STUDIES = 240
KILLS = 5
CLASSES = {"pneumothorax": ["pneumothorax", "no_pneumothorax"]}


def test_sigkill_at_random_points_loses_nothing_and_counts_nothing_twice(
    tansu, agents, embed_cache, tmp_path
):
    rng = random.Random(20261129)
    events, _ = generate_stream(StreamSpec(n_studies=N_STUDIES, failure="devices", seed=3))
    path = tmp_path / "events.jsonl"
    write_jsonl(events, path)
    config = write_config(
        tmp_path / "agent",
        bootstrap=tansu.bootstrap,
        name="crash",
        embed_cache=embed_cache,
        batch_size=10,
        batch_seconds=0.3,
        refit_every_labels=10**6,
        refit_every_seconds=10**6,
        classes=CLASSES,
    )
    settings = stream_settings(config)
    ensure_topics(settings)
    agent = agents(config, tmp_path / "agent.log")

    # The stream goes out in parts; each (re)started agent is killed part-way through consuming one,
    # at a random number of stored events.
    bounds = sorted(rng.sample(range(2, len(events)), KILLS - 1))
    parts = list(zip([1, *bounds], [*bounds, len(events) + 1], strict=True))
    store = None
    kill_points = []
    for start, stop in parts:
        publish_file(path, settings, create_topics=False, start_line=start, stop_line=stop)
        agent.start()
        store = store or open_store(config)
        before = store.sizes()["seen"]
        target = before + rng.randint(1, max(1, stop - start - 1))
        wait_for(
            lambda store=store, target=target: store.sizes()["seen"] >= target or not agent.alive,
            timeout=90,
            interval=0.02,
            what=f"the agent to store {target} events",
            diagnose=agent.tail,
        )
        assert agent.alive, agent.tail()
        kill_points.append(store.sizes()["seen"])
        agent.kill()
    assert store is not None
    assert len(kill_points) >= 5
    # Killed while events of the part were still unconsumed, every time.
    assert all(seen < stop - 1 for seen, (_, stop) in zip(kill_points, parts, strict=True)), kill_points

    agent.start()
    wait_for(
        lambda: store.sizes()["seen"] == len(events) and store.sizes()["unembedded"] == 0,
        timeout=120,
        what="every event stored and embedded after the last restart",
        diagnose=lambda: f"{store.sizes()}\n{agent.tail()}",
    )
    assert agent.stop() == 0, agent.tail()

    labels = {e["study_uid"]: e["label"] for e in events if e["type"] == "label"}
    predictions = {e["study_uid"]: e["prediction"] for e in events if e["type"] == "inference"}
    window = store.window("pneumothorax")
    assert sorted(s.study_uid for s in window) == sorted(labels)  # none lost, none twice
    assert all(s.label == labels[s.study_uid] and s.prediction == predictions[s.study_uid] for s in window)
    assert sum(s.report is not None for s in window) == N_STUDIES
    counts = store.counts()
    assert counts["joined:pneumothorax"] == N_STUDIES  # each sample counted once, across every re-delivery
    assert "duplicate" not in counts and store.dead_letter_counts() == {}
    assert store.sizes()["pending"] == 0 and store.sizes()["labels"] == 0
