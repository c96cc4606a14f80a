from __future__ import annotations

import numpy as np
import pytest

from agent.errors import FitError
from agent.fuse import fuse


def test_equal_weights_after_normalisation():
    rng = np.random.default_rng(0)
    big, small = rng.normal(size=(40, 6)) * 1000, rng.normal(size=(40, 3)) * 0.001
    f = fuse({"report": big, "metadata": small}, n_components=9)
    # With every component kept, PCA is a rotation: squared norms stay 1 + 1 around the mean.
    assert f.embedding.shape == (40, 9)
    assert f.explained_variance == pytest.approx(1.0)


def test_every_non_empty_subset_of_modalities_works():
    rng = np.random.default_rng(1)
    blocks = {
        "image": rng.normal(size=(30, 8)),
        "report": rng.normal(size=(30, 5)),
        "metadata": rng.normal(size=(30, 4)),
    }
    from itertools import combinations

    subsets = [c for r in (1, 2, 3) for c in combinations(blocks, r)]
    assert len(subsets) == 7
    for subset in subsets:
        f = fuse({m: blocks[m] for m in subset}, n_components=4)
        assert f.embedding.shape == (30, 4) and f.modalities == subset


def test_missing_rows_are_counted_and_zeroed():
    rng = np.random.default_rng(2)
    report = rng.normal(size=(20, 5))
    report[:3] = np.nan
    f = fuse({"report": report, "metadata": rng.normal(size=(20, 4))}, n_components=3)
    assert f.missing == {"report": 3, "metadata": 0}
    assert np.isfinite(f.embedding).all()


def test_mismatched_rows_raise():
    with pytest.raises(FitError, match="one row per case"):
        fuse({"a": np.ones((3, 2)), "b": np.ones((4, 2))})
    with pytest.raises(FitError):
        fuse({})


def _reference(blocks, k):
    """The fusion as first written: float64 unit rows, concatenated, scikit-learn's full PCA."""
    from sklearn.decomposition import PCA

    parts = []
    for b in blocks.values():
        b = np.asarray(b, dtype=np.float64)
        ok = np.all(np.isfinite(b), axis=1)
        b = np.where(ok[:, None], b, 0.0)
        norm = np.linalg.norm(b, axis=1, keepdims=True)
        parts.append(np.where(norm > 0, b / np.maximum(norm, 1e-12), 0.0))
    pca = PCA(n_components=k, svd_solver="full")
    return pca.fit_transform(np.hstack(parts)), float(np.sum(pca.explained_variance_ratio_))


def _aligned(got, want):
    """``got`` with each column's sign matched to ``want``'s."""
    signs = np.sign(np.sum(got * want, axis=0))
    return got * signs


@pytest.mark.parametrize(("n", "offset"), [(3000, 0.0), (3000, 5.0), (150, 0.0)])
def test_matches_a_float64_pca_reference(n, offset):
    # offset 5: every row points nearly the same way, the hard case for a covariance in float32;
    # n = 150: fewer cases than dimensions, the wide path.
    rng = np.random.default_rng(3)
    latent = rng.normal(size=(n, 6))
    blocks = {
        "image": (latent @ rng.normal(size=(6, 120)) + 0.3 * rng.normal(size=(n, 120)) + offset).astype(
            np.float32
        ),
        "report": (latent @ rng.normal(size=(6, 80)) + 0.3 * rng.normal(size=(n, 80))).astype(np.float32),
    }
    blocks["report"][::17] = np.nan
    f = fuse(blocks, n_components=12)
    want, ratio = _reference(blocks, 12)
    assert f.embedding.dtype == np.float32 and f.embedding.shape == (n, 12)
    assert f.explained_variance == pytest.approx(ratio, rel=1e-4)
    # The leading axes carry the latent structure and are well separated: they must agree.
    np.testing.assert_allclose(
        _aligned(f.embedding[:, :6], want[:, :6]), want[:, :6], atol=2e-4 * np.abs(want[:, :6]).max()
    )


def test_inputs_are_not_modified_and_signs_are_deterministic():
    rng = np.random.default_rng(4)
    blocks = {"image": rng.normal(size=(400, 30)).astype(np.float32), "report": rng.normal(size=(400, 20))}
    blocks["image"][5] = np.nan
    before = {k: v.copy() for k, v in blocks.items()}
    a = fuse(blocks, n_components=8)
    for k in blocks:
        np.testing.assert_array_equal(blocks[k], before[k])
    b = fuse({k: v.copy() for k, v in blocks.items()}, n_components=8)
    np.testing.assert_array_equal(a.embedding, b.embedding)
    # scikit-learn's convention: the largest loading of every axis is positive. Recover the
    # loadings by least squares from the (centred) unit rows.
    unit = np.hstack([np.nan_to_num(v / np.linalg.norm(v, axis=1, keepdims=True)) for v in blocks.values()])
    loadings, *_ = np.linalg.lstsq(unit - unit.mean(axis=0), a.embedding.astype(np.float64), rcond=None)
    peak = loadings[np.argmax(np.abs(loadings), axis=0), np.arange(8)]
    assert np.all(peak > 0)


def test_slabs_do_not_change_the_result(monkeypatch):
    import agent.fuse as fuse_module

    rng = np.random.default_rng(5)
    latent = rng.normal(size=(5000, 10)) * np.linspace(3, 1, 10)  # well-separated axes
    blocks = {
        "image": (latent @ rng.normal(size=(10, 40)) + 0.2 * rng.normal(size=(5000, 40))).astype(np.float32),
        "report": latent @ rng.normal(size=(10, 24)) + 0.2 * rng.normal(size=(5000, 24)),
    }
    whole = fuse(blocks, n_components=10)
    monkeypatch.setattr(fuse_module, "_SLAB_BYTES", 4 * 64 * 64)  # 256-row slabs: 20 of them
    sliced = fuse(blocks, n_components=10)
    np.testing.assert_allclose(sliced.embedding, whole.embedding, atol=1e-5)


def test_peak_memory_stays_near_the_result():
    import tracemalloc

    rng = np.random.default_rng(6)
    blocks = {
        "image": rng.normal(size=(20_000, 256)).astype(np.float32),
        "report": rng.normal(size=(20_000, 128)).astype(np.float32),
    }
    tracemalloc.start()
    f = fuse(blocks, n_components=32)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    import agent.fuse as fuse_module

    result = f.embedding.nbytes
    window_float64 = 20_000 * 384 * 8
    # The old fusion held the window in float64 twice (59 MiB each here); this one holds the
    # result (2.4 MiB), one slab (8 MiB at most) and a few d x d matrices (the covariance, a
    # slab's product, the eigensolver's work).
    bound = result + fuse_module._SLAB_BYTES + 5 * 8 * 384**2 + 2**20
    assert peak < bound < window_float64 / 3
