"""Honest slice discovery: choose slices on one part of the window, test them on another.

A mixture that sees labels and predictions pulls errors into its high-error components, so a
slice's error rate measured on the samples that formed it is inflated by construction, and a
binomial test on them rejects even when errors fall uniformly at random. Here every slice is
tested by cross-fitting instead:

1. The window is split into ``n_splits`` folds, stratified by (label, error).
2. For each fold, a slicer is fitted on the other folds, and up to ``n_slices`` candidate
   components are chosen there by an in-sample z-score of their error rate (size and
   chance both enter; Domino's raw rate gap ignores them).
3. Each candidate is tested on the held-out fold. A held-out case is inside the slice when
   the component is the most probable one for its embedding alone (its territory): labels
   and predictions play no part, so a held-out case's own error cannot pull it in. The
   test is a one-sided Fisher exact test of errors inside the territory against errors
   outside it, among held-out cases of the slice's class (the label is not the error, and
   mixing classes only dilutes the contrast).
4. p-values are Bonferroni-adjusted over every candidate tested; a candidate that fails
   ``alpha`` is not an error slice. A candidate whose members lie mostly (more than
   ``dedup_overlap`` of the smaller set) inside a more significant one is the same slice
   found again, in another fold or split in two, and is dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy.stats import fisher_exact
from sklearn.model_selection import StratifiedKFold

from agent.errors import FitError

__all__ = ["Slicer", "SliceFinding", "discover_slices"]


class Slicer(Protocol):
    """What the discovery procedure needs from a slicer."""

    def fit(self, X: np.ndarray, y: np.ndarray, y_pred: np.ndarray) -> Slicer: ...

    def predict_proba(self, X: np.ndarray, y: np.ndarray, y_pred: np.ndarray) -> np.ndarray: ...

    def membership(self, X: np.ndarray) -> np.ndarray: ...

    def mahalanobis_sq(self, X: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class SliceFinding:
    """One tested slice.

    ``probability`` is the slice membership of every sample in the window (label-aware, as
    Domino reports it) and ``distance`` the squared Mahalanobis distance to the slice's
    centre, which breaks the ties among members whose membership has saturated at 1.
    ``error_rate`` and ``rest_error_rate`` are measured on held-out samples only,
    ``n_tested`` of them inside the slice.
    """

    def ranking(self) -> np.ndarray:
        """Sample indices, most probable member first (ties: closest to the centre first)."""
        return np.lexsort((self.distance, -self.probability))

    probability: np.ndarray
    distance: np.ndarray
    error_rate: float
    rest_error_rate: float
    n_tested: int
    p_value: float
    p_value_raw: float
    fold: int
    component: int


def _candidate_components(
    resp: np.ndarray, err: np.ndarray, *, n_slices: int, min_size: float
) -> list[int]:
    """Components ranked by the z-score of their in-sample error rate against the fold's rate."""
    nk = resp.sum(axis=0)
    rate = (resp.T @ err) / np.maximum(nk, 1e-12)
    base = float(err.mean())
    sd = np.sqrt(max(base * (1.0 - base), 1e-12))
    z = (rate - base) * np.sqrt(nk) / sd
    order = [j for j in np.argsort(-z) if nk[j] >= min_size and rate[j] > base]
    return order[:n_slices]


def discover_slices(
    make_slicer: Callable[[int], Slicer],
    X: np.ndarray,
    y: np.ndarray,
    y_pred: np.ndarray,
    *,
    n_slices: int = 5,
    n_splits: int = 2,
    beta: float = 0.5,
    alpha: float = 0.05,
    min_size: int = 10,
    within_class: bool = True,
    dedup_overlap: float = 0.5,
    random_state: int = 0,
) -> list[SliceFinding]:
    """Find and test error slices; return the significant ones, most significant first.

    Parameters
    ----------
    make_slicer
        Builds a fresh, unfitted slicer from a seed.
    X, y, y_pred
        Fused embeddings ``(n, d)``, binary labels, and binary predictions or target-class
        probabilities (errors are ``y != (y_pred >= 0.5)``).
    n_slices
        Candidates chosen per fold, and the most slices returned.
    n_splits
        Cross-fitting folds (at least 2).
    beta
        Membership threshold: a sample belongs to a slice when its membership exceeds it.
    alpha
        Family-wise significance level after Bonferroni adjustment.
    min_size
        Smallest slice, in training members and in held-out samples, that is tested at all.
    within_class
        Compare a slice's held-out error rate with the rest of its own class only (the
        class its training errors belong to), not with every other case.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.float64).ravel()
    err = (y != (y_pred >= 0.5)).astype(np.float64)
    n = len(y)
    if n_splits < 2:
        raise FitError(f"expected n_splits >= 2 for an honest test, got {n_splits}")
    strata = (2 * y + err).astype(int)
    # Folds need every stratum present n_splits times; merge rare strata into their label.
    _, counts = np.unique(strata, return_counts=True)
    if counts.min() < n_splits:
        strata = y.astype(int)
        _, counts = np.unique(strata, return_counts=True)
        if counts.min() < n_splits:
            strata = np.zeros(n, dtype=int)
    if n < 2 * n_splits or err.sum() == 0 or err.sum() == n:
        return []
    folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=random_state)

    raw: list[tuple[float, float, float, int, int, int, np.ndarray, np.ndarray]] = []
    n_candidates = 0
    for fold, (train, test) in enumerate(folds.split(X, strata)):
        slicer = make_slicer(random_state + fold)
        try:
            slicer.fit(X[train], y[train], y_pred[train])
        except FitError:
            continue
        resp_train = slicer.predict_proba(X[train], y[train], y_pred[train])
        territory = slicer.membership(X[test]).argmax(axis=1)
        full = slicer.predict_proba(X, y, y_pred)
        dist_full = slicer.mahalanobis_sq(X)
        candidates = _candidate_components(resp_train, err[train], n_slices=n_slices, min_size=min_size)
        n_candidates += len(candidates)
        for j in candidates:
            formed_by = resp_train[:, j] > beta
            if formed_by.sum() < min_size:
                continue
            inside = territory == j
            if within_class:
                # Compare inside and outside among held-out cases of the slice's own class:
                # the label is not the error, and mixing classes only dilutes the contrast.
                cls = float(np.round(np.average(y[train], weights=resp_train[:, j] * err[train] + 1e-12)))
                same = y[test] == cls
            else:
                same = np.ones(len(test), dtype=bool)
            inside &= same
            n_in = int(inside.sum())
            n_out = int((same & ~inside).sum())
            if n_in < min_size or n_out == 0:
                continue
            e_in = int(err[test][inside].sum())
            e_out = int(err[test][same & ~inside].sum())
            _, p = fisher_exact([[e_in, n_in - e_in], [e_out, n_out - e_out]], alternative="greater")
            raw.append(
                (float(p), e_in / n_in, e_out / n_out, n_in, fold, int(j), full[:, j], dist_full[:, j])
            )

    # Bonferroni over every candidate chosen, tested or not (too small to test still counts).
    m = max(n_candidates, 1)
    findings = [
        SliceFinding(
            probability=prob,
            distance=dist,
            error_rate=rate_in,
            rest_error_rate=rate_out,
            n_tested=n_in,
            p_value=min(1.0, p * m),
            p_value_raw=p,
            fold=fold,
            component=j,
        )
        for p, rate_in, rate_out, n_in, fold, j, prob, dist in raw
        if min(1.0, p * m) < alpha
    ]
    findings.sort(key=lambda f: (f.p_value, -(f.error_rate - f.rest_error_rate)))

    kept: list[SliceFinding] = []
    kept_sets: list[np.ndarray] = []
    for finding in findings:
        members = finding.probability > beta
        if members.sum() < min_size:
            continue
        overlap = [
            (members & other).sum() / max(min(members.sum(), other.sum()), 1) for other in kept_sets
        ]
        if overlap and max(overlap) > dedup_overlap:
            continue
        kept.append(finding)
        kept_sets.append(members)
        if len(kept) == n_slices:
            break
    return kept
