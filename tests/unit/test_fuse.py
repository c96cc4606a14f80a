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
