"""The seed paper's own reading of a slicer: Domino's in-sample candidates and the global baseline.

The paper fits the mixture once on the whole test set, keeps five slices, ranks every case by
its membership of each slice (given embedding, label and prediction) and reports the slice
with the best precision@10 against the planted group. That is an optimistic reading: the slice
is chosen after looking at the answer and the mixture saw every prediction it is scored on.
It is computed here to compare like with like; the product's own figure (the slice it ranks
first among those that pass its held-out test) is reported beside it by the runner.

The baseline is the paper's global TF-IDF analysis: no slices, all errors in one group. Its
precision-like figure is the share of misclassified cases that carry the error attribute.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.config import AuditSettings
from agent.errors import FitError
from agent.metrics import precision_at_k, ranking
from agent.slicing import ErrorAwareMixture, ErrorsOnlyMixture

__all__ = ["Candidate", "baseline_precision", "best_candidate", "candidate_slices"]


@dataclass(frozen=True)
class Candidate:
    """One in-sample slice: cases ranked by membership, and the cases assigned to it."""

    order: np.ndarray
    members: np.ndarray
    slice_class: float


def candidate_slices(
    X: np.ndarray, y: np.ndarray, y_pred: np.ndarray, *, slicer: str, audit: AuditSettings, seed: int
) -> list[Candidate]:
    """Domino's slices of one window, fitted and read in-sample, at most ``audit.n_slices``.

    For the error-aware mixture, the components kept are those with the largest gap between
    their label and prediction rates (Domino's rule; ties, to two decimals, to the larger
    component); for the errors-only mixture, the largest error clusters. A case belongs to a
    slice when its membership is at least one half.
    """
    y = np.asarray(y, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    try:
        if slicer == "errors_only":
            eo = ErrorsOnlyMixture(
                audit.n_slices,
                min_cluster_size=audit.min_slice_size,
                reg_covar=audit.reg_covar,
                random_state=seed,
            ).fit(X, y, y_pred)
            proba = eo.predict_proba(X, y, y_pred)
            typicality = eo.membership(X)
            keep = np.argsort(-proba.sum(axis=0), kind="stable")[: audit.n_slices]
        else:
            # Domino's initialisation shares the components equally among the confusion cells.
            ea = ErrorAwareMixture(
                audit.n_components,
                gamma=audit.gamma,
                reg_covar=audit.reg_covar,
                min_init_size=1,
                random_state=seed,
            ).fit(X, y, y_pred)
            proba = ea.predict_proba(X, y, y_pred)
            typicality = ea.membership(X)
            # Domino's rule, the largest gap between label and prediction rates; with gamma = 10
            # many components are pure error cells (gap 1), so ties go to the larger component.
            gap = np.round(np.abs(ea.y_pred_probs_ - ea.y_probs_), 2)
            keep = np.lexsort((-ea.weights_, -gap))[: audit.n_slices]
    except FitError:
        return []
    out = []
    for j in keep:
        members = proba[:, j] >= 0.5
        if not members.any():
            continue
        # Memberships saturate at 1 with gamma = 10; ties go to the case most typical of the slice.
        order = ranking(proba[:, j], tiebreak=-typicality[:, j])
        order = order[proba[order, j] > 0]
        out.append(Candidate(order, members, float(np.round(y[members].mean()))))
    return out


def best_candidate(candidates: list[Candidate], in_group: np.ndarray, k: int = 10) -> tuple[int, float]:
    """Index and precision@``k`` of the candidate whose top ``k`` hold most of the group (-1, 0 if none)."""
    scores = [precision_at_k([c.order], in_group, k) for c in candidates]
    if not scores:
        return -1, 0.0
    best = int(np.argmax(scores))
    return best, float(scores[best])


def baseline_precision(err: np.ndarray, marked: np.ndarray) -> float:
    """Share of misclassified cases that are ``marked`` (NaN when there is no error).

    >>> baseline_precision(np.array([1, 1, 0, 1]), np.array([1, 0, 1, 1]))
    0.6666666666666666
    """
    err = np.asarray(err, dtype=bool)
    return float(np.asarray(marked, dtype=bool)[err].mean()) if err.any() else float("nan")
