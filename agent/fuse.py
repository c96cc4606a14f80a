"""Fuse per-modality embeddings: L2-normalise each, concatenate with equal weights, reduce by PCA.

A case that lacks a modality (no image, report not arrived) is still a case: its block is a
zero vector, which after normalisation of the others means "no evidence from this modality",
and the result says how many rows each modality was missing.

The fused window is never held whole in float64. Rows are normalised a slab at a time; for a
window with at least as many cases as dimensions (the usual refit) PCA comes from the
covariance: ``d x d`` accumulated over centred slabs (float32 products summed in float64),
an ``eigh`` in float64 for the top components only, and a second pass that projects each slab.
That costs ``n d^2 / 2`` multiply-adds and ``O(d^2)`` memory beside the ``(n, k)`` result. A
wider window (fewer cases than dimensions) is small: it is materialised once in float32 and
reduced by scikit-learn's PCA with the solver it picks for that shape.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
from sklearn.decomposition import PCA

from agent.errors import FitError

__all__ = ["MODALITIES", "Fused", "fuse"]

MODALITIES = ("image", "report", "metadata")

#: Bytes of one slab of rows at most; bounds the memory fuse uses beside its result.
_SLAB_BYTES = 8 * 2**20


@dataclass(frozen=True)
class Fused:
    """The fused embedding ``(n, k)`` (float32) and what went into it."""

    embedding: np.ndarray
    modalities: tuple[str, ...]
    missing: dict[str, int] = field(default_factory=dict)
    explained_variance: float = 1.0


@dataclass(frozen=True)
class _Block:
    """One modality's rows as given (never copied whole), their scale to unit norm, and missing rows."""

    rows: np.ndarray
    scale: np.ndarray
    missing: np.ndarray
    offset: int
    total: np.ndarray
    """Sum of the unit rows, in float64."""


def _scan(rows: np.ndarray, offset: int, slab: int) -> _Block:
    """Row norms and the sum of unit rows in float64, a slab at a time (``scale`` is 0 for a missing row)."""
    n = rows.shape[0]
    scale = np.zeros(n)
    missing = np.zeros(n, dtype=bool)
    total = np.zeros(rows.shape[1])
    for start in range(0, n, slab):
        part = np.asarray(rows[start : start + slab], dtype=np.float64)
        finite = np.isfinite(part).all(axis=1)
        if not finite.all():
            part[~finite] = 0.0
        norm = np.sqrt(np.einsum("ij,ij->i", part, part))
        ok = finite & (norm > 0)
        row_scale = np.where(ok, 1.0 / np.maximum(norm, 1e-12), 0.0)
        scale[start : start + slab] = row_scale
        missing[start : start + slab] = ~ok
        total += row_scale @ part
    return _Block(rows, scale, missing, offset, total)


def _slabs(
    blocks: list[_Block], width: int, slab: int, mean: np.ndarray | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, rows)``: the fused unit rows in float32, ``slab`` cases at a time, less ``mean`` if given."""
    n = blocks[0].rows.shape[0]
    scales = [b.scale.astype(np.float32) for b in blocks]
    for start in range(0, n, slab):
        stop = min(start + slab, n)
        out = np.empty((stop - start, width), dtype=np.float32)
        for b, scale in zip(blocks, scales, strict=True):
            part = out[:, b.offset : b.offset + b.rows.shape[1]]
            part[...] = b.rows[start:stop]
            gone = b.missing[start:stop]
            if gone.any():
                part[gone] = 0.0  # NaN rows: 0 * NaN would stay NaN
            part *= scale[start:stop, None]
        if mean is not None:
            out -= mean
        yield start, out


def _covariance_pca(blocks: list[_Block], n: int, width: int, k: int, slab: int) -> tuple[np.ndarray, float]:
    """Project the fused rows on their top ``k`` principal axes; return them and the variance kept."""
    mean = (np.concatenate([b.total for b in blocks]) / n).astype(np.float32)
    cov = np.zeros((width, width))
    for _, centred in _slabs(blocks, width, slab, mean):
        cov += centred.T @ centred  # a symmetric rank-k update (syrk) in float32, summed in float64
    values, vectors = scipy.linalg.eigh(cov, subset_by_index=[width - k, width - 1])
    values, vectors = values[::-1], vectors[:, ::-1]
    # Deterministic signs, as scikit-learn's svd_flip: each axis's largest entry is positive.
    peak = vectors[np.argmax(np.abs(vectors), axis=0), np.arange(k)]
    vectors *= np.where(peak < 0, -1.0, 1.0)
    basis = np.ascontiguousarray(vectors, dtype=np.float32)
    out = np.empty((n, k), dtype=np.float32)
    for start, centred in _slabs(blocks, width, slab, mean):
        np.matmul(centred, basis, out=out[start : start + len(centred)])
    total = float(np.trace(cov))
    kept = float(np.sum(np.maximum(values, 0.0)))
    return out, (kept / total if total > 0 else 1.0)


def fuse(blocks: Mapping[str, np.ndarray], *, n_components: int = 128, random_state: int = 0) -> Fused:
    """Fuse the given modality blocks (rows with NaN mark a missing modality for that case).

    The inputs are read, never modified, and never copied whole.

    Parameters
    ----------
    blocks
        Modality name to ``(n, d_m)`` array, in the order they should be concatenated.
    n_components
        PCA components kept, capped by the number of cases and the total dimension.
    random_state
        Seed of the randomized solver a wide window (fewer cases than dimensions) may use.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> f = fuse({"report": rng.normal(size=(50, 8)), "metadata": rng.normal(size=(50, 4))}, n_components=5)
    >>> f.embedding.shape, f.embedding.dtype, f.modalities
    ((50, 5), dtype('float32'), ('report', 'metadata'))
    """
    if not blocks:
        raise FitError("expected at least one modality to fuse, got none")
    names = tuple(blocks)
    arrays = [np.asarray(blocks[name]) for name in names]
    sizes = {len(a) for a in arrays}
    if len(sizes) != 1:
        raise FitError(f"expected every modality block to have one row per case, got row counts {sizes}")
    if any(a.ndim != 2 for a in arrays):
        raise FitError(f"expected 2-D modality blocks, got shapes {[a.shape for a in arrays]}")
    n = arrays[0].shape[0]
    width = sum(a.shape[1] for a in arrays)
    # Slabs of a sixteenth of the window (a small window is not padded out to a large slab),
    # 256 rows at least (syrk needs depth) and _SLAB_BYTES at most.
    slab = int(np.clip(n // 16, 256, max(256, _SLAB_BYTES // (4 * max(width, 1)))))
    scanned: list[_Block] = []
    for a in arrays:
        rows = int(np.clip(n // 16, 256, max(256, _SLAB_BYTES // (8 * max(a.shape[1], 1)))))
        scanned.append(_scan(a, sum(b.rows.shape[1] for b in scanned), rows))
    missing = {name: int(b.missing.sum()) for name, b in zip(names, scanned, strict=True)}
    k = min(n_components, n, width)
    if n < 2 or k < 1:
        joined = np.vstack([rows for _, rows in _slabs(scanned, width, slab)])
        return Fused(joined.reshape(n, width), names, missing)
    if n >= width:
        reduced, kept = _covariance_pca(scanned, n, width, k, slab)
        return Fused(reduced, names, missing, kept)
    joined = np.empty((n, width), dtype=np.float32)
    for start, rows in _slabs(scanned, width, slab):
        joined[start : start + len(rows)] = rows
    pca = PCA(n_components=k, random_state=random_state)
    reduced = pca.fit_transform(joined)
    return Fused(
        reduced.astype(np.float32, copy=False), names, missing, float(np.sum(pca.explained_variance_ratio_))
    )
