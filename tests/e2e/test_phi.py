"""No planted identifier leaves `slice-agent audit` or `slice-agent summary`, in any letter case.

The stream's reports end with radiologists' sign-offs in several styles (all capitals, mixed
case, ``Dr``/``Dr.``, ``MD``/``M.D.``/``DO``, ``signed by``, ``dictated by``, ``discussed
with``, names alone on a line) and carry dates of birth, phone numbers, record and accession
numbers; the planted slice's studies are nearly all signed by one radiologist, in capitals, so
that a ranking of raw words would put the name first (it did, before names were blocked).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
from test_audit_cli import DEVICE_WORDS

from agent.simulate import StreamSpec, generate_stream, write_jsonl
from agent.simulate.textstream import REFERRERS, SHARED_SIGNER, SIGNERS

SPEC = StreamSpec(n_studies=800, failure="devices", seed=3)


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SLICE_AGENT_LOG_LEVEL": "INFO"}
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def planted_items(raw: str) -> dict[str, set[str]]:
    """Every identifier planted in the raw event file, by kind (read back from the file itself)."""
    events = [json.loads(line) for line in raw.splitlines()]
    texts = [e["text"] for e in events if e.get("type") == "report"]
    metas = [e["metadata"] for e in events if e.get("type") == "inference"]
    joined = "\n".join(texts)
    names = {w for pair in (SHARED_SIGNER, *SIGNERS) for w in pair} | set(REFERRERS)
    names |= {w for m in metas for w in re.split(r"[\^ ]", m["PatientName"]) if w}
    names |= set(re.findall(r"(?i)\bdr\.? ([a-z]+)", joined))
    return {
        "name": names,
        "mrn": set(re.findall(r"MRN: (\d+)", joined)) | {m["PatientID"] for m in metas},
        "accession": set(re.findall(r"Accession(?: No\.|:) (A?\d+)", joined)),
        "date": set(re.findall(r"\b\d\d/\d\d/\d{4}\b|\b\d\d\.\d\d\.\d{4}\b", joined))
        | {m["StudyDate"] for m in metas},
        "phone": set(re.findall(r"\(\d{3}\) \d{3}-\d{4}", joined)),
    }


def detect(text: str, items: dict[str, set[str]]) -> dict[str, set[str]]:
    """The planted items that occur in ``text``, as whole words, in any letter case.

    JSON escapes are undone first, so that a name after an escaped newline is still a whole word.
    """
    low = text.replace("\\n", "\n").replace("\\t", "\t").replace('\\"', '"').lower()
    found: dict[str, set[str]] = {}
    for kind, values in items.items():
        hits = {v for v in values if re.search(rf"(?<![\w.]){re.escape(v.lower())}(?![\w])", low)}
        if hits:
            found[kind] = hits
    return found


def _planted_precision(report: dict, planted: dict[str, bool]) -> float:
    first = report["slices"][0]
    return sum(planted[m["study_uid"]] for m in first["members"][:10]) / 10


@pytest.fixture(scope="module")
def phi_audit(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("phi")
    out: dict[str, object] = {}
    for name, spec in (("phi", replace(SPEC, signoffs=True)), ("plain", SPEC)):
        events, planted = generate_stream(spec)
        write_jsonl(events, tmp / f"{name}.jsonl")
        proc = _run(
            "audit", f"{name}.jsonl", "--out", f"{name}.json", "--modalities", "report,metadata", cwd=tmp
        )
        assert proc.returncode == 0, proc.stderr
        out[name] = (proc, json.loads((tmp / f"{name}.json").read_text()), planted)
    report = out["phi"][1]  # type: ignore[index]
    end = datetime.fromisoformat(report["window"]["end"].replace("Z", "+00:00"))
    year, week, _ = end.isocalendar()
    summary = _run(
        "summary", "--reports", "phi.json", "--week", f"{year}-W{week:02d}", "--out", "sums", cwd=tmp
    )
    assert summary.returncode == 0, summary.stderr
    out["summary"] = summary
    return out, tmp


@pytest.mark.slow
def test_no_planted_identifier_leaves_the_audit_or_the_summary(phi_audit):
    out, tmp = phi_audit
    raw = (tmp / "phi.jsonl").read_text()
    items = planted_items(raw)
    # The detector first proves itself on the raw input: every kind, every signer (written in
    # capitals there), every planted value is found.
    assert detect(raw, items) == items
    assert all(len(v) >= 5 for v in items.values()), {k: len(v) for k, v in items.items()}
    assert SHARED_SIGNER[1].upper() in raw and SHARED_SIGNER[1] not in raw  # only ever in capitals

    proc = out["phi"][0]
    summary = out["summary"]
    week_dirs = list((tmp / "sums").iterdir())
    outputs = {
        "REPORT.json": (tmp / "phi.json").read_text(),
        "stdout": proc.stdout,
        "stderr and INFO log": proc.stderr,
        "summary stdout": summary.stdout + summary.stderr,
        "summary.html": (week_dirs[0] / "summary.html").read_text(),
        "summary.md": (week_dirs[0] / "summary.md").read_text(),
    }
    assert " INFO agent.audit: " in proc.stderr  # the INFO log really is in what is searched
    for where, text in outputs.items():
        assert detect(text, items) == {}, where


@pytest.mark.slow
def test_planted_slice_is_still_named_by_its_medical_words(phi_audit):
    out, _ = phi_audit
    _, report, planted = out["phi"]
    _, plain, _ = out["plain"]
    first = report["slices"][0]
    tokens = [t["token"] for t in first["tokens"]]
    assert DEVICE_WORDS & set(tokens[:3]), tokens
    assert not {w.lower() for w in SHARED_SIGNER} & set(tokens)
    # Precision@10 of the planted group holds the bar of the stream without sign-offs (9 of 10),
    # and is within one study of what that stream gets.
    precision = _planted_precision(report, planted)
    assert precision >= 0.9 and precision >= _planted_precision(plain, planted) - 0.1
