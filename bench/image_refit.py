"""Benchmark: a refit of a window of image studies, with image vectors kept by key against decoding.

Writes N small real DICOM files (CR, 128 x 128, 12-bit), embeds them once as the arrival embedder does
(default embedder, through the cache, in a store), then times the image part of a refit two ways on
the same window: reading each vector by the key the store kept (the agent's path), and decoding every
file again (the path before keys were kept; the vectors still come from the cache by pixel hash).

    .venv/bin/python bench/image_refit.py --studies 2000 --out docs/bench/image_refit.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from hostile_files import dataset, write  # noqa: E402

from agent.audit import embed_samples  # noqa: E402
from agent.embed import CachedEmbedder, make_embedder  # noqa: E402
from agent.events import decode_event  # noqa: E402
from agent.images import ImageAccess  # noqa: E402
from agent.store import Incoming, Store, StorePolicy, VectorCache  # noqa: E402
from agent.stream.embedding import ArrivalEmbedder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--studies", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="slice-agent-image-refit-") as work:
        root = Path(work) / "images"
        root.mkdir()
        store = Store(Path(work) / "state.sqlite", StorePolicy(label_delay_seconds=1e9))
        t = "2026-11-29T10:00:00Z"
        events = []
        for i in range(args.studies):
            pixels = rng.integers(0, 4096, (128, 128), dtype=np.uint16)
            path = write(dataset(128, 128), root / f"{i}.dcm", pixels)
            events.append(
                {
                    "type": "inference",
                    "event_id": f"i{i}",
                    "study_uid": f"s{i}",
                    "model": "m",
                    "prediction": "pos" if i % 2 else "neg",
                    "timestamp": t,
                    "image": str(path),
                }
            )
            events.append(
                {
                    "type": "label",
                    "event_id": f"l{i}",
                    "study_uid": f"s{i}",
                    "label": "pos" if i % 3 else "neg",
                    "timestamp": t,
                }
            )
        store.apply([Incoming(f"b:{n}", b"", decode_event(json.dumps(e))) for n, e in enumerate(events)])
        embedder = CachedEmbedder(make_embedder("default"), VectorCache(store))
        access = ImageAccess(roots=(root,))
        started = time.perf_counter()
        ArrivalEmbedder(store, embedder, modalities=("image", "metadata"), images=access).drain()
        arrival = time.perf_counter() - started
        window = store.window("m")
        started = time.perf_counter()
        keyed = embed_samples(window, ("image", "metadata"), embedder, images=access)
        by_key = time.perf_counter() - started
        started = time.perf_counter()
        decoded = embed_samples(
            [replace(s, image_key=None) for s in window], ("image", "metadata"), embedder, images=access
        )
        by_decoding = time.perf_counter() - started
        assert np.array_equal(keyed.blocks["image"], decoded.blocks["image"])
        result = {
            "command": "bench/image_refit.py " + " ".join(sys.argv[1:]),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "load_average": list(os.getloadavg()),
            },
            "studies": args.studies,
            "arrival_embedding_seconds": round(arrival, 2),
            "refit_images_by_key": {"seconds": round(by_key, 3), "files_decoded": keyed.decoded},
            "refit_images_by_decoding": {"seconds": round(by_decoding, 3), "files_decoded": decoded.decoded},
        }
        store.close()
    print(json.dumps(result, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
