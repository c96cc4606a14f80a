"""The audit pipeline's refit: thread limits around the numerical part, and texts embedded once."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import agent.audit
from agent.audit import embed_samples, fit_slices, run_audit, window_capacity
from agent.config import load_settings
from agent.sample import Sample
from agent.simulate import StreamSpec, generate_stream


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


class Batches(Recording):
    """Records each call's texts as one batch."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[str]] = []

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        self.batches.append(list(texts))
        return super().embed_texts(texts)


def test_texts_are_embedded_in_batches_of_like_length():
    # Reports of many lengths, in no order.
    samples = [
        replace(s, report=f"Chest view {i % 40}. " + "Lungs clear. " * ((i * 7919) % 13) if i % 5 else None)
        for i, s in enumerate(_samples(300))
    ]
    emb = Batches()
    got = embed_samples(samples, ["report"], emb, batch_size=4)
    lengths = [[len(t) for t in batch] for batch in emb.batches]
    assert len(lengths) > 3 and all(len(b) <= 4 for b in lengths)
    flat = [n for batch in lengths for n in batch]
    assert flat == sorted(flat)  # each batch is padded to its longest text only
    reference = Recording()
    for i, text in enumerate(got.reports):
        if text:
            np.testing.assert_array_equal(got.blocks["report"][i], reference.embed_texts([text])[0])


def _planted(n: int, failure: str, seed: int) -> list[Sample]:
    events, _ = generate_stream(StreamSpec(n_studies=n, failure=failure, seed=seed))
    inference = {e["study_uid"]: e for e in events if e["type"] == "inference"}
    labels = {e["study_uid"]: e["label"] for e in events if e["type"] == "label"}
    reports = {e["study_uid"]: e["text"] for e in events if e["type"] == "report"}
    return [
        Sample(
            study_uid=uid,
            model=inf["model"],
            prediction=inf["prediction"],
            label=labels[uid],
            timestamp=datetime.fromisoformat(inf["timestamp"].replace("Z", "+00:00")),
            report=reports.get(uid),
            metadata=inf.get("metadata", {}),
        )
        for uid, inf in inference.items()
        if uid in labels
    ]


def _in_arrival_order(embedder: Any, texts: list[str], batch_size: int) -> np.ndarray:
    """A block embedded as before the sorting: each distinct text once, batches in arrival order."""
    distinct = list(dict.fromkeys(t for t in texts if t))
    vectors = np.concatenate(
        [embedder.embed_texts(distinct[i : i + batch_size]) for i in range(0, len(distinct), batch_size)]
    )
    where = {t: j for j, t in enumerate(distinct)}
    out = np.full((len(texts), vectors.shape[1]), np.nan, dtype=np.float32)
    rows = [i for i, t in enumerate(texts) if t]
    out[rows] = vectors[[where[texts[i]] for i in rows]]
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("failure", "seed"), [("devices", 3), ("portable", 3)])
def test_length_sorted_batches_find_the_same_slices_as_arrival_order(failure, seed):
    from agent.embed import DefaultEmbedder

    samples = _planted(1000, failure, seed)
    embedder = DefaultEmbedder(threads=1)
    settings = load_settings()
    got = embed_samples(samples, ["report", "metadata"], embedder, batch_size=32)
    sentences = [t.split("\n", 1)[1] for t in got.texts]
    before = {
        "report": _in_arrival_order(embedder, got.reports, 32),
        "metadata": _in_arrival_order(embedder, sentences, 32),
    }
    for name, block in before.items():
        np.testing.assert_allclose(got.blocks[name], block, atol=1e-5)  # float rounding only
    y = np.array([s.label == "pneumothorax" for s in samples], dtype=np.float64)
    y_pred = np.array([s.prediction == "pneumothorax" for s in samples], dtype=np.float64)
    assert 0 < y.sum() < len(y)
    dims, components = window_capacity(settings, len(samples))
    _, want = fit_slices(before, y, y_pred, settings, dims, components)
    _, have = fit_slices(got.blocks, y, y_pred, settings, dims, components)
    assert want, "the planted failure must give a slice"
    assert [np.flatnonzero(f.members).tolist() for f in have] == [
        np.flatnonzero(f.members).tolist() for f in want
    ]
    assert [f.p_value for f in have] == pytest.approx([f.p_value for f in want], rel=1e-6)


@pytest.mark.slow
def test_the_onnx_text_tower_finds_the_same_slices_as_the_torch_tower():
    from agent.embed import DefaultEmbedder
    from agent.embed.onnx_text import OnnxTextTower

    samples = _planted(1000, "devices", 3)
    settings = load_settings()
    onnx, torch = DefaultEmbedder(threads=1), DefaultEmbedder(threads=1, runtime="torch")
    have = embed_samples(samples, ["report", "metadata"], onnx, batch_size=32).blocks
    want = embed_samples(samples, ["report", "metadata"], torch, batch_size=32).blocks
    assert isinstance(onnx._get_text_model(), OnnxTextTower)
    assert not isinstance(torch._get_text_model(), OnnxTextTower)
    for name in want:
        np.testing.assert_allclose(have[name], want[name], atol=2e-6)  # float rounding only
    y = np.array([s.label == "pneumothorax" for s in samples], dtype=np.float64)
    y_pred = np.array([s.prediction == "pneumothorax" for s in samples], dtype=np.float64)
    dims, components = window_capacity(settings, len(samples))
    _, slices_torch = fit_slices(want, y, y_pred, settings, dims, components)
    _, slices_onnx = fit_slices(have, y, y_pred, settings, dims, components)
    assert slices_torch, "the planted failure must give a slice"
    assert [np.flatnonzero(f.members).tolist() for f in slices_onnx] == [
        np.flatnonzero(f.members).tolist() for f in slices_torch
    ]
    assert [f.p_value_raw for f in slices_onnx] == pytest.approx(
        [f.p_value_raw for f in slices_torch], rel=1e-6
    )
    # The Bonferroni factor counts the components chosen in every cross-fitted space (about 40
    # here); float rounding can move one component's territory across the smallest size that is
    # chosen, on one machine and not another: the adjusted p-values agree within that one count.
    assert [f.p_value for f in slices_onnx] == pytest.approx([f.p_value for f in slices_torch], rel=0.03)


def test_a_failing_view_is_its_header_value_not_the_report_word_it_shares():
    """Lateral films fail; "lateral" is also a word of many frontal films' reports. The view is a
    term column of its own (``view=lateral``), so the slice is the lateral films exactly."""
    rng = np.random.default_rng(8)
    n = 1000
    lateral = rng.random(n) < 0.06
    word = lateral | (rng.random(n) < 0.3)  # "left lateral chest wall", "PA and lateral views"
    texts = [
        ("lateral chest wall clear" if w else "lungs are clear") + f" finding{i % 7}"
        for i, w in enumerate(word)
    ]
    headers = [{"ViewPosition": "LL" if v else "PA", "PatientSex": "F"} for v in lateral]
    y = (rng.random(n) < 0.4).astype(float)
    err = rng.random(n) < np.where(lateral, 0.5, 0.06)
    y_pred = np.where(err, 1 - y, y)
    space = agent.audit.TokenSpace(min_df=3).fit(texts)
    settings = load_settings(overrides={"audit": {"spaces": ["terms"]}})
    blocks = {"report": rng.normal(size=(n, 8))}
    _, found = fit_slices(blocks, y, y_pred, settings, 8, 4, space=space, headers=headers)
    assert found
    best = found[0]
    assert best.fold == -1  # a whole-window term rule
    assert set(np.flatnonzero(best.members)) == set(np.flatnonzero(lateral & (y == best.slice_class)))
    # Without the header columns the best rule is the report word, which frontal films share.
    _, words_only = fit_slices(blocks, y, y_pred, settings, 8, 4, space=space)
    assert not words_only or lateral[words_only[0].members].mean() < 0.5
