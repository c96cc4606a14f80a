"""The audit pipeline's refit: thread limits around the numerical part, and texts embedded once."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import agent.audit
from agent.audit import embed_samples, run_audit
from agent.config import load_settings
from agent.sample import Sample


class Recording:
    """A deterministic text embedder that records every text it is asked for."""

    name = "recording"
    image_dim = 8
    text_dim = 16
    shared_space = False

    def __init__(self) -> None:
        self.seen: list[str] = []

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        raise AssertionError("no images here")

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        self.seen.extend(texts)
        out = np.stack(
            [np.random.default_rng(zlib.crc32(t.encode())).normal(size=self.text_dim) for t in texts]
        )
        return out.astype(np.float32)


def _samples(n: int, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    views = ["PA", "AP", "LL"]
    out = []
    for i in range(n):
        view = views[i % 3]
        label = "finding" if rng.random() < 0.3 else "none"
        wrong = rng.random() < (0.6 if view == "LL" and label == "none" else 0.08)
        prediction = ("none" if label == "finding" else "finding") if wrong else label
        out.append(
            Sample(
                study_uid=f"1.2.{i}",
                model="m",
                prediction=prediction,
                label=label,
                timestamp=datetime(2026, 1, 1, tzinfo=UTC),
                report=f"Chest {view.lower()} view. Study {i % 40}." if i % 7 else None,
                metadata={"ViewPosition": view, "Modality": "CR"},
            )
        )
    return out


def test_each_distinct_text_is_embedded_once_and_lands_on_every_row_that_has_it():
    samples = _samples(300)
    emb = Recording()
    got = embed_samples(samples, ["report", "metadata"], emb, batch_size=16)
    assert len(emb.seen) == len(set(emb.seen))
    sentences = [t.split("\n", 1)[1] for t in got.texts]
    distinct = {r for r in got.reports if r} | set(sentences)
    assert sorted(emb.seen) == sorted(distinct)
    assert len(distinct) < 20  # from 300 cases: 3 views of reports (numbers are scrubbed), 3 sentences
    reference = Recording()
    for block, texts in (("report", got.reports), ("metadata", sentences)):
        for i, text in enumerate(texts):
            if text:
                np.testing.assert_array_equal(got.blocks[block][i], reference.embed_texts([text])[0])
            else:
                assert np.isnan(got.blocks[block][i]).all()


def _blas_threads() -> set[int]:
    return {int(i["num_threads"]) for i in threadpool_info() if i.get("user_api") == "blas"}


@pytest.mark.parametrize("threads", [1, 2])
def test_the_refit_runs_on_the_configured_blas_threads(monkeypatch, threads):
    seen: list[set[int]] = []
    real = agent.audit.discover_in_spaces

    def recording(*args, **kwargs):
        seen.append(_blas_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(agent.audit, "discover_in_spaces", recording)
    before = _blas_threads()
    settings = load_settings(
        overrides={"audit": {"blas_threads": threads, "pca_components": 8, "n_components": 6}}
    )
    run_audit(_samples(400), embedder=Recording(), settings=settings)
    assert seen == [{threads}]
    assert _blas_threads() == before  # restored after the refit
