"""A scan for neighbourhoods where errors are dense, calibrated by permutation.

A group that one modality shows plainly but that is a minor direction of its variance (a
burned-in corner annotation among chest films: a linear probe finds it at AUC 0.99, yet it is
the fourth principal axis of the image embedding at best) escapes a mixture, which cuts along
the major directions, and an error score fitted on a few hundred cases, which is mostly noise.
Its members are still each other's nearest neighbours once every axis of the embedding is
scaled to unit variance (in a window of 1,000 simulated films, 5% of them marked, 54% of a
marked film's 15 nearest neighbours are marked; 31% without the scaling), and half of them are
errors.

:class:`NeighbourScanSlicer` offers as components the top ``share`` of each class by a score:
the error rate of the case's nearest cases of the same class (cosine over whitened columns, the
case itself left out: its own error never counts towards its score). Each component's strength
(how unlikely its members' own errors are at the class's error rate: the binomial tail) is
compared with the largest strength of every component in ``n_permutations`` within-class
permutations of the errors, the whole scan repeated in each: a p-value valid for the selection
(max-T), computed on every case of the window, with no fold set aside.

A marker that both classes carry holds half its errors in each, and its members' nearest
neighbours are of both classes. The scan over both classes (``both_classes``) reads the cases of
both: each case is scored by its nearest neighbours' errors beyond their own class's error rate,
the top shares of the cases read are cut into one component per class, and both components take
the share's strength, Fisher's combination of the two halves' binomial tails
(:func:`~agent.slicing.base.fisher_strength`), compared in the same max-T. Each half then takes
the larger of the share's p-value and its own (its members against the rest of its class), and
1 where its own is above ``half_level`` (:func:`~agent.slicing.base.gated_halves`).
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
from scipy import sparse
from sklearn.utils._param_validation import Interval

from agent.errors import FitError
from agent.slicing.base import (
    SlicerEstimator,
    Whitening,
    as_binary,
    as_embedding,
    as_shares,
    binomial_strength,
    fisher_strength,
    gated_halves,
    max_t_p_values,
    tail_p_values,
)

__all__ = ["NeighbourScanSlicer"]


#: Elements of the largest temporary (a block of similarities, a chunk of permuted errors).
_BLOCK = 1 << 19


class NeighbourScanSlicer(SlicerEstimator):
    """Components "class ``c``, among the top ``share`` of the class by neighbours' error rate".

    The scan describes the window it is fitted on: :meth:`membership` takes those rows again.

    Parameters
    ----------
    shares
        Shares of each class that make one component each.
    n_neighbors
        Neighbours each score counts. On simulated films with a marker in 5% or 10% of a
        1,000-case window, 15 found the group as often as 20 and more often than half the
        component's size.
    min_support
        Smallest component, in cases of its class (smaller shares are skipped).
    max_reference
        Most cases of a class that serve as neighbours (a seeded sample above it), which bounds
        the scan's time and memory on large windows to ``n * max_reference`` similarities.
    both_classes
        Scan both classes together as well (see above).
    half_level
        After :meth:`fit_calibrated`: a half of the scan over both classes is reported only where
        its own class's members err above the rest of the class at this one-sided Fisher level
        (otherwise its p-value is 1).
    max_cases
        Most cases of a class the scan reads: a larger class is scanned on a seeded uniform
        sample of this many (its shares are shares of the sample, its members drawn from it).
        This bounds a refit's scan on any window to ``max_cases * max_reference`` similarities
        and ``max_cases * n_permutations`` permuted errors per class. A group of a given share
        is that share of the sample too, and in such windows it holds hundreds of cases.

    Attributes
    ----------
    classes_
        The class of each component.
    joint_
        Whether each component is one class's half of a share of the scan over both classes.
    shares_
        The share of each component: of its class, or of the cases read for a half.
    means_
        Each component's error rate on the window.
    strength_
        Each component's score: minus the log of the binomial tail of its errors at its class's
        error rate (for a half, Fisher's combination of both halves' tails).
    p_values_
        After :meth:`fit_calibrated`: each component's p-value, adjusted for the whole scan.
    p_estimates_
        What ranks and reports the components: ``p_values_``, or for a score that no permutation
        reached, its tail estimate under the floor (:func:`~agent.slicing.base.tail_p_values`).
    null_max_
        Per permutation, the largest component score of the scan run again.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(800, 8))
    >>> group = np.zeros(800, bool)
    >>> group[:40] = True
    >>> X[group, 5] += 6.0
    >>> y = rng.integers(0, 2, 800).astype(float)
    >>> err = rng.random(800) < np.where(group, 0.6, 0.05)
    >>> s = NeighbourScanSlicer().fit_calibrated(X, y, np.where(err, 1 - y, y), n_permutations=99)
    >>> best = int(np.argmax(s.strength_))
    >>> bool(s.p_values_[best] < 0.05), bool(group[s.membership(X, y)[:, best] > 0].mean() > 0.8)
    (True, True)
    """

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "shares": ["array-like"],
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "min_support": [Interval(Integral, 1, None, closed="left")],
        "max_reference": [Interval(Integral, 2, None, closed="left")],
        "max_cases": [Interval(Integral, 2, None, closed="left")],
        "both_classes": ["boolean"],
        "half_level": [Interval(Real, 0, 1, closed="right")],
    }

    def __init__(
        self,
        shares: tuple[float, ...] = (0.02, 0.03, 0.05, 0.1),
        *,
        n_neighbors: int = 15,
        min_support: int = 10,
        max_reference: int = 4000,
        max_cases: int = 5000,
        both_classes: bool = True,
        half_level: float = 0.05,
    ) -> None:
        self.shares = shares
        self.n_neighbors = n_neighbors
        self.min_support = min_support
        self.max_reference = max_reference
        self.max_cases = max_cases
        self.both_classes = both_classes
        self.half_level = half_level

    def fit(
        self, X: np.ndarray, y: np.ndarray, y_pred: np.ndarray, *, random_state: int = 0
    ) -> NeighbourScanSlicer:
        """Score every case by its neighbours' errors and form the components on these rows."""
        self._check_params()
        shares = as_shares(self.shares)
        X = as_embedding(X, keep_float32=True)  # whitened a subset of rows at a time, in float64
        y = as_binary(y, len(X))
        err = (y != (as_binary(y_pred, len(X), name="y_pred", soft=True) >= 0.5)).astype(np.float64)
        rng = np.random.default_rng(random_state)
        # Whitened: every column (a principal axis, after fusion) at unit variance, so that a
        # minor direction weighs in the distances as much as a major one; then cosine.
        unit = Whitening(X)  # rows whitened as they are scanned: a class above max_cases is sampled
        tiebreak = rng.random(len(X)) * 1e-6  # fixed across permutations: part of the scan
        self._components: list[_Component] = []
        scanned: list[np.ndarray] = []
        for c in (0.0, 1.0):
            rows = np.flatnonzero(y == c)
            if len(rows) > self.max_cases:
                rows = np.sort(rng.choice(rows, self.max_cases, replace=False))
            scanned.append(rows)
            sizes = sorted({round(share * len(rows)) for share in shares})
            sizes = [s for s in sizes if self.min_support <= s < len(rows)]
            if not sizes or len(rows) < 2:
                continue
            ks = {size: self._k(size, len(rows)) for size in sizes}
            nearest = self._nearest(unit(rows), max(ks.values()), rng)
            graphs: dict[int, sparse.csr_matrix] = {}
            for size in sizes:
                k = ks[size]
                if k not in graphs:
                    graphs[k] = sparse.csr_matrix(
                        (
                            np.full(len(rows) * k, 1.0 / k),
                            nearest[:, :k].ravel(),
                            np.arange(0, len(rows) * k + 1, k),
                        ),
                        shape=(len(rows), len(rows)),
                    )
                self._components.append(
                    _Component(c, size / len(rows), size, rows, graphs[k], tiebreak[rows])
                )
        self._joint = (
            self._scan_both(unit, err, y, scanned, shares, tiebreak, rng)
            if self.both_classes and all(len(rows) > 1 for rows in scanned)
            else None
        )
        halves = [] if self._joint is None else self._joint.halves
        n_joint = 1 if self._joint is None else len(self._joint.rows)
        if not self._components and not halves:
            raise FitError(f"no class holds {self.min_support} cases at the scan's shares {self.shares!r}")
        self.classes_ = np.array([p.cls for p in self._components] + [c for _, c in halves], dtype=np.float64)
        self.shares_ = np.array(
            [p.share for p in self._components] + [size / n_joint for size, _ in halves], dtype=np.float64
        )
        self.joint_ = np.array([False] * len(self._components) + [True] * len(halves))
        self.n_features_in_ = X.shape[1]
        self._err, self._y, self._scanned = err, y, scanned
        k_all = len(self._components) + len(halves)
        self._members = np.zeros((len(X), k_all), dtype=bool)
        self._score = np.zeros((len(X), k_all))
        strength = []
        for j, p in enumerate(self._components):
            score = p.scores(err[p.rows][:, None])[:, 0]
            chosen = np.argsort(-score, kind="stable")[: p.size]
            top = p.rows[chosen]
            self._members[top, j] = True
            # A member's rank: its neighbours' error rate averaged with the share of its
            # neighbours that are members too, so the slice's core comes before its fringe (a
            # case drawn in by erring neighbours from another group has few members around it).
            inside = np.zeros(len(p.rows))
            inside[chosen] = 1.0
            core = np.asarray(p.graph @ inside)
            self._score[p.rows, j] = score
            self._score[top, j] = 0.5 * (score[chosen] + core[chosen])
            strength.append(float(p.strength(err[top].sum(), err[p.rows].sum())))
        if self._joint is not None:
            strength += self._joint.fill(err, self._members, self._score, len(self._components))
        self.means_ = (err @ self._members) / np.maximum(self._members.sum(axis=0), 1)
        self.strength_ = np.array(strength)
        return self

    def _scan_both(
        self,
        unit: Whitening,
        err: np.ndarray,
        y: np.ndarray,
        scanned: list[np.ndarray],
        shares: np.ndarray,
        tiebreak: np.ndarray,
        rng: np.random.Generator,
    ) -> _Joint | None:
        """The scan over both classes: neighbours of any class, each case scored by its
        neighbours' errors beyond their own class's rate, the top shares of the scanned cases
        cut into one component per class."""
        rows = np.sort(np.concatenate(scanned))
        sizes = sorted({round(share * len(rows)) for share in shares})
        sizes = [s for s in sizes if self.min_support <= s < len(rows)]
        if not sizes:
            return None
        k = self._k(max(sizes), len(rows))
        nearest = self._nearest(unit(rows), k, rng)
        graph = sparse.csr_matrix(
            (np.full(len(rows) * k, 1.0 / k), nearest.ravel(), np.arange(0, len(rows) * k + 1, k)),
            shape=(len(rows), len(rows)),
        )
        return _Joint(rows, y[rows], graph, tiebreak[rows], sizes, [float(err[r].mean()) for r in scanned])

    def fit_calibrated(
        self,
        X: np.ndarray,
        y: np.ndarray,
        y_pred: np.ndarray,
        *,
        n_permutations: int = 500,
        random_state: int = 0,
    ) -> NeighbourScanSlicer:
        """Fit on every row, and give each component the share of ``n_permutations`` within-class
        permutations of the errors whose largest component score, the scan repeated, reaches its own."""
        if n_permutations < 1:
            raise FitError(f"expected n_permutations >= 1, got {n_permutations}")
        self.fit(X, y, y_pred, random_state=random_state)
        # Each class's errors are permuted by a stream of its own, so that both classes'
        # permutations of one column are at hand together (the scan over both classes needs them).
        streams = [np.random.default_rng(s) for s in np.random.SeedSequence([random_state, 1]).spawn(2)]
        classes = []
        for c, stream in zip((0.0, 1.0), streams, strict=True):
            parts = [p for p in self._components if p.cls == c]
            rows = self._scanned[int(c)]
            by_graph: dict[int, list[_Component]] = {}
            for p in parts:  # the shares of a class share one neighbour graph: one score each
                by_graph.setdefault(id(p.graph), []).append(p)
            classes.append((rows, self._err[rows], by_graph, stream))
        n_scanned = sum(len(rows) for rows, _, _, _ in classes)
        null_max = np.full(n_permutations, -np.inf)
        # Permutations at a time: memory stays bounded. Each class draws from its own stream, so
        # the permutations are the same whatever the chunk.
        chunk = max(1, _BLOCK // max(n_scanned, 1))
        for start in range(0, n_permutations, chunk):
            b = min(chunk, n_permutations - start)
            part = null_max[start : start + b]
            permuted = {}
            for (rows, e, by_graph, stream), c in zip(classes, (0.0, 1.0), strict=True):
                if not len(rows):
                    continue
                E = np.stack([stream.permutation(e) for _ in range(b)], axis=1)
                permuted[c] = E
                for group in by_graph.values():
                    # Every smaller share's top cases are the largest share's head, so one
                    # selection and a running sum of errors serve them all.
                    head = _head(group[0].scores(E), max(p.size for p in group))
                    running = np.cumsum(np.take_along_axis(E, head, axis=0), axis=0)
                    for p in group:
                        part = np.maximum(part, p.strength(running[p.size - 1], float(e.sum())))
            if self._joint is not None:
                part = np.maximum(part, self._joint.null_max(permuted[0.0], permuted[1.0]))
            null_max[start : start + b] = part
        gate = (self.joint_, self._members, self.classes_, self._y, self._err, self.half_level)
        self.null_max_ = null_max
        self.p_values_ = gated_halves(max_t_p_values(null_max, self.strength_), *gate)
        self.p_estimates_ = gated_halves(tail_p_values(null_max, self.strength_), *gate)
        return self

    def membership(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """``(n, k)`` over the fitted rows: for each member, the mean of its neighbours' error rate
        and of the share of its neighbours that are members too (the core first); 0 outside."""
        self._check_fitted()
        X = self._check_X(X, keep_float32=True)  # its shape only: no float64 copy of the window
        if len(X) != len(self._members):
            raise FitError(
                f"a neighbour scan describes the {len(self._members)} rows it was fitted on, got {len(X)}"
            )
        out = np.where(self._members, np.maximum(self._score, 1e-9), 0.0)
        if y is not None:
            out = out * (as_binary(y, len(X))[:, None] == self.classes_[None, :])
        return np.asarray(out, dtype=np.float64)

    def _k(self, size: int, n: int) -> int:
        return max(1, min(self.n_neighbors, n - 1, self.max_reference - 1))

    def _nearest(self, unit: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        """``(n, k)``: each case's ``k`` most similar reference cases, most similar first, never itself.

        Cosines in float32 (twice as fast; they reorder only neighbours whose similarities agree
        to seven digits: the golden windows' and streams' slices are unchanged), a block of
        cases at a time, each block's top ``k`` by :func:`_top_k`.
        """
        n = len(unit)
        ref = (
            np.arange(n)
            if n <= self.max_reference
            else np.sort(rng.choice(n, self.max_reference, replace=False))
        )
        out = np.empty((n, k), dtype=np.intp)
        unit = unit.astype(np.float32)
        reference = unit[ref].T
        step = max(1, _BLOCK // len(ref))  # rows per block: the block and its selection stay small
        for start in range(0, n, step):
            stop = min(start + step, n)
            block = unit[start:stop] @ reference
            own = np.arange(start, stop)
            hit = np.minimum(np.searchsorted(ref, own), len(ref) - 1)
            is_ref = ref[hit] == own
            block[np.flatnonzero(is_ref), hit[is_ref]] = -np.inf  # never one's own neighbour
            out[start:stop] = ref[_top_k(block, k)]
        return out


def _top_k(block: np.ndarray, k: int, probe: int = 1024) -> np.ndarray:
    """``(rows, k)``: the columns of each row's ``k`` largest values, largest first (ties by column).

    numpy has no top-k; a full ``argpartition`` of every row is most of a scan's time. The
    ``k``-th largest of a row's first ``probe`` columns is a floor under its ``k``-th largest
    overall, so the values at or above it (about ``k * columns / probe`` a row, at least ``k``)
    hold the top ``k``; only those are sorted. On 131 x 4,000 and 1,024 x 4,000 float32 blocks
    of cosines, ``k = 15``: 0.9 and 6.6 ms, against 1.2 and 12.9 ms for an ``argpartition`` and
    a sort of its ``k``, with the same columns.

    >>> _top_k(np.array([[0.1, 0.9, 0.5, 0.9], [3.0, 1.0, 2.0, 0.0]]), 2, probe=2).tolist()
    [[1, 3], [0, 2]]
    """
    rows, columns = block.shape
    p = min(columns, max(probe, k))
    floor = np.partition(block[:, :p], p - k, axis=1)[:, p - k]
    # Flat positions, then rows and columns: numpy's two-dimensional nonzero takes four times as long.
    flat = np.flatnonzero(block >= floor[:, None])
    values = block.ravel()[flat].astype(np.float64)
    r, c = np.divmod(flat, columns)
    finite = np.isfinite(values)
    if not finite.all():  # a case's own column (-inf) among the candidates: below every value
        low, high = (values[finite].min(), values[finite].max()) if finite.any() else (0.0, 0.0)
        values = np.nan_to_num(values, neginf=low - 1.0, posinf=high + 1.0)
    # One sort key: the row, then the value from the largest down (rows kept apart by more than
    # the values' span); a stable sort leaves equal values in column order.
    span = float(np.ptp(values)) + 1.0 if len(values) else 1.0
    order = np.argsort(r * (2.0 * span) - values, kind="stable")
    r, c = r[order], c[order]
    first = np.searchsorted(r, np.arange(rows))
    return c[(np.arange(len(r)) - first[r]) < k].reshape(rows, k)


class _Component:
    """One share of one class: its cases, their neighbour graph, and its z statistic."""

    def __init__(
        self,
        cls: float,
        share: float,
        size: int,
        rows: np.ndarray,
        graph: sparse.csr_matrix,
        jitter: np.ndarray,
    ) -> None:
        self.cls, self.share, self.size, self.rows, self.graph, self.jitter = (
            cls,
            share,
            size,
            rows,
            graph,
            jitter,
        )

    def scores(self, E: np.ndarray) -> np.ndarray:
        """Neighbours' error rate of each case of the class, for each column of errors ``E``."""
        return np.asarray(self.graph @ E) + self.jitter[:, None]

    def strength(self, e_in: np.ndarray | float, e_all: float) -> np.ndarray:
        """:func:`~agent.slicing.base.binomial_strength` of ``e_in`` errors among the component's cases."""
        return binomial_strength(
            np.full(np.shape(e_in), float(self.size)),
            np.asarray(e_in, dtype=np.float64),
            float(len(self.rows)),
            e_all,
        )


class _Joint:
    """The scan over both classes: the scanned cases of both, their neighbour graph, and the
    halves (one per class) of each share's top cases."""

    def __init__(
        self,
        rows: np.ndarray,
        y: np.ndarray,
        graph: sparse.csr_matrix,
        jitter: np.ndarray,
        sizes: list[int],
        rates: list[float],
    ) -> None:
        self.rows, self.y, self.graph, self.jitter, self.sizes = rows, y, graph, jitter, sizes
        self.rate = np.where(y == 1, rates[1], rates[0])  # each case's own class's error rate
        self.halves = [(size, c) for size in sizes for c in (0.0, 1.0)]

    def scores(self, E: np.ndarray) -> np.ndarray:
        """Neighbours' errors beyond their own class's rate, for each column of errors ``E``: a
        class that errs more often does not pull every case towards its own cases."""
        return np.asarray(self.graph @ (E - self.rate[:, None])) + self.jitter[:, None]

    def strengths(self, E: np.ndarray) -> np.ndarray:
        """``(sizes, columns)``: each share's strength, Fisher's combination of its two halves'
        binomial tails (each at its class's rate), for each column of errors ``E``."""
        head = _head(self.scores(E), max(self.sizes))
        errors = np.take_along_axis(E, head, axis=0)
        is_one = self.y[head] == 1
        tails = []  # each class's half of every share: its binomial tail
        for c, mask in ((0.0, ~is_one), (1.0, is_one)):
            n_in = np.cumsum(mask, axis=0, dtype=np.float64)
            e_in = np.cumsum(errors * mask, axis=0, dtype=np.float64)
            n_c = float((self.y == c).sum())
            e_c = float(E[self.y == c, 0].sum(dtype=np.float64))  # the same in every column
            at = np.array(self.sizes) - 1
            tails.append(binomial_strength(n_in[at], e_in[at], n_c, e_c))
        return np.asarray(fisher_strength(*tails))

    def fill(self, err: np.ndarray, members: np.ndarray, score: np.ndarray, first: int) -> list[float]:
        """Write the halves' members and ranks (columns from ``first``); return their strengths."""
        e = err[self.rows][:, None]
        strength = self.strengths(e)[:, 0]
        scores = self.scores(e)[:, 0]
        ranked = np.argsort(-scores, kind="stable")
        out = []
        j = first
        for size, s in zip(self.sizes, strength, strict=True):  # the order of ``halves``
            chosen = ranked[:size]
            inside = np.zeros(len(self.rows))
            inside[chosen] = 1.0
            core = np.asarray(self.graph @ inside)
            for c in (0.0, 1.0):
                half = chosen[self.y[chosen] == c]
                members[self.rows[half], j] = True
                # Ranked core first, as a class's own scan: neighbours' excess errors and members.
                score[self.rows, j] = scores
                score[self.rows[half], j] = 0.5 * (scores[half] + core[half])
                out.append(float(s))
                j += 1
        return out

    def null_max(self, E0: np.ndarray, E1: np.ndarray) -> np.ndarray:
        """The largest strength of any share, for each permutation (``E0``, ``E1``: each class's
        permuted errors, rows in the order of the class's scanned cases)."""
        E = np.empty((len(self.rows), E0.shape[1]), dtype=E0.dtype)
        E[self.y == 0] = E0  # rows are sorted, and each class's scanned rows are too
        E[self.y == 1] = E1
        return np.asarray(self.strengths(E).max(axis=0))


def _head(scores: np.ndarray, size: int) -> np.ndarray:
    """``(size, columns)``: the rows of the ``size`` highest scores of each column, highest first
    (the tie-break jitter makes scores distinct)."""
    top = np.argpartition(-scores, size - 1, axis=0)[:size]
    order = np.argsort(-np.take_along_axis(scores, top, axis=0), axis=0, kind="stable")
    return np.take_along_axis(top, order, axis=0)
