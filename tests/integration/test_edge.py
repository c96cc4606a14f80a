"""What a broken upstream sends the agent on the real broker: a record number as a label, a model
named `..`, 2,000 junk model names; and a restart during a quiet period, when dashboards must not go
blank."""

from __future__ import annotations

import urllib.request

import yaml
from harness import free_port, open_store, stream_settings, wait_for, write_config

from agent.simulate import StreamSpec, generate_stream, write_jsonl
from agent.stream import ensure_topics, publish_file

N_STUDIES = 300
JUNK = 2000


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def test_hijack_dotdot_and_junk_models_then_a_quiet_restart(tansu, agents, embed_cache, tmp_path):
    events, _ = generate_stream(StreamSpec(n_studies=N_STUDIES, failure="devices", seed=3, slice_error=0.9))
    dotdot, _ = generate_stream(StreamSpec(n_studies=80, model="..", failure="devices", seed=3))
    for e in dotdot:
        e["study_uid"], e["event_id"] = f"dd.{e['study_uid']}", f"dd.{e['event_id']}"
        if e["type"] == "inference":
            e["prediction"] = "pneumothorax" if e["prediction"] == ".." else e["prediction"]
        if e["type"] == "label":
            e["label"] = "pneumothorax" if e["label"] == ".." else e["label"]
    first = next(e for e in events if e["type"] == "inference")
    t = first["timestamp"]
    hijack = {
        "type": "label",
        "event_id": "hijack",
        "study_uid": first["study_uid"],
        "label": "MRN0012345",
        "timestamp": t,
    }
    junk = [
        {
            "type": "inference",
            "event_id": f"junk-{i}",
            "study_uid": f"junk.{i}",
            "model": f"junk-model-{i}",
            "prediction": "x",
            "timestamp": t,
        }
        for i in range(JUNK)
    ]
    path = tmp_path / "events.jsonl"
    write_jsonl([hijack, *junk, *events, *dotdot], path)
    port = free_port()
    config = write_config(
        tmp_path / "agent",
        bootstrap=tansu.bootstrap,
        name="edge",
        embed_cache=embed_cache,
        refit_every_labels=10**6,
        refit_every_seconds=3,
    )
    data = yaml.safe_load(config.read_text())
    data["exporter"] = {"enabled": True, "port": port, "models": ["pneumothorax"]}
    config.write_text(yaml.safe_dump(data))
    settings = stream_settings(config)
    ensure_topics(settings)
    publish_file(path, settings, create_topics=False)
    agent = agents(config, tmp_path / "agent.log")
    agent.start()
    store = open_store(config)
    for model in ("pneumothorax", ".."):
        wait_for(
            lambda model=model: (
                (r := store.latest_report(model, "pneumothorax"))
                and r["refit"]["labels_total"] == store.counts().get(f"joined:{model}", -1)
            ),
            timeout=300,
            what=f"a refit of {model!r} on all its labels",
            diagnose=agent.tail,
        )
    # The record number in a label field neither joined nor became the audited class.
    assert store.dead_letter_counts().get("unknown_class") == 1
    assert {s.label for s in store.window("pneumothorax")} <= {"pneumothorax", "no_pneumothorax"}
    assert store.latest_report("MRN0012345", "MRN0012345") is None
    # A model named `..` writes its reports inside reports_dir.
    reports = settings.reports_dir.resolve()
    written = [p.resolve() for p in reports.rglob("refit-*.json")]
    assert written and all(reports in p.parents for p in written)
    assert not list(tmp_path.glob("pneumothorax")) and not (tmp_path / "agent" / "pneumothorax").exists()
    # 2,000 junk model names: a bounded exposition, and the real model still exported.
    # The exporter publishes stored reports on the agent's timer, after the refit wrote them: wait
    # for the real model's report series itself (its per-model counters show up before it).
    exposition = wait_for(
        lambda: (text := _scrape(port)) and 'slice_agent_slices{model="pneumothorax"' in text and text,
        timeout=60,
        what="the real model's report series",
        diagnose=agent.tail,
    )
    assert len(exposition.splitlines()) < 3000, len(exposition.splitlines())
    assert "slice_agent_slices{" in exposition
    assert agent.stop() == 0, agent.tail()

    # A restart in a quiet period: no new label, yet the slices are exported from the store at once.
    agent.start()
    exposition = wait_for(
        lambda: _scrape_or_empty(port), timeout=120, what="the exporter after a restart", diagnose=agent.tail
    )
    slices = [
        line
        for line in exposition.splitlines()
        if line.startswith("slice_agent_slices{") and 'model="pneumothorax"' in line
    ]
    assert slices, exposition[:2000]
    assert agent.stop() == 0, agent.tail()


def _scrape_or_empty(port: int) -> str:
    try:
        text = _scrape(port)
    except OSError:
        return ""
    return text if "slice_agent_slices{" in text else ""
