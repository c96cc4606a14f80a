"""Fuse per-modality embeddings: L2-normalise each, concatenate with equal weights, reduce by PCA.

A case that lacks a modality (no image, report not arrived) is still a case: its block is a
zero vector, which after normalisation of the others means "no evidence from this modality",
and the result says how many rows each modality was missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from sklearn.decomposition import PCA

from agent.errors import FitError

__all__ = ["MODALITIES", "Fused", "fuse"]

MODALITIES = ("image", "report", "metadata")


@dataclass(frozen=True)
class Fused:
    """The fused embedding ``(n, k)`` and what went into it."""

    embedding: np.ndarray
    modalities: tuple[str, ...]
    missing: dict[str, int] = field(default_factory=dict)
    explained_variance: float = 1.0


def _unit_rows(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    block = np.asarray(block, dtype=np.float64)
    missing = ~np.all(np.isfinite(block), axis=1)
    out = np.where(missing[:, None], 0.0, block)
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    missing |= norm[:, 0] == 0
    return np.where(norm > 0, out / np.maximum(norm, 1e-12), 0.0), missing


def fuse(blocks: Mapping[str, np.ndarray], *, n_components: int = 128, random_state: int = 0) -> Fused:
    """Fuse the given modality blocks (rows with NaN mark a missing modality for that case).

    Parameters
    ----------
    blocks
        Modality name to ``(n, d_m)`` array, in the order they should be concatenated.
    n_components
        PCA components kept, capped by the number of cases and the total dimension.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> f = fuse({"report": rng.normal(size=(50, 8)), "metadata": rng.normal(size=(50, 4))}, n_components=5)
    >>> f.embedding.shape, f.modalities
    ((50, 5), ('report', 'metadata'))
    """
    if not blocks:
        raise FitError("expected at least one modality to fuse, got none")
    names = tuple(blocks)
    sizes = {len(np.asarray(b)) for b in blocks.values()}
    if len(sizes) != 1:
        raise FitError(f"expected every modality block to have one row per case, got row counts {sizes}")
    parts, missing = [], {}
    for name in names:
        unit, gone = _unit_rows(blocks[name])
        parts.append(unit)
        missing[name] = int(gone.sum())
    joined = np.hstack(parts)
    n = joined.shape[0]
    k = min(n_components, n, joined.shape[1])
    if n < 2 or k < 1:
        return Fused(joined, names, missing)
    pca = PCA(n_components=k, random_state=random_state)
    reduced = pca.fit_transform(joined)
    return Fused(reduced, names, missing, float(np.sum(pca.explained_variance_ratio_)))
