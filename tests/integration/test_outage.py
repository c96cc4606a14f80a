"""The broker goes away and comes back; the agent waits, reconnects and carries on with the right counts."""

from __future__ import annotations

import re

from harness import open_store, stream_settings, wait_for, write_config

from agent.simulate import StreamSpec, generate_stream, write_jsonl
from agent.stream import ensure_topics, publish_file

N_STUDIES = 300
DISCONNECTED = re.compile(r"Unable connect|Connect call failed|Connection refused|KafkaConnectionError")


def test_broker_outage_agent_waits_reconnects_and_counts_right(tansu, agents, embed_cache, tmp_path):
    events, _ = generate_stream(StreamSpec(n_studies=N_STUDIES, failure="devices", seed=3))
    path = tmp_path / "events.jsonl"
    write_jsonl(events, path)
    split = int(len(events) * 0.6)
    config = write_config(
        tmp_path / "agent",
        bootstrap=tansu.bootstrap,
        name="outage",
        embed_cache=embed_cache,
        refit_every_labels=10**6,
        refit_every_seconds=10**6,
        classes={"pneumothorax": ["pneumothorax", "no_pneumothorax"]},
    )
    settings = stream_settings(config)
    publish_file(path, settings, stop_line=split + 1)
    agent = agents(config, tmp_path / "agent.log")
    agent.start()
    store = open_store(config)
    wait_for(
        lambda: store.sizes()["seen"] == split, timeout=90, what="the first part stored", diagnose=agent.tail
    )
    rejoins = len(store.assignments())
    before_outage = agent.log.read_text(errors="replace")

    tansu.stop()
    wait_for(
        lambda: DISCONNECTED.search(agent.log.read_text(errors="replace")[len(before_outage) :]),
        timeout=60,
        what="the agent to notice that the broker is gone",
        diagnose=agent.tail,
    )
    assert agent.alive, agent.tail()

    # Tansu keeps nothing across a restart: the topics are created again and the rest published
    # once the agent is back in its group (a real cluster keeps its logs and offsets).
    tansu.start()
    ensure_topics(settings)
    wait_for(
        lambda: len(store.assignments()) > rejoins,
        timeout=120,
        what="the agent to rejoin its group",
        diagnose=agent.tail,
    )
    outage = agent.log.read_text(errors="replace")[len(before_outage) :]
    errors = [line for line in outage.splitlines() if " ERROR " in line and DISCONNECTED.search(line)]
    # The clients' reconnect errors come once per interval per message, not tens a second.
    assert 1 <= len(errors) <= 6, errors[:20]
    publish_file(path, settings, create_topics=False, start_line=split + 1)
    wait_for(
        lambda: store.sizes()["seen"] == len(events),
        timeout=120,
        what="every event stored after the outage",
        diagnose=lambda: f"{store.sizes()}\n{agent.tail()}",
    )
    assert agent.alive, agent.tail()
    assert agent.stop() == 0, agent.tail()

    labeled = {e["study_uid"] for e in events if e["type"] == "label"}
    assert {s.study_uid for s in store.window("pneumothorax")} == labeled
    counts = store.counts()
    assert counts["joined:pneumothorax"] == len(labeled) == N_STUDIES
    assert "duplicate" not in counts and store.dead_letter_counts() == {}
    assert store.sizes()["pending"] == 0 and store.sizes()["reports"] == N_STUDIES
    assert "Traceback" not in agent.log.read_text(errors="replace")
