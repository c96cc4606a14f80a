"""`slice-agent mllp` on the real broker: HL7 v2 ORU^R01 messages in MLLP frames over a socket become
report events on the report topic and get their ACK; malformed ones get AE or AR and a dead letter."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness import ROOT, free_port, stream_settings, wait_for, write_config
from kafka import KafkaConsumer

from agent.messages.mllp import END, START, ack_code

GOOD = "\r".join(
    [
        "MSH|^~\\&|RIS|GENHOSP|SLICE|AI|20261129101500||ORU^R01|M{n}|P|2.5.1",
        "PID|1||MRN{n}^^^GENHOSP||DOE^JANE",
        "OBR|1|O{n}|ACC{n}|71045^CHEST^CPT|||20261129100000|||||||||||||||20261129101000|||F",
        "OBX|1|TX|&IMP^Impression^L||Small left apical pneumothorax {n}.||||||F",
        "ZDS|1.2.826.0.1.{n}^RIS^Application^DICOM",
    ]
)
NO_TEXT = "\r".join(
    [
        "MSH|^~\\&|RIS|GENHOSP|SLICE|AI|20261129101500||ORU^R01|BAD1|P|2.5.1",
        "OBR|1|O9|ACC9|71045^CHEST^CPT|||20261129100000|||||||||||||||20261129101000|||F",
        "ZDS|1.2.826.0.1.99^RIS^Application^DICOM",
    ]
)
UNKNOWN_STUDY = "\r".join(
    [
        "MSH|^~\\&|RIS|GENHOSP|SLICE|AI|20261129101500||ORU^R01|BAD2|P|2.5.1",
        "OBR|1|O8|ACC8|71045^CHEST^CPT|||20261129100000|||||||||||||||20261129101000|||F",
        "OBX|1|TX|&IMP^Impression^L||No pneumothorax.||||||F",
    ]
)


def _answers(sock: socket.socket, n: int) -> list[str]:
    """Read ``n`` MLLP-framed answers."""
    buffer, out = b"", []
    sock.settimeout(60)
    while len(out) < n:
        chunk = sock.recv(65536)
        assert chunk, f"the listener closed the connection after {len(out)} answer(s)"
        buffer += chunk
        while START in buffer and END in buffer:
            start, end = buffer.index(START), buffer.index(END)
            out.append(buffer[start + 1 : end].decode("utf-8"))
            buffer = buffer[end + len(END) :]
    return out


def _consume(bootstrap: str, topic: str, n: int) -> list[Any]:
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=1000
    )
    got: list[Any] = []
    try:
        deadline = time.monotonic() + 60
        while len(got) < n and time.monotonic() < deadline:
            got.extend(consumer)
    finally:
        consumer.close()
    return got


def test_oru_messages_over_mllp_become_report_events_with_their_acks(tansu, tmp_path: Path):
    port = free_port()
    config = write_config(
        tmp_path / "mllp", bootstrap=tansu.bootstrap, name="mllp", embed_cache=tmp_path / "unused.sqlite"
    )
    settings = stream_settings(config)
    log = tmp_path / "mllp.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "mllp", "--config", str(config), "--port", str(port)],
            cwd=ROOT,
            env={**os.environ, "SLICE_AGENT_LOG_LEVEL": "INFO"},
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            lambda: b"listening for MLLP on 127.0.0.1" in log.read_bytes(), timeout=60, what="the listener"
        )
        frames = [GOOD.format(n=1), GOOD.format(n=2), NO_TEXT, "this is not HL7 at all", UNKNOWN_STUDY]
        stream = b"".join(START + f.encode() + END for f in frames)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            # A frame cut across two writes, and several frames in one: MLLP is a byte stream.
            sock.sendall(stream[:40])
            time.sleep(0.2)
            sock.sendall(stream[40:])
            answers = _answers(sock, len(frames))
        assert [ack_code(a) for a in answers] == ["AA", "AA", "AE", "AR", "AE"]
        assert answers[0].split("\r")[1] == "MSA|AA|M1" and answers[2].split("\r")[1].startswith(
            "MSA|AE|BAD1|"
        )
        reports = _consume(tansu.bootstrap, settings.report_topic, 2)
        letters = _consume(tansu.bootstrap, settings.dead_letter_topic, 3)
    finally:
        proc.terminate()
        code = proc.wait(30)
    assert code == 0, log.read_text(errors="replace")
    events = sorted((json.loads(r.value) for r in reports), key=lambda e: e["study_uid"])
    assert [(e["type"], e["study_uid"], e["text"]) for e in events] == [
        ("report", "1.2.826.0.1.1", "Small left apical pneumothorax 1."),
        ("report", "1.2.826.0.1.2", "Small left apical pneumothorax 2."),
    ]
    assert {r.key for r in reports} == {b"1.2.826.0.1.1", b"1.2.826.0.1.2"}
    dead = [json.loads(r.value) for r in letters]
    assert sorted(d["reason"] for d in dead) == ["malformed_hl7", "malformed_hl7", "unknown_study"]
    # A dead letter carries the reason, never the message: no name or record number leaves.
    assert not any("DOE" in json.dumps(d) or "MRN" in json.dumps(d) for d in dead + events)
    assert "Traceback" not in log.read_text(errors="replace")
