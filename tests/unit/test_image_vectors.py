"""An image embedded on arrival is never decoded again: the store keeps its vector's key."""

from __future__ import annotations

import hashlib
import json

import numpy as np
from hostile_files import dataset, write

from agent.audit import embed_samples
from agent.embed import CachedEmbedder, MemoryCache
from agent.events import decode_event
from agent.images import ImageAccess
from agent.store import Incoming, Store, StorePolicy
from agent.stream.embedding import ArrivalEmbedder

T = "2026-11-29T10:00:00Z"


class PixelHash:
    """A stand-in model: a vector from a hash of the pixels (what matters here is which pixels)."""

    name = "pixel-hash"
    image_dim = 8
    text_dim = 8
    shared_space = False

    def __init__(self) -> None:
        self.images = 0

    def embed_images(self, images):
        self.images += len(images)
        digests = [hashlib.sha256(np.ascontiguousarray(i).tobytes()).digest()[:8] for i in images]
        return np.array([np.frombuffer(d, np.uint8) / 255.0 for d in digests], dtype=np.float32)

    def embed_texts(self, texts):
        return np.ones((len(texts), 8), dtype=np.float32)


def test_a_refit_after_arrival_embedding_decodes_no_image(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "images"
    root.mkdir()
    store = Store(tmp_path / "state.sqlite", StorePolicy(label_delay_seconds=1e9))
    events = []
    for i in range(20):
        path = write(dataset(32, 32), root / f"{i}.dcm", rng.integers(0, 4096, (32, 32), dtype=np.uint16))
        events.append(
            {
                "type": "inference",
                "event_id": f"i{i}",
                "study_uid": f"s{i}",
                "model": "m",
                "prediction": "pos",
                "timestamp": T,
                "image": str(path),
            }
        )
        events.append(
            {"type": "label", "event_id": f"l{i}", "study_uid": f"s{i}", "label": "pos", "timestamp": T}
        )
    store.apply([Incoming(f"t:0:{n}", b"", decode_event(json.dumps(e))) for n, e in enumerate(events)])
    model = PixelHash()
    embedder = CachedEmbedder(model, MemoryCache())
    access = ImageAccess(roots=(root,))
    arrival = ArrivalEmbedder(store, embedder, modalities=("image", "metadata"), images=access)
    assert arrival.drain() == 20 and model.images == 20

    window = store.window("m")
    assert all(s.image_key for s in window)
    assert all(s.metadata and s.metadata.get("Modality") == "CR" for s in window)  # from the header
    refit = embed_samples(window, ("image", "metadata"), embedder, images=access)
    assert refit.decoded == 0 and model.images == 20
    # The same vectors as decoding the files afresh.
    fresh = embed_samples(window, ("image",), CachedEmbedder(PixelHash(), MemoryCache()), images=access)
    assert fresh.decoded == 20
    assert np.array_equal(refit.blocks["image"], fresh.blocks["image"])
    store.close()
