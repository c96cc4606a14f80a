"""Honest slice discovery: choose slices on one part of the window, test them on another.

A mixture that sees labels and predictions pulls errors into its high-error components, so a
slice's error rate measured on the cases that formed it is inflated by construction, and a
binomial test on them rejects even when errors fall uniformly at random. Here every slice is
cross-fitted instead:

1. The window is split into ``n_splits`` folds, stratified by (label, error).
2. On each fold's complement a slicer is fitted. A component's *territory* is the set of
   cases for which its membership, given embedding and label but not the prediction, is at
   least ``beta`` times that of the case's most probable component. Components that share a
   region (an error component beside a correct one of the same class) share its territory
   instead of the larger one taking it all; a case's own error cannot pull it in.
3. Up to ``n_slices`` components are chosen on the training cases, by the two-proportion z
   statistic of errors inside the territory against the rest of the component's class
   (size and chance both count; Domino's raw rate gap ignores them).
4. Each chosen component is tested on the held-out fold with the same contrast, by a
   one-sided Fisher exact test. p-values are Bonferroni-adjusted over every component
   chosen; one that fails ``alpha`` is not an error slice.
5. With several spaces (:func:`discover_in_spaces`: the fused embedding, each modality's own,
   the report and header terms), every space is cut into the same folds and steps 2-4 run in
   each; the Bonferroni factor counts the components chosen in every space.
   A space tested on the whole window instead (``Space.permutations``: the term rules and the
   neighbour scans, whose p-values a permutation test calibrates for the whole selection) takes a share
   of ``alpha`` as large as a cross-fitted space's: ``n_slices * n_splits`` of the factor
   (a weighted Bonferroni, so the family-wise error rate stays at ``alpha``).
6. A significant slice whose members lie mostly (more than ``dedup_overlap`` of the smaller
   set) inside a more significant one is the same slice found again, in the other fold or
   split in two, or in another space, and is dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
from scipy import sparse
from sklearn.model_selection import StratifiedKFold

from agent.errors import FitError
from agent.slicing.base import Contrast, contrast

__all__ = ["SliceFinding", "Slicer", "Space", "discover_in_spaces", "discover_slices"]


class Slicer(Protocol):
    """What the discovery procedure needs from a slicer."""

    def fit(self, X: np.ndarray, y: np.ndarray, y_pred: np.ndarray) -> Slicer: ...

    def membership(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class SliceFinding:
    """One tested slice over the whole window.

    ``members`` marks the cases in the slice's territory, ``probability`` is their
    membership given embedding and label, and ``typicality`` the membership from the
    embedding alone (it breaks ties among saturated memberships; a mixture's is computed on
    the members only, 0 elsewhere). ``error_rate`` and
    ``rest_error_rate`` are measured on held-out cases only, ``n_tested`` of them inside.
    ``held_out`` marks the cases of the fold that the slice was tested on (its slicer never
    saw them): what checks the slice's names.

    A slice of a whole-window space (``fold == -1``, :attr:`Space.permutations`) was chosen and
    tested on every case: its rates are over the window, ``n_tested`` is its size, its p-value
    comes from the permutation test, and ``held_out`` is the first fold, on which its names are
    checked after being chosen on the other cases. Beyond every permutation's largest score its
    p-value is the permutation maxima's tail estimate, below the permutation floor
    (:func:`~agent.slicing.base.tail_p_values`); it was found significant at the floor.
    """

    members: np.ndarray
    probability: np.ndarray
    typicality: np.ndarray
    slice_class: float
    error_rate: float
    rest_error_rate: float
    n_tested: int
    p_value: float
    p_value_raw: float
    fold: int
    component: int
    held_out: np.ndarray | None = None
    mixture: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    """The fold's mixture in the fused space: means and diagonal variances ``(k, d)`` and weights
    ``(k,)`` of every component (``component`` is the slice's); None when the slicer keeps none."""
    space: str = "fused"
    """The space the slice was found in (:class:`Space`)."""
    mixture_component: int | None = None
    """The component of ``mixture`` whose territory is the slice's: ``component`` for a slice of
    the fused space, or that of the fused space's candidate for the same cases when the slice was
    found in another space (None: no such candidate)."""

    def ranking(self) -> np.ndarray:
        """Member indices, most probable first (ties: most typical by embedding first).

        Probabilities are compared to 12 decimals: memberships of 1 - 1e-14 and 1 are the same
        certainty, and which of them rounding leaves at exactly 1 depends on how the sum was
        taken; among such members the embedding's typicality decides.
        """
        order = np.lexsort((-self.typicality, -np.round(self.probability, 12)))
        return order[self.members[order]]


@dataclass(frozen=True)
class Space:
    """One view of the window that slices are sought in: its rows and the slicer it takes."""

    name: str
    X: Any
    """``(n, d)`` rows: an array, or a scipy sparse matrix for a slicer that takes one (terms)."""
    make_slicer: Callable[[int], Slicer]
    permutations: int = 0
    """With more than 0, the slicer is not cross-fitted: it is fitted on the whole window by its
    ``fit_calibrated(X, y, y_pred, n_permutations=, random_state=)``, which sets ``p_values_``,
    each valid for every rule the selection could have chosen (:class:`~agent.slicing.TermRuleSlicer`)."""


def _territory(membership: np.ndarray, beta: float) -> np.ndarray:
    """Boolean ``(n, k)``: the component holds at least ``beta`` of the case's top membership.

    A zero membership is never a territory (a rule slicer gives a case outside every rule zeros).
    """
    return (membership >= beta * membership.max(axis=1, keepdims=True)) & (membership > 0)


def _take(X: Any, rows: np.ndarray, slab: int = 4096) -> Any:
    """``X[rows]``, float32 kept as it is and anything else in float64 (converted a slab at a
    time, no copy of the rows first); a sparse ``X`` stays sparse."""
    if sparse.issparse(X):
        return X[rows]
    out = np.empty((len(rows), X.shape[1]), dtype=np.float32 if X.dtype == np.float32 else np.float64)
    for start in range(0, len(rows), slab):
        out[start : start + slab] = X[rows[start : start + slab]]
    return out


def _mixture(slicer: Slicer) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The means, variances and weights of a diagonal mixture slicer's components."""
    means, variances, weights = (getattr(slicer, a, None) for a in ("means_", "variances_", "weights_"))
    if means is None or variances is None or weights is None:
        return None
    return (
        np.array(means, dtype=np.float64),
        np.array(variances, dtype=np.float64),
        np.array(weights, dtype=np.float64),
    )


def _folds(y: np.ndarray, err: np.ndarray, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Folds stratified by (label, error), falling back to coarser strata when one is too rare."""
    for strata in ((2 * y + err).astype(int), y.astype(int), np.zeros(len(y), dtype=int)):
        if np.unique(strata, return_counts=True)[1].min() >= n_splits:
            splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
            return list(splitter.split(np.zeros(len(y)), strata))
    return []


def _given(folds: np.ndarray, n_splits: int, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train, test)`` rows of each fold of a given assignment (a fold may be empty)."""
    folds = np.asarray(folds).ravel()
    if len(folds) != n:
        raise FitError(f"expected one fold per case ({n}), got {len(folds)}")
    return [(np.flatnonzero(folds != f), np.flatnonzero(folds == f)) for f in range(n_splits)]


def discover_slices(
    make_slicer: Callable[[int], Slicer],
    X: np.ndarray,
    y: np.ndarray,
    y_pred: np.ndarray,
    *,
    n_slices: int = 5,
    n_splits: int = 2,
    beta: float = 0.1,
    alpha: float = 0.05,
    min_size: int = 10,
    dedup_overlap: float = 0.5,
    random_state: int = 0,
    folds: np.ndarray | None = None,
) -> list[SliceFinding]:
    """Find and test error slices in one space; return the significant ones, most significant first.

    Parameters
    ----------
    make_slicer
        Builds a fresh, unfitted slicer from a seed.
    X, y, y_pred
        Fused embeddings ``(n, d)``, binary labels, and binary predictions or target-class
        probabilities (errors are ``y != (y_pred >= 0.5)``).
    n_slices
        Components chosen per fold, and the most slices returned.
    n_splits
        Cross-fitting folds (at least 2).
    beta
        Membership threshold, relative to the case's most probable component.
    alpha
        Family-wise significance level after Bonferroni adjustment.
    min_size
        Smallest territory, among training and among held-out cases of the class, that is
        chosen or tested at all.
    folds
        Each case's fold, ``0 .. n_splits - 1``, when the caller fixes them (a stream keeps a
        case in one fold across refits); by default they are drawn, stratified by (label, error).
    """
    return discover_in_spaces(
        [Space("fused", X, make_slicer)],
        y,
        y_pred,
        n_slices=n_slices,
        n_splits=n_splits,
        beta=beta,
        alpha=alpha,
        min_size=min_size,
        dedup_overlap=dedup_overlap,
        random_state=random_state,
        folds=folds,
    )


def discover_in_spaces(
    spaces: Sequence[Space],
    y: np.ndarray,
    y_pred: np.ndarray,
    *,
    n_slices: int = 5,
    n_splits: int = 2,
    beta: float = 0.1,
    alpha: float = 0.05,
    min_size: int = 10,
    dedup_overlap: float = 0.5,
    random_state: int = 0,
    folds: np.ndarray | None = None,
) -> list[SliceFinding]:
    """Find and test error slices in several spaces under one multiplicity correction.

    Every space is cut into the same folds, so no slicer ever sees the fold its slices are
    tested on. Up to ``n_slices`` components are chosen per space and fold; the Bonferroni
    factor counts every component chosen in every space, so trying more spaces costs power,
    never the family-wise error rate. Slices found again in another space are dropped as
    duplicates of the more significant one. Parameters as :func:`discover_slices`.
    """
    if not spaces:
        raise FitError("expected at least one space to discover slices in, got none")
    y = np.asarray(y, dtype=np.float64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.float64).ravel()
    err = (y != (y_pred >= 0.5)).astype(np.float64)
    if n_splits < 2:
        raise FitError(f"expected n_splits >= 2 for an honest test, got {n_splits}")
    if err.sum() == 0 or err.sum() == len(y):
        return []
    matrices = []
    for space in spaces:
        X = space.X.tocsr() if sparse.issparse(space.X) else np.asarray(space.X)
        if X.dtype not in (np.float32, np.float64):
            X = X.astype(np.float64)
        if X.shape[0] != len(y):
            raise FitError(f"expected {len(y)} rows in space {space.name!r}, got {X.shape[0]}")
        matrices.append(X)

    tested: list[tuple[Contrast, float, tuple[int, int], int, float]] = []
    fitted: dict[tuple[int, int], Slicer] = {}
    held_out: dict[int, np.ndarray] = {}
    # Memberships are row by row: each fold's over the whole window is computed once, and its
    # training and held-out rows, and every slice kept from the fold, read from it.
    # Only the territories and the chosen components' columns are kept past the fold.
    memberships: dict[tuple[tuple[int, int], int], np.ndarray] = {}
    territories: dict[tuple[int, int], np.ndarray] = {}
    typicalities: dict[tuple[tuple[int, int], int], np.ndarray] = {}
    by_row: set[tuple[int, int]] = set()  # slicers whose memberships are computed row by row
    n_chosen = 0
    splits = _folds(y, err, n_splits, random_state) if folds is None else _given(folds, n_splits, len(y))
    whole: list[tuple[Contrast, float, tuple[int, int], int, float]] = []
    # The p-value each slice is ranked and reported at, before the Bonferroni factor: a
    # whole-window slice beyond every permutation at the permutation maxima's tail estimate,
    # below the floor (significance stays the permutation test's); a cross-fitted one at its own.
    raw: dict[tuple[tuple[int, int], int], float] = {}
    for index, (space, X) in enumerate(zip(spaces, matrices, strict=True)):
        calibrated = _calibrated(space, X, y, y_pred, random_state) if space.permutations > 0 else None
        if calibrated is None:
            continue
        key = (index, -1)
        fitted[key], membership, p_values, p_estimates = calibrated
        territories[key] = membership > 0
        for j, cls in enumerate(getattr(fitted[key], "classes_", [])):
            c = contrast(territories[key][:, j], y == cls, err)
            if c.n_in >= min_size and c.n_out > 0:
                whole.append((c, float(p_values[j]), key, j, float(cls)))
                raw[key, j] = float(p_estimates[j])
                memberships[key, j] = membership[:, j].copy()
    for fold, (train, test) in enumerate(splits):
        held_out[fold] = np.isin(np.arange(len(y)), test)
        for index, (space, X) in enumerate(zip(spaces, matrices, strict=True)):
            if space.permutations > 0:
                continue
            key = (index, fold)
            slicer = space.make_slicer(random_state + fold)
            # A mixture fits and gives the memberships with passes shared (fit_memberships); its
            # memberships are row by row, so a kept slice's typicality is computed on its members.
            fit_memberships = getattr(slicer, "fit_memberships", None)
            try:
                if fit_memberships is not None:
                    membership = fit_memberships(X, y, y_pred, train)
                    by_row.add(key)
                else:
                    slicer.fit(_take(X, train), y[train], y_pred[train])
                    membership = slicer.membership(X, y)
            except FitError:
                continue
            fitted[key] = slicer
            territories[key] = _territory(membership, beta)
            chosen = _choose(
                membership[train], territories[key][train], y[train], err[train], n_slices, min_size
            )
            n_chosen += len(chosen)
            memberships.update({(key, j): membership[:, j].copy() for j, _ in chosen})
            del membership
            territory_test = territories[key][test]
            for j, cls in chosen:
                c = contrast(territory_test[:, j], y[test] == cls, err[test])
                if c.n_in >= min_size and c.n_out > 0:
                    tested.append((c, c.p_value(), key, j, cls))

    # Weighted Bonferroni: each whole-window space weighs as a cross-fitted one that chose
    # n_slices components in every fold; its p-values are already adjusted within the space.
    share = n_slices * n_splits
    m = max(n_chosen + share * sum(s.permutations > 0 for s in spaces), 1)
    raw.update({(key, j): p for _, p, key, j, _ in tested})
    # (test, p-value that decides, p-value that ranks and is reported, key, component, class)
    adjusted = [(c, p * m, p * m, key, j, cls) for c, p, key, j, cls in tested]
    adjusted += [(c, p * m / share, raw[key, j] * m / share, key, j, cls) for c, p, key, j, cls in whole]
    # Ties (whole-window p-values beyond every permutation, where the tail leaves them equal) go
    # to the stronger evidence on the cases tested: more errors beyond chance, not the highest
    # rate of a few.
    significant = sorted(
        (t for t in adjusted if t[1] < alpha),
        key=lambda t: (t[2], t[0].p_value(), -(t[0].e_in / t[0].n_in - t[0].e_out / t[0].n_out)),
    )
    kept: list[SliceFinding] = []
    for c, _, p, key, j, cls in significant:
        members = territories[key][:, j] & (y == cls)
        if members.sum() < min_size:
            continue
        overlaps = [(members & k.members).sum() / min(members.sum(), k.members.sum()) for k in kept]
        if overlaps and max(overlaps) > dedup_overlap:
            continue
        if key in by_row:  # the members' typicality alone: all that ranks them
            rows = np.flatnonzero(members)
            typicalities[key, j] = np.zeros(len(y))
            typicalities[key, j][rows] = fitted[key].membership(_take(matrices[key[0]], rows))[:, j]
        elif (key, j) not in typicalities:
            typical = fitted[key].membership(matrices[key[0]])
            typicalities.update({(k, c_): typical[:, c_].copy() for k, c_ in memberships if k == key})
        whole_window = key[1] < 0
        kept.append(
            SliceFinding(
                members=members,
                probability=memberships[key, j],
                typicality=typicalities[key, j],
                slice_class=cls,
                error_rate=c.e_in / c.n_in,
                rest_error_rate=c.e_out / c.n_out,
                n_tested=c.n_in,
                p_value=min(1.0, p),
                p_value_raw=raw[key, j],
                fold=key[1],
                component=j,
                # A whole-window slice's names are chosen outside the first fold and checked in it.
                held_out=held_out.get(0) if whole_window else held_out[key[1]],
                space=spaces[key[0]].name,
                mixture=_mixture(fitted[key]) if spaces[key[0]].name == "fused" else None,
                mixture_component=j if spaces[key[0]].name == "fused" else None,
            )
        )
        if len(kept) == n_slices:
            break
    # A slice found in another space keeps the fused space's territory of the same cases, where
    # one was tested: the early warning recognises new cases in the fused space only.
    fused_tested = sorted((t for t in tested if spaces[t[2][0]].name == "fused"), key=lambda t: t[1])
    for i, finding in enumerate(kept):
        if finding.mixture is not None:
            continue
        for _, _, key, j, cls in fused_tested:
            members = territories[key][:, j] & (y == cls)
            smaller = min(members.sum(), finding.members.sum())
            if cls == finding.slice_class and (members & finding.members).sum() > dedup_overlap * smaller:
                kept[i] = replace(finding, mixture=_mixture(fitted[key]), mixture_component=j)
                break
    return kept


def _calibrated(
    space: Space, X: np.ndarray, y: np.ndarray, y_pred: np.ndarray, random_state: int
) -> tuple[Slicer, np.ndarray, np.ndarray, np.ndarray] | None:
    """A whole-window space's slicer, fitted and calibrated on every case, with its membership,
    its rules' p-values (adjusted within the space) and their estimates below the permutation
    floor (``p_estimates_``, where the slicer gives them); None when it finds no rule."""
    slicer = space.make_slicer(random_state)
    fit = getattr(slicer, "fit_calibrated", None)
    if fit is None:
        raise FitError(f"space {space.name!r} asks for permutations, but its slicer cannot calibrate them")
    try:
        fit(
            X,  # as given: a whole-window slicer converts what it needs (a scan, a subset of rows)
            y,
            y_pred,
            n_permutations=space.permutations,
            random_state=random_state,
        )
    except FitError:
        return None
    p_values = np.asarray(slicer.p_values_, dtype=np.float64)  # type: ignore[attr-defined]
    estimates = np.asarray(getattr(slicer, "p_estimates_", p_values), dtype=np.float64)
    return slicer, slicer.membership(X, y), p_values, np.minimum(estimates, p_values)


def _choose(
    membership: np.ndarray,
    territory: np.ndarray,
    y: np.ndarray,
    err: np.ndarray,
    n_slices: int,
    min_size: int,
) -> list[tuple[int, float]]:
    """Up to ``n_slices`` components ``(j, class)`` of the fitting rows, by the z of their errors."""
    chosen: list[tuple[float, int, float]] = []
    mass = membership.sum(axis=0)
    labelled = y @ membership  # each component's membership-weighted count of label 1, one pass
    for j in range(membership.shape[1]):
        if mass[j] < 1e-9:
            continue
        cls = float(np.round(labelled[j] / mass[j]))
        c = contrast(territory[:, j], y == cls, err)
        if c.n_in >= min_size and c.z > 0:
            chosen.append((c.z, j, cls))
    return [(j, cls) for _, j, cls in sorted(chosen, reverse=True)[:n_slices]]
