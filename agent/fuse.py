"""Fuse per-modality embeddings: L2-normalise each, concatenate with equal weights, reduce by PCA.

A case that lacks a modality (no image, report not arrived) is still a case: its block is a
zero vector, which after normalisation of the others means "no evidence from this modality",
and the result says how many rows each modality was missing.

The fused window is never held whole in float64. Rows are normalised a slab at a time; for a
window with at least as many cases as dimensions (the usual refit) PCA comes from the
covariance: ``d x d`` accumulated over shifted slabs (float32 products summed in float64),
an ``eigh`` in float64 for the top components only, and a second pass that projects each slab.
That costs ``n d^2 / 2`` multiply-adds and ``O(d^2)`` memory beside the ``(n, k)`` result. A
wider window (fewer cases than dimensions) is small: it is materialised once in float32 and
reduced by scikit-learn's PCA with the solver it picks for that shape.

A stream's refits may reuse the last refit's :class:`Basis` (its centre and axes): the window is
then projected in one pass, no covariance, no ``eigh``. The pass also measures the fraction of the
window's variance about the stored centre that the axes capture; when it falls more than
``max_drift`` (relative) below the fraction they captured when they were fitted, the basis no
longer describes the window and is fitted again.

Between the refits of a stream most cases stay in the window, so a fusion that is asked to
``remember`` keeps its cases' projections on the basis (:class:`Projected`), addressed by their
content: each block's row is fingerprinted by its dot products with two fixed random probes
(one ``einsum`` pass, the same bits wherever the row sits in a slab; a row with a NaN or an
infinity, a missing modality, has one fingerprint of its own). The next fusion on the same
basis reads only the fingerprints, then learns the scale of and projects only the rows whose
fingerprints it has not seen (new cases, or a case whose report arrived since) and reads the
rest, after checking the whole fingerprint, not only its hash. A case is thereby never matched
by its study id: content that changed under the same id is projected again.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import scipy.linalg.blas
from sklearn.decomposition import PCA

from agent.errors import FitError
from agent.hashing import hash_columns

__all__ = ["MODALITIES", "Basis", "Fused", "Projected", "fuse", "project"]

MODALITIES = ("image", "report", "metadata")

#: Bytes of one slab of rows at most; bounds the memory fuse uses beside its result.
_SLAB_BYTES = 8 * 2**20
#: Fingerprint columns per block: the row's dot products with as many fixed random probes.
_PRINT = 2
#: The fingerprint of every row with a NaN or an infinity (a missing modality): no finite row's.
_MISSING_PRINT = np.inf


@dataclass(frozen=True)
class Basis:
    """The affine map a fusion used: ``(unit rows - centre) @ axes``, for the modalities and widths
    it was fitted on, and the fraction of that window's variance it captured (``explained``)."""

    centre: np.ndarray
    axes: np.ndarray
    modalities: tuple[str, ...]
    widths: tuple[int, ...]
    explained: float

    def fits(self, modalities: tuple[str, ...], widths: tuple[int, ...], k: int) -> bool:
        """Whether this basis can project blocks of these modalities and widths to ``k`` dimensions."""
        return self.modalities == modalities and self.widths == widths and self.axes.shape[1] == k

    def same_as(self, other: Basis) -> bool:
        """Whether ``other`` is the same map (read back from storage, say), to the bit."""
        return self is other or (
            self.modalities == other.modalities
            and self.widths == other.widths
            and np.array_equal(self.centre, other.centre)
            and np.array_equal(self.axes, other.axes)
        )


@dataclass(frozen=True)
class Fused:
    """The fused embedding ``(n, k)`` (float32) and what went into it.

    ``basis`` is the map that produced it (None for a window too small to reduce), ``reused``
    whether that map was the one given to :func:`fuse` rather than fitted on this window,
    ``projected`` this fusion's cases kept for the next (when asked to remember) and
    ``remembered`` how many cases were read from the last one's instead of projected.
    """

    embedding: np.ndarray
    modalities: tuple[str, ...]
    missing: dict[str, int] = field(default_factory=dict)
    explained_variance: float = 1.0
    basis: Basis | None = None
    reused: bool = False
    projected: Projected | None = None
    remembered: int = 0


@dataclass(frozen=True, eq=False)
class Projected:
    """A fusion's cases on its basis, by content, for the next fusion on the same basis.

    ``rows`` holds each case's projection and, in its last column, its unit row's dot product
    with the basis's centre (read-only: the fused embedding is a view of it); ``prints`` each
    case's fingerprint; ``missing`` which of its modalities it lacks; ``hashes`` the
    fingerprints' hashes, sorted, and ``order`` the case each belongs to.
    """

    basis: Basis
    hashes: np.ndarray
    order: np.ndarray
    prints: np.ndarray
    rows: np.ndarray
    missing: np.ndarray

    @classmethod
    def of(cls, basis: Basis, prints: np.ndarray, rows: np.ndarray, missing: np.ndarray) -> Projected:
        """Index a window's fingerprints, projected rows and missing modalities ``(n, m)``."""
        hashes = hash_columns(prints)
        order = np.argsort(hashes, kind="stable")
        rows.flags.writeable = False
        return cls(basis, hashes[order], order, prints, rows, missing)

    def find(self, prints: np.ndarray) -> np.ndarray:
        """For each fingerprint, the row that holds its projection here, or -1."""
        if not len(self.hashes):
            return np.full(len(prints), -1, dtype=np.intp)
        hashes = hash_columns(prints)
        at = np.minimum(np.searchsorted(self.hashes, hashes), len(self.hashes) - 1)
        rows = self.order[at]
        # A hash collision, however unlikely, is no match: the whole fingerprint must be equal.
        same = (self.hashes[at] == hashes) & np.all(self.prints[rows] == prints, axis=1)
        return np.where(same, rows, -1)

    def __repr__(self) -> str:
        return f"Projected({len(self.hashes)} cases, {self.nbytes / 2**20:.1f} MiB)"

    @property
    def nbytes(self) -> int:
        """Memory held between refits, in bytes."""
        return int(
            self.hashes.nbytes
            + self.order.nbytes
            + self.prints.nbytes
            + self.rows.nbytes
            + self.missing.nbytes
        )


class _Blocks:
    """The modality blocks as given (never copied whole), read a slab of cases at a time.

    The first pass over them learns each row's scale to unit norm and which rows are missing
    and, with ``fingerprint``, each row's fingerprint (:class:`Projected`); later passes reuse
    them. :meth:`fingerprint` takes the fingerprints alone, and :meth:`learn` the scales of some
    rows, for a fusion that reads the other rows' projections from memory.
    """

    def __init__(self, arrays: list[np.ndarray], slab: int, *, fingerprint: bool = False) -> None:
        self.arrays = arrays
        self.slab = slab
        self.n = arrays[0].shape[0]
        self.offsets = np.cumsum([0] + [a.shape[1] for a in arrays])
        self.width = int(self.offsets[-1])
        self.scales = [np.zeros(self.n, dtype=np.float32) for _ in arrays]
        self.missing = [np.zeros(self.n, dtype=bool) for _ in arrays]
        self.prints: np.ndarray | None = None
        self._probes: list[np.ndarray] = []
        if fingerprint:
            self.prints = np.empty((self.n, _PRINT * len(arrays)), dtype=np.float32)
            # Fixed probes (seeded by the block's width): the same in every process and refit.
            self._probes = [
                np.random.default_rng(a.shape[1]).standard_normal((_PRINT, a.shape[1])).astype(np.float32)
                for a in arrays
            ]
        self._scanned = False

    def slabs(self, shift: np.ndarray | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, rows)``: fused unit rows in float32, less ``shift`` when given."""
        for start in range(0, self.n, self.slab):
            stop = min(start + self.slab, self.n)
            out = np.empty((stop - start, self.width), dtype=np.float32)
            for i, a in enumerate(self.arrays):
                part = out[:, self.offsets[i] : self.offsets[i + 1]]
                source = a[start:stop]
                if not self._scanned:
                    self._learn_scale(i, slice(start, stop), source)
                # Copy and scale in one pass; a missing row is zeroed after (0 * NaN is NaN).
                np.multiply(source, self.scales[i][start:stop, None], out=part, casting="same_kind")
                gone = self.missing[i][start:stop]
                if gone.any():
                    part[gone] = 0.0
            if shift is not None:
                out -= shift
            yield start, out
        self._scanned = True

    def project(self, basis: np.ndarray, centre: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """``(unit rows - mean) @ basis`` in float32, block by block on the rows as given (only
        ``rows``, in that order, when given: the scales must be learnt already).

        A block's unit rows are its rows times their scale, so each block is projected as it
        is and scaled after (``k`` columns, not ``d_m``); ``centre`` is the mean's projection.
        """
        n = self.n if rows is None else len(rows)
        out = np.empty((n, basis.shape[1]), dtype=np.float32)
        for start in range(0, n, self.slab):
            stop = min(start + self.slab, n)
            at = slice(start, stop) if rows is None else rows[start:stop]
            acc = np.zeros((stop - start, basis.shape[1]), dtype=np.float32)
            for i, a in enumerate(self.arrays):
                if not self._scanned:  # a reused basis: no pass before this one learnt the scales
                    self._learn_scale(i, at, a[at])
                part = a[at] @ basis[self.offsets[i] : self.offsets[i + 1]]
                gone = self.missing[i][at]
                if gone.any():
                    part[gone] = 0.0  # NaN rows: 0 * NaN would stay NaN
                part *= self.scales[i][at, None]
                acc += part
            acc -= centre.astype(np.float32)
            out[start:stop] = acc
        self._scanned = True
        return out

    def present(self) -> np.ndarray:
        """Per case, the number of modalities it has: its unit row's squared norm."""
        return sum((~gone).astype(np.float64) for gone in self.missing)  # type: ignore[return-value]

    def scan(self) -> None:
        """Learn every row's scale and missing flag without building the fused rows."""
        if self._scanned:
            return
        for start in range(0, self.n, self.slab):
            at = slice(start, min(start + self.slab, self.n))
            for i, a in enumerate(self.arrays):
                self._learn_scale(i, at, a[at])
        self._scanned = True

    def fingerprint(self) -> None:
        """Every row's fingerprint, and nothing else (one pass; :meth:`learn` the rest later)."""
        assert self.prints is not None
        for start in range(0, self.n, self.slab):
            at = slice(start, min(start + self.slab, self.n))
            for i, a in enumerate(self.arrays):
                self._print(i, at, a[at])

    def learn(self, rows: np.ndarray, missing: np.ndarray) -> None:
        """The scales and missing flags of ``rows`` from their blocks, and the other rows'
        missing flags from ``missing`` ``(n, m)`` (their scales are not needed: not projected)."""
        for i, gone in enumerate(self.missing):
            gone[:] = missing[:, i]
        for start in range(0, len(rows), self.slab):
            at = rows[start : start + self.slab]
            for i, a in enumerate(self.arrays):
                self._learn_scale(i, at, a[at], fingerprint=False)
        self._scanned = True

    def _print(self, i: int, at: slice | np.ndarray, source: np.ndarray) -> None:
        """Fingerprints of block ``i``'s rows ``at`` (``source``): the probes' dot products."""
        assert self.prints is not None
        columns = slice(_PRINT * i, _PRINT * (i + 1))
        # The same bits in any slab; in float32 before the checks (a float64 row's products may
        # overflow float32, and must then not pass for a missing row's).
        with np.errstate(over="ignore", invalid="ignore"):
            prints = np.einsum("ij,kj->ik", source, self._probes[i]).astype(np.float32, copy=False)
        odd = ~np.isfinite(prints).all(axis=1) | (prints == 0).any(axis=1)
        if odd.any():
            # A row with a NaN or an infinity is a missing modality: all such rows are alike. A
            # finite row whose products overflow or vanish is never matched (NaN is no value).
            gone = ~np.isfinite(source[odd]).all(axis=1)
            prints[np.flatnonzero(odd)] = np.where(gone[:, None], _MISSING_PRINT, np.nan)
        self.prints[at, columns] = prints

    def _learn_scale(
        self, i: int, at: slice | np.ndarray, source: np.ndarray, *, fingerprint: bool = True
    ) -> None:
        """Scale to unit norm of each row of ``source`` (block ``i``, rows ``at``), 0 for a missing
        row; with ``fingerprint`` (and fingerprints kept), the rows' fingerprints too."""
        squares = np.einsum("ij,ij->i", source, source)
        finite = np.isfinite(squares)
        if not finite.all():  # a NaN or infinite value, or only an overflow of the squares
            finite = np.isfinite(source).all(axis=1)
            squares = np.einsum(
                "ij,ij->i", *(2 * [np.where(finite[:, None], source, 0.0).astype(np.float64)])
            )
        norm = np.sqrt(squares.astype(np.float64))
        ok = finite & (norm > 0)
        self.scales[i][at] = np.where(ok, 1.0 / np.maximum(norm, 1e-12), 0.0)
        self.missing[i][at] = ~ok
        if fingerprint and self.prints is not None:
            self._print(i, at, source)


def _covariance_pca(
    blocks: _Blocks, k: int, *, centre_column: bool = False
) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Project the fused rows on their top ``k`` principal axes; return them, the variance kept,
    the window's mean and the axes (float32). With ``centre_column`` the projection has one more
    column, each unit row's dot product with the mean (what :class:`Projected` keeps).

    One pass accumulates the sum and the scatter about a shift (the first slab's mean, close
    to the window's, so that the correction below cancels nothing); float32 products of each
    slab (a syrk) are summed in float64. A second pass centres each slab and projects it.
    """
    n, width = blocks.n, blocks.width
    total = np.zeros(width)
    scatter = np.zeros((width, width))
    shift: np.ndarray | None = None
    for _, rows in blocks.slabs():
        if shift is None:
            shift = rows.mean(axis=0, dtype=np.float64).astype(np.float32)
        rows -= shift
        total += rows.sum(axis=0)  # small numbers (about the shift): a float32 sum is exact enough
        scatter += rows.T @ rows
    assert shift is not None
    offset = total / n
    mean = shift + offset
    # scatter - n offset offset^T in place, on the Fortran view LAPACK and BLAS work on.
    cov = scipy.linalg.blas.dger(-float(n), offset, offset, a=scatter.T, overwrite_a=True)
    variance = float(np.trace(cov))
    values, vectors = scipy.linalg.eigh(
        cov, subset_by_index=[width - k, width - 1], overwrite_a=True, check_finite=False
    )
    del cov, scatter
    values, vectors = values[::-1], vectors[:, ::-1]
    # Deterministic signs, as scikit-learn's svd_flip: each axis's largest entry is positive.
    peak = vectors[np.argmax(np.abs(vectors), axis=0), np.arange(k)]
    vectors *= np.where(peak < 0, -1.0, 1.0)
    axes = np.ascontiguousarray(vectors, dtype=np.float32)
    if centre_column:
        out = blocks.project(*_with_centre(axes, mean.astype(np.float32)))
    else:
        out = blocks.project(axes, mean.astype(np.float64) @ vectors)
    kept = float(np.sum(np.maximum(values, 0.0)))
    return out, (kept / variance if variance > 0 else 1.0), mean.astype(np.float32), axes


def _with_centre(axes: np.ndarray, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The axes with the centre as one more column, and the shift that centres the projection on
    the axes only (the last column stays each unit row's dot product with the centre)."""
    both = np.ascontiguousarray(np.concatenate([axes, centre[:, None]], axis=1), dtype=np.float32)
    return both, np.append(centre.astype(np.float64) @ axes.astype(np.float64), 0.0)


def _reuse(blocks: _Blocks, basis: Basis, projected: Projected | None) -> tuple[np.ndarray, float, int]:
    """Project on a stored basis in one pass; return the projection, with each unit row's dot
    product with the centre as its last column, and the fraction it captures of the window's
    variance about the basis's centre.

    The centre rides along as one more axis: the same pass gives each row's dot product with it,
    hence ``|x - c|^2 = |x|^2 - 2 x.c + |c|^2`` with ``|x|^2`` the case's count of modalities.
    Rows whose fingerprints ``projected`` holds (on this basis) are read from it, not projected;
    the last value returned is their number.
    """
    k = basis.axes.shape[1]
    centre = basis.centre.astype(np.float64)
    both, shift = _with_centre(basis.axes, basis.centre)
    read = 0
    if projected is not None and blocks.prints is not None and projected.basis.same_as(basis):
        blocks.fingerprint()
        found = projected.find(blocks.prints)
        out = np.empty((blocks.n, k + 1), dtype=np.float32)
        seen = found >= 0
        read = int(seen.sum())
        out[seen] = projected.rows[found[seen]]
        new = np.flatnonzero(~seen)
        missing = np.zeros((blocks.n, len(blocks.arrays)), dtype=bool)
        missing[seen] = projected.missing[found[seen]]
        blocks.learn(new, missing)
        if len(new):
            out[new] = blocks.project(both, shift, new)
    else:
        out = blocks.project(both, shift)
    dots = out[:, k].astype(np.float64)
    total = float(blocks.present().sum() - 2.0 * dots.sum() + blocks.n * (centre @ centre))
    reduced = out[:, :k]
    kept = float(np.einsum("ij,ij->", reduced, reduced, dtype=np.float64))
    return out, (kept / total if total > 0 else 1.0), read


def fuse(
    blocks: Mapping[str, np.ndarray],
    *,
    n_components: int = 128,
    random_state: int = 0,
    basis: Basis | None = None,
    max_drift: float = 0.05,
    projected: Projected | None = None,
    remember: bool = False,
) -> Fused:
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
    basis
        A basis from an earlier fusion to project on instead of fitting one, if it fits these
        blocks and ``n_components`` and still captures the window's variance.
    max_drift
        Relative loss of captured variance, against ``basis.explained``, beyond which ``basis``
        is dropped and the window's own is fitted.
    projected
        An earlier fusion's cases on ``basis`` (its :attr:`Fused.projected`): cases with the same
        content are read from it instead of projected again.
    remember
        Keep this fusion's cases on its basis (:attr:`Fused.projected`) for the next one; it
        costs a fingerprint pass and ``4 (k + 1 + 2 m) + m + 16`` bytes per case (``m`` modalities).

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
    fused = _Blocks(arrays, _slab_rows(n, width), fingerprint=remember)
    k = min(n_components, n, width)
    widths = tuple(a.shape[1] for a in arrays)
    if basis is not None and n >= 2 and basis.fits(names, widths, k):
        rows, captured, read = _reuse(fused, basis, projected)
        if captured >= (1.0 - max_drift) * basis.explained:
            kept_rows = _remembered(basis, fused, rows) if remember else None
            return Fused(rows[:, :k], names, _missing(names, fused), captured, basis, True, kept_rows, read)
        fused = _Blocks(arrays, fused.slab, fingerprint=remember)  # the first pass learns again
    if n >= width and n >= 2 and k >= 1:
        rows, kept, mean, axes = _covariance_pca(fused, k, centre_column=remember)
        fitted = Basis(mean, axes, names, widths, kept)
        kept_rows = _remembered(fitted, fused, rows) if remember else None
        return Fused(rows[:, :k], names, _missing(names, fused), kept, fitted, projected=kept_rows)
    joined = np.empty((n, width), dtype=np.float32)
    for start, rows in fused.slabs():
        joined[start : start + len(rows)] = rows
    if n < 2 or k < 1:
        return Fused(joined, names, _missing(names, fused))
    pca = PCA(n_components=k, random_state=random_state)
    reduced = pca.fit_transform(joined)
    variance = float(np.sum(pca.explained_variance_ratio_))
    wide = Basis(
        pca.mean_.astype(np.float32),
        np.ascontiguousarray(pca.components_.T, dtype=np.float32),
        names,
        widths,
        variance,
    )
    return Fused(reduced.astype(np.float32, copy=False), names, _missing(names, fused), variance, wide)


def project(blocks: list[np.ndarray], center: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """New cases through a fitted fusion: each block L2-normalised (NaN rows: zero), concatenated
    in the order fitted, less ``center``, onto ``basis``; ``(n, k)`` float32.

    >>> rng = np.random.default_rng(0)
    >>> blocks = {"report": rng.normal(size=(60, 8)), "metadata": rng.normal(size=(60, 4))}
    >>> f = fuse(blocks, n_components=3)
    >>> again = project(list(blocks.values()), f.basis.centre, f.basis.axes)
    >>> bool(np.allclose(again, f.embedding, atol=1e-5))
    True
    """
    arrays = [np.asarray(b) for b in blocks]
    width = sum(a.shape[1] for a in arrays)
    if width != basis.shape[0]:
        raise FitError(f"expected blocks {basis.shape[0]} wide in all, as fitted; got {width}")
    rows = _Blocks(arrays, _slab_rows(arrays[0].shape[0], width))
    rows.scan()
    return rows.project(basis, center.astype(np.float64) @ basis.astype(np.float64))


def _remembered(basis: Basis, blocks: _Blocks, rows: np.ndarray) -> Projected:
    assert blocks.prints is not None
    return Projected.of(basis, blocks.prints, rows, np.stack(blocks.missing, axis=1))


def _slab_rows(n: int, width: int) -> int:
    """Rows per slab: a quarter of the window (a small window is not padded out to a large
    slab), 256 at least (a syrk needs depth) and ``_SLAB_BYTES`` of float32 at most."""
    return int(np.clip(n // 4, 256, max(256, _SLAB_BYTES // (4 * max(width, 1)))))


def _missing(names: tuple[str, ...], blocks: _Blocks) -> dict[str, int]:
    return {name: int(gone.sum()) for name, gone in zip(names, blocks.missing, strict=True)}
