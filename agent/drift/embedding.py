"""Week-over-week drift of one modality's embeddings: a kernel two-sample test, no labels needed.

:func:`embedding_drift` compares two samples of embeddings (the previous and this week) by the
unbiased squared maximum mean discrepancy (MMD², Gaussian kernel, median-distance bandwidth)
against its permutation null: the two weeks' rows are pooled, split at random ``n_permutations``
times, and the threshold is the ``1 - alpha`` quantile of the statistic over those splits, so a
week that drifted by this test is a false alarm with probability ``alpha`` when nothing moved.
The weekly summary and the agent's gauge (``slice_agent_embedding_drift_mmd``) use this one
function with the same settings and seed, so that they show the same figure for the same weeks.
Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.errors import AgentError

__all__ = ["MIN_EMBEDDINGS", "EmbeddingDrift", "embedding_drift", "mmd2"]

#: Embeddings a week needs, at least, to be compared.
MIN_EMBEDDINGS = 5


@dataclass(frozen=True)
class EmbeddingDrift:
    """Week-over-week shift of one modality's embeddings.

    ``mmd2`` is the unbiased squared maximum mean discrepancy (Gaussian kernel, median-distance
    bandwidth); ``threshold`` is its ``1 - alpha`` quantile when the two weeks are exchanged at
    random, so ``drifted`` has false-alarm rate ``alpha``. ``centroid_shift`` is the cosine distance
    between the two weeks' mean embeddings, an easier number to read.
    """

    modality: str
    mmd2: float
    threshold: float
    centroid_shift: float
    n_previous: int
    n_current: int

    @property
    def drifted(self) -> bool:
        """Whether the statistic is above its permutation threshold."""
        return self.mmd2 > self.threshold


def _sq_dists(x: np.ndarray) -> np.ndarray:
    sq = np.sum(x * x, axis=1)
    return np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)


def mmd2(k: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Unbiased MMD² of splits of a pooled kernel matrix ``k`` (n x n).

    ``first`` marks group one: a boolean vector (one split, a 0-d result) or a matrix with one
    split per column (one value per column). Every split must have at least two rows per group.

    >>> k = np.exp(-np.subtract.outer(np.arange(4.0), np.arange(4.0)) ** 2)
    >>> round(float(mmd2(k, np.array([True, True, False, False]))), 4)
    0.5334
    """
    a = np.asarray(first, dtype=np.float64)
    b = 1.0 - a
    off = k - np.diag(np.diag(k))
    na, nb = a.sum(axis=0), b.sum(axis=0)
    ka, kb = off @ a, off @ b
    aa = np.sum(a * ka, axis=0) / (na * (na - 1))
    bb = np.sum(b * kb, axis=0) / (nb * (nb - 1))
    ab = np.sum(a * (k @ b), axis=0) / (na * nb)
    return np.asarray(aa + bb - 2.0 * ab)


def embedding_drift(
    previous: np.ndarray,
    current: np.ndarray,
    *,
    modality: str,
    alpha: float = 0.01,
    n_permutations: int = 200,
    max_samples: int = 300,
    seed: int = 0,
) -> EmbeddingDrift:
    """Compare two weeks of one modality's embeddings (rows with NaN, a missing modality, are dropped).

    The rows of each week are put in a canonical order first, so that the same two samples give
    the same figure (statistic, subsample and permutations) whatever order they are handed in.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> same = embedding_drift(rng.normal(size=(80, 8)), rng.normal(size=(80, 8)), modality="report")
    >>> moved = embedding_drift(rng.normal(size=(80, 8)), rng.normal(1.0, 1, (80, 8)), modality="report")
    >>> same.drifted, moved.drifted
    (False, True)
    """
    rng = np.random.default_rng(seed)

    def rows(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        x = x[np.all(np.isfinite(x), axis=1)]
        x = x[np.lexsort(x.T[::-1])] if x.size else x  # the result does not depend on the rows' order
        if len(x) > max_samples:
            x = x[np.sort(rng.choice(len(x), max_samples, replace=False))]
        return x

    prev, cur = rows(previous), rows(current)
    if len(prev) < MIN_EMBEDDINGS or len(cur) < MIN_EMBEDDINGS:
        raise AgentError(
            f"embedding drift of {modality} needs at least {MIN_EMBEDDINGS} embeddings a week, "
            f"got {len(prev)} and {len(cur)}"
        )
    if prev.shape[1] != cur.shape[1]:
        raise AgentError(
            f"expected embeddings of one width for {modality}, got {prev.shape[1]} and {cur.shape[1]}"
        )
    pooled = np.vstack([prev, cur])
    d2 = _sq_dists(pooled)
    off = d2[np.triu_indices(len(pooled), k=1)]
    bandwidth = float(np.median(off[off > 0])) if np.any(off > 0) else 1.0
    k = np.exp(-d2 / bandwidth)
    first = np.zeros(len(pooled), dtype=bool)
    first[: len(prev)] = True
    stat = float(mmd2(k, first))
    splits = np.stack([rng.permutation(first) for _ in range(n_permutations)], axis=1)
    null = mmd2(k, splits)
    mu_p, mu_c = prev.mean(axis=0), cur.mean(axis=0)
    norm = float(np.linalg.norm(mu_p) * np.linalg.norm(mu_c))
    shift = 1.0 - float(mu_p @ mu_c) / norm if norm > 0 else 0.0
    return EmbeddingDrift(
        modality=modality,
        mmd2=stat,
        threshold=float(np.quantile(null, 1.0 - alpha)),
        centroid_shift=shift,
        n_previous=len(prev),
        n_current=len(cur),
    )
