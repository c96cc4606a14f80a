"""Hostile inputs through `slice-agent audit` and through `slice-agent run` on the real broker: image
paths that hang, escape, bomb or lie, and messages too large or too deep. Each bad input gets exactly
one dead letter with its reason, every good event is kept, nothing hangs, and SIGTERM stops the agent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from harness import ROOT, open_store, stream_settings, wait_for, write_config
from hostile_files import hostile_folder

from agent.simulate import StreamSpec, generate_stream, write_jsonl
from agent.stream import ensure_topics, publish_file

N_STUDIES = 150
#: Peak resident memory of the agent while it is handed every hostile file (the models take ~0.8 GiB).
RSS_BOUND_MIB = 2500
#: What the two garbage messages are refused as.
GARBAGE = {"invalid_json": 1, "oversized_event": 1}


def _events(tmp_path: Path) -> tuple[Path, Path, int]:
    """A simulated stream whose first studies name hostile and good image files, and two garbage
    messages; returns the file, the image root and how many inferences name a hostile file."""
    root = tmp_path / "images"
    hostile, good = hostile_folder(root, tmp_path / "outside.dcm")
    events, _ = generate_stream(StreamSpec(n_studies=N_STUDIES, failure="devices", seed=3))
    paths = [str(p) for p in (*hostile.values(), *good.values())]
    inferences = [e for e in events if e["type"] == "inference"]
    for event, image in zip(inferences, paths, strict=False):
        event["image"] = image
    path = tmp_path / "events.jsonl"
    write_jsonl(events, path)
    deep = b'{"type": "label", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    big = {"type": "report", "event_id": "big", "study_uid": "s", "timestamp": "2026-11-20T00:00:00Z"}
    with path.open("ab") as fh:
        # About 1 MB with quotes to escape: as a whole dead letter it would outgrow the producer's
        # largest request, and every retry would send the letters in front of it again.
        text = 'a "quoted" word ' * 55_500
        fh.write(deep + b"\n" + json.dumps({**big, "text": text}).encode() + b"\n")
    return path, root, len(hostile)


def _settings(root: Path) -> dict:
    return {
        "modalities": ["image", "report", "metadata"],
        "images": {"roots": [str(root)], "time_limit_seconds": 20},
        "events": {"max_message_bytes": 65536},
    }


def test_hostile_inputs_through_the_audit(tmp_path):
    path, root, n_hostile = _events(tmp_path)
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({**_settings(root), "audit": {"pca_components": 32, "n_components": 8}}))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "audit",
            str(path),
            "--out",
            str(tmp_path / "report.json"),
            "--config",
            str(config),
            "--problems",
            str(tmp_path / "problems.jsonl"),
        ],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    problems = [json.loads(line) for line in (tmp_path / "problems.jsonl").read_text().splitlines()]
    refused = [p for p in problems if p["reason"] == "image_refused"]
    assert len(refused) == len({p["where"] for p in refused}) == n_hostile, refused
    # One message for every refusal: it says nothing about whether or what the file is.
    assert len({p["message"] for p in refused}) == 1
    others = [p["reason"] for p in problems if p["reason"] != "image_refused"]
    assert {r: others.count(r) for r in others} == GARBAGE, problems
    assert json.loads((tmp_path / "report.json").read_text())["window"]["n"] == N_STUDIES


def test_hostile_inputs_through_the_broker_never_hang_and_lose_nothing(tansu, agents, embed_cache, tmp_path):
    path, root, n_hostile = _events(tmp_path)
    config = write_config(
        tmp_path / "agent",
        bootstrap=tansu.bootstrap,
        name="hostile",
        embed_cache=embed_cache,
        refit_every_labels=10**6,
        refit_every_seconds=10**6,
        classes={"pneumothorax": ["pneumothorax", "no_pneumothorax"]},
    )
    config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), **_settings(root)}))
    settings = stream_settings(config)
    ensure_topics(settings)
    publish_file(path, settings, create_topics=False)
    agent = agents(config, tmp_path / "agent.log")
    agent.start()
    store = open_store(config)
    n_lines = len(path.read_text().splitlines())
    wait_for(
        lambda: store.sizes()["seen"] == n_lines - sum(GARBAGE.values()) and store.sizes()["unembedded"] == 0,
        timeout=300,
        what="every event stored and embedded",
        diagnose=lambda: f"{store.sizes()}\n{agent.tail()}",
    )
    wait_for(
        lambda: store.sizes()["unsent"] == 0, timeout=60, what="dead letters delivered", diagnose=agent.tail
    )
    # Exactly one dead letter per hostile image (they are keyed by event) and per garbage message.
    assert store.dead_letter_counts() == {"image_refused": n_hostile, **GARBAGE}
    assert store.window_size("pneumothorax") == N_STUDIES  # every good event kept
    status = Path(f"/proc/{agent.proc.pid}/status").read_text()
    peak_mib = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) / 1024
    assert peak_mib < RSS_BOUND_MIB, peak_mib
    assert agent.alive and agent.stop(timeout=10) == 0, agent.tail()  # SIGTERM stops it within 10 s
