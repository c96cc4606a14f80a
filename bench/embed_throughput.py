"""Benchmark: the default embedder's throughput while the agent ingests, against the same work alone.

One process, as in the streaming agent: the main thread replays a simulated stream (reports,
metadata and, for ``--images`` of its studies, a small real DICOM file each) through
:class:`~agent.stream.sidecar.Sidecar` (decoding, the store's join, no refits), while the arrival
embedder embeds what was stored in its worker thread. Every call that reaches the model is recorded
with its inputs and its duration. The worker's calls that ended while ingestion was still running
(before the replay's last step, which embeds the rest in the main thread, alone) are then made
again, in the same order with the same batches, with nothing else running in the process: the
embedder's standalone throughput on exactly the same work.

Reported per modality: texts/s and images/s inside the model's calls, during ingestion and alone,
and their ratio (goal: at least 0.9). The ingestion's own rate (events/s) is given beside it.

    PYTHONPATH=. nice python bench/embed_throughput.py --device cpu --studies 6000 --images 400 \\
        --out docs/bench/embed_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from hostile_files import dataset, write  # noqa: E402

from agent.config import load_settings  # noqa: E402
from agent.embed import CachedEmbedder, DefaultEmbedder, MemoryCache  # noqa: E402
from agent.embed.base import WrappedEmbedder  # noqa: E402
from agent.simulate import StreamSpec, generate_stream, write_jsonl  # noqa: E402
from agent.stream import Sidecar, replay_file  # noqa: E402


@dataclass
class Call:
    """One call that reached the model."""

    kind: str
    inputs: list[Any]
    started: float
    ended: float
    thread: int


class Recorder(WrappedEmbedder):
    """Passes calls to the model and records each one with its inputs and its timing."""

    def __init__(self, inner: DefaultEmbedder) -> None:
        super().__init__(inner)
        self.calls: list[Call] = []

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        started = time.perf_counter()
        out = self.inner.embed_images(images)
        self.calls.append(Call("image", list(images), started, time.perf_counter(), threading.get_ident()))
        return out

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        started = time.perf_counter()
        out = self.inner.embed_texts(texts)
        self.calls.append(Call("text", list(texts), started, time.perf_counter(), threading.get_ident()))
        return out


def _stream(work: Path, studies: int, images: int) -> Path:
    """A simulated stream whose first ``images`` inferences carry a DICOM file of their own."""
    events, _ = generate_stream(StreamSpec(n_studies=studies, failure="devices", seed=0))
    rng = np.random.default_rng(0)
    root = work / "images"
    root.mkdir()
    given = 0
    for event in events:
        if event["type"] == "inference" and given < images:
            pixels = rng.integers(0, 4096, (256, 256), dtype=np.uint16)
            event["image"] = str(write(dataset(256, 256), root / f"{given}.dcm", pixels))
            given += 1
    path = work / "events.jsonl"
    write_jsonl(events, path)
    return path


def _rates(calls: Sequence[Call], seconds: Sequence[float]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for kind in ("text", "image"):
        picked = [(c, s) for c, s in zip(calls, seconds, strict=True) if c.kind == kind]
        n = sum(len(c.inputs) for c, _ in picked)
        busy = sum(s for _, s in picked)
        out[kind] = {"inputs": n, "calls": len(picked), "seconds": round(busy, 2)}
        out[kind]["per_second"] = round(n / busy, 1) if busy else 0.0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--studies", type=int, default=6000)
    parser.add_argument("--images", type=int, default=400, help="studies that carry an image file")
    parser.add_argument("--threads", type=int, default=1, help="the embedder's torch threads (embed.threads)")
    parser.add_argument(
        "--runtime", default="onnx", choices=["onnx", "torch"], help="the default embedder's runtime"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    model = DefaultEmbedder(device=args.device, threads=args.threads, runtime=args.runtime)
    model.load()
    recorder = Recorder(model)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="embed-throughput-") as tmp:
        work = Path(tmp)
        events = _stream(work, args.studies, args.images)
        settings = load_settings(
            overrides={
                "modalities": ["image", "report", "metadata"],
                "embed": {"device": args.device, "threads": args.threads},
                "images": {"roots": [str(work / "images")]},
                "stream": {
                    "store_path": str(work / "state.sqlite"),
                    "dead_letter_path": str(work / "dead.jsonl"),
                    "refit_every_labels": 10**9,
                    "refit_every_seconds": 1e9,
                },
            }
        )
        sidecar = Sidecar(settings, CachedEmbedder(recorder, MemoryCache()))
        sidecar.start()
        # The replay ends by embedding what the worker has not reached, in the main thread, with
        # nothing else running: the measurement stops where that would begin.
        ends: list[float] = []
        sidecar.arrival.drain = lambda: ends.append(time.perf_counter()) or 0  # type: ignore[method-assign]
        started = time.perf_counter()
        summary = replay_file(events, sidecar, final_refit=False)
        ingest_end = ends[0]
        ingest_seconds = ingest_end - started
        backlog = sidecar.store.unembedded(10**9)
        sidecar.close()
    main = threading.get_ident()
    during = [c for c in recorder.calls if c.ended <= ingest_end and c.thread != main]
    if not during:
        raise SystemExit("no embedding finished while the stream was ingested; give it more studies")
    alone: list[float] = []
    for call in during:  # the same calls again, nothing else running
        t = time.perf_counter()
        if call.kind == "text":
            model.embed_texts(call.inputs)
        else:
            model.embed_images(call.inputs)
        alone.append(time.perf_counter() - t)
    ingesting = _rates(during, [c.ended - c.started for c in during])
    standalone = _rates(during, alone)
    result = {
        "command": "bench/embed_throughput.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "device": args.device,
        "threads": args.threads,
        "runtime": args.runtime,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "ingest": {
            "events": summary.lines,
            "seconds": round(ingest_seconds, 1),
            "events_per_second": round(summary.lines / ingest_seconds, 1),
            "rows_not_yet_embedded_at_the_end": len(backlog),
        },
        "while_ingesting": ingesting,
        "standalone": standalone,
        "ratio": {
            kind: round(ingesting[kind]["per_second"] / standalone[kind]["per_second"], 3)
            for kind in ("text", "image")
            if standalone[kind]["per_second"]
        },
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
