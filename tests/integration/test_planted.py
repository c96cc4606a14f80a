"""A stream with a planted failure, published to the broker, ends with that slice found and emerging."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from harness import ROOT, open_store, stream_settings, wait_for, write_config
from kafka import KafkaConsumer

from agent.simulate import StreamSpec, generate_stream, write_jsonl
from agent.stream import load_latest, publish_file

N_STUDIES = 600
DEVICE_WORDS = {"tube", "tip", "line", "lines", "drain", "pacemaker", "lead", "leads", "picc", "svc", "place"}


def _refit_covering(config, n_labels):
    settings = stream_settings(config)
    report = load_latest(settings.reports_dir, "pneumothorax", "pneumothorax")
    return report if report and report["refit"]["labels_total"] >= n_labels else None


def test_planted_failure_is_found_and_flagged_emerging(tansu, agents, embed_cache, tmp_path):
    spec = StreamSpec(n_studies=N_STUDIES, failure="devices", seed=3, slice_error=0.9, bad_lines=True)
    events, planted = generate_stream(spec)
    path = tmp_path / "events.jsonl"
    write_jsonl(events, path, garbage=True)
    n_lines = len(events) + 1
    config = write_config(
        tmp_path / "agent",
        bootstrap=tansu.bootstrap,
        name="planted",
        embed_cache=embed_cache,
        refit_every_labels=150,
        refit_every_seconds=4,
        emerging_refits=2,
        target_classes={"pneumothorax": ["pneumothorax"]},
        classes={"pneumothorax": ["pneumothorax", "no_pneumothorax"]},
    )
    settings = stream_settings(config)

    # The first third goes out with the command a user runs (it creates the topics).
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    first_stop = n_lines // 3
    head = tmp_path / "head.jsonl"
    head.write_text("".join(path.read_text().splitlines(keepends=True)[: first_stop - 1]))
    proc = subprocess.run(
        [sys.executable, "-m", "agent.cli", "publish", str(head), "--config", str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "published" in proc.stdout and "planted-inference=" in proc.stdout

    agent = agents(config, tmp_path / "agent.log")
    agent.start()
    store = open_store(config)
    for start, stop in [(first_stop, 2 * n_lines // 3), (2 * n_lines // 3, None)]:
        # The agent takes in what was sent so far and refits on it; then the next part goes out.
        wait_for(
            lambda start=start: store.sizes()["seen"] == start - 1,
            timeout=120,
            what=f"the first {start - 1} events stored",
            diagnose=agent.tail,
        )
        labels = store.counts()["joined:pneumothorax"]
        wait_for(
            lambda n=labels: _refit_covering(config, n),
            timeout=120,
            what=f"a refit covering {labels} labels",
            diagnose=agent.tail,
        )
        publish_file(path, settings, create_topics=False, start_line=start, stop_line=stop)
    final = wait_for(
        lambda: _refit_covering(config, N_STUDIES),
        timeout=180,
        what="the refit of the whole stream",
        diagnose=agent.tail,
    )
    assert agent.alive, agent.tail()

    assert final["window"]["n"] == N_STUDIES and final["modalities"] == ["report", "metadata"]
    assert final["refit"]["number"] >= 3
    top = final["slices"][0]
    assert top["status"] == "emerging" and top["streak"] >= 2, top["status"]
    assert sum(planted[m["study_uid"]] for m in top["members"][:10]) >= 8
    assert top["error_rate"] > 2 * top["rest_error_rate"] and top["p_value"] < 0.05
    assert DEVICE_WORDS & {t["token"] for t in top["tokens"]}, top["tokens"]
    # One id across refits: every refit since its first sighting reported it under that id.
    history = [h for h in store.slice_history("pneumothorax", "pneumothorax") if h["slice_id"] == top["id"]]
    numbers = [h["number"] for h in history]
    assert len(numbers) >= 2 and numbers == list(range(numbers[0], numbers[-1] + 1))
    assert history[-1]["status"] == "emerging"
    assert set(final["drift"]) == {"pneumothorax", "no_pneumothorax"}
    assert final["drift"]["no_pneumothorax"]["n"] + final["drift"]["pneumothorax"]["n"] == N_STUDIES

    # Bad inputs went to the dead-letter topic with their reasons; the agent kept running.
    wanted = {"invalid_json", "missing_field", "wrong_type", "unknown_class", "unknown_type"}
    wait_for(lambda: set(store.dead_letter_counts()) >= wanted, timeout=30, what="dead letters")
    wait_for(lambda: store.sizes()["unsent"] == 0, timeout=30, what="dead letters delivered")
    consumer = KafkaConsumer(
        settings.dead_letter_topic,
        bootstrap_servers=tansu.bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    letters = [json.loads(m.value) for m in consumer]
    consumer.close()
    assert {letter["reason"] for letter in letters} == wanted
    assert all(letter["source"].startswith("planted-") and letter["message"] for letter in letters)
    assert agent.stop() == 0, agent.tail()
