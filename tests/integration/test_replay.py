"""`slice-agent run --source replay:FILE`: the same agent with no broker, resumable, as the demo runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml
from harness import ROOT

from agent.events import REASONS
from agent.simulate import StreamSpec, generate_stream, write_jsonl
from agent.store import Store
from agent.stream import load_latest

N_STUDIES = 450


def _replay(config, events):
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "run", "--config", str(config), "--source", f"replay:{events}"],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _config(tmp_path, embed_cache, **stream):
    """A settings file for a replay of the test's own, with its state under ``tmp_path``."""
    config = tmp_path / "agent.yaml"
    settings = {
        "audit": {"pca_components": 32, "n_components": 8},
        "embed": {"cache_path": str(embed_cache)},
        "modalities": ["report", "metadata"],
        "stream": {
            "store_path": str(tmp_path / "state.sqlite"),
            "reports_dir": str(tmp_path / "reports"),
            "dead_letter_path": str(tmp_path / "dead-letter.jsonl"),
            **stream,
        },
    }
    config.write_text(yaml.safe_dump(settings))
    return config


def test_replay_writes_reports_dead_letters_and_resumes(embed_cache, tmp_path):
    events, planted = generate_stream(
        StreamSpec(n_studies=N_STUDIES, failure="devices", seed=3, slice_error=0.9, bad_lines=True)
    )
    full = tmp_path / "full.jsonl"
    write_jsonl(events, full, garbage=True)
    lines = full.read_text().splitlines(keepends=True)
    stream = tmp_path / "events.jsonl"
    stream.write_text("".join(lines[: len(lines) // 2]))
    config = _config(
        tmp_path,
        embed_cache,
        refit_every_labels=100,
        emerging_refits=2,
        classes={"pneumothorax": ["pneumothorax", "no_pneumothorax"]},
    )
    first = _replay(config, stream)
    assert first.returncode == 0, first.stderr
    half = Store(tmp_path / "state.sqlite").counts()["joined:pneumothorax"]
    assert f"replayed {len(lines) // 2} line(s)" in first.stdout and half > 0
    assert not (tmp_path / "dead-letter.jsonl").exists()  # the bad lines are in the second half

    # The file grows; the replay picks up where the durable state ends.
    stream.write_text("".join(lines))
    second = _replay(config, stream)
    assert second.returncode == 0, second.stderr
    assert f"(resumed after line {len(lines) // 2})" in second.stdout
    store = Store(tmp_path / "state.sqlite")
    assert store.counts()["joined:pneumothorax"] == N_STUDIES
    assert "duplicate" not in store.counts()

    letters = [json.loads(line) for line in (tmp_path / "dead-letter.jsonl").read_text().splitlines()]
    assert {d["reason"] for d in letters} == {
        "invalid_json",
        "missing_field",
        "wrong_type",
        "unknown_class",
        "unknown_type",
    }
    assert all(d["reason"] in REASONS and d["source"].startswith("replay:events.jsonl:") for d in letters)
    assert store.sizes()["labels"] == 1  # the orphan label waits out its label delay

    # The default target class is the least frequent label: the finding.
    report = load_latest(tmp_path / "reports", "pneumothorax", "pneumothorax")
    assert report is not None and report["window"]["n"] == N_STUDIES
    assert report["refit"]["trigger"] in ("schedule", "end of replay")
    top = report["slices"][0]
    assert sum(planted[m["study_uid"]] for m in top["members"][:10]) >= 8
    assert top["status"] == "emerging" and f"emerging: {top['id']}" in second.stdout

    # A third run has nothing to read and nothing to refit.
    third = _replay(config, stream)
    assert third.returncode == 0 and "replayed 0 line(s)" in third.stdout
    assert "refit " not in third.stdout


def _mixed_zones(events: list[dict]) -> list[dict]:
    """The same instants written three ways: UTC with Z, an offset, and no zone at all (read as UTC)."""
    from datetime import datetime, timedelta, timezone

    out = []
    for i, e in enumerate(events):
        e = dict(e)
        if isinstance(e.get("timestamp"), str) and i % 3:
            t = datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00"))
            e["timestamp"] = (
                t.astimezone(timezone(timedelta(hours=2))).isoformat()
                if i % 3 == 1
                else t.replace(tzinfo=None).isoformat()
            )
        out.append(e)
    return out


def test_audit_and_replay_are_one_join_and_find_the_same_slices(embed_cache, tmp_path):
    events, _ = generate_stream(StreamSpec(n_studies=N_STUDIES, failure="devices", seed=3, slice_error=0.9))
    path = tmp_path / "events.jsonl"
    write_jsonl(_mixed_zones(events), path)
    # Cold refits: a warm stream refit keeps each case's fold by its study id, so its optimum may
    # differ from the batch audit's (tests/unit/test_warm.py compares warm with cold).
    config = _config(
        tmp_path,
        embed_cache,
        label_delay_seconds=10**9,
        refit_every_labels=10**6,
        refit_every_seconds=10**9,
        warm_refits=False,
    )
    audited = subprocess.run(
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
        ],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert audited.returncode == 0, audited.stderr  # a file mixing zones and none is no crash
    replayed = _replay(config, path)
    assert replayed.returncode == 0, replayed.stderr
    batch = json.loads((tmp_path / "report.json").read_text())
    stream = load_latest(tmp_path / "reports", "pneumothorax", batch["target_class"])

    def slices(report):
        return [
            (
                [(m["study_uid"], round(m["probability"], 6)) for m in s["members"]],
                f"{s['p_value']:.6e}",
                [t["token"] for t in s["tokens"]],
            )
            for s in report["slices"]
        ]

    assert batch["window"] == stream["window"] and batch["window"]["n"] == N_STUDIES
    assert batch["slices"] and slices(batch) == slices(stream)
