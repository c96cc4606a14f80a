"""Synthetic embeddings with a planted error slice, for testing and benchmarking slicers.

Cases fall into ``n_clusters`` Gaussian clusters in ``dim`` dimensions. Errors occur uniformly
at ``base_error``; with ``planted=True`` the cases of one cluster that carry one label (the
planted group) are also wrong at ``slice_error``. With ``planted=False`` the same overall
number of errors is spread uniformly instead: a model with no systematic failure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PlantedData", "planted_gaussian"]


@dataclass(frozen=True)
class PlantedData:
    X: np.ndarray
    y: np.ndarray
    y_pred: np.ndarray
    in_group: np.ndarray


def planted_gaussian(
    n: int = 2000,
    dim: int = 32,
    *,
    n_clusters: int = 8,
    separation: float = 3.0,
    base_error: float = 0.08,
    slice_error: float = 0.7,
    prevalence: float = 0.4,
    planted: bool = True,
    seed: int = 0,
) -> PlantedData:
    """Draw one synthetic window.

    >>> d = planted_gaussian(100, 4, seed=0)
    >>> d.X.shape, int(d.in_group.sum()) > 0
    ((100, 4), True)
    """
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=separation, size=(n_clusters, dim))
    cluster = rng.integers(0, n_clusters, n)
    X = centers[cluster] + rng.normal(size=(n, dim))
    y = (rng.random(n) < prevalence).astype(np.float64)
    in_group = (cluster == 0) & (y == 0)
    if planted:
        err = (rng.random(n) < base_error) | (in_group & (rng.random(n) < slice_error))
    else:
        rate = base_error + (1 - base_error) * slice_error * in_group.mean()
        err = rng.random(n) < rate
    y_pred = np.where(err, 1.0 - y, y)
    return PlantedData(X, y, y_pred, in_group)
