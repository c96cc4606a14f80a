"""Precision figures of slice discovery.

``precision_at_k`` is Domino's: the fraction of a slice's ``k`` most probable members that
belong to a ground-truth group, the best slice taken. ``error_precision_at_k`` needs no ground
truth: the fraction of the ``k`` most probable members that are misclassified, which is the
figure production can report.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["error_precision_at_k", "precision_at_k", "ranking"]


def ranking(probability: np.ndarray, tiebreak: np.ndarray | None = None) -> np.ndarray:
    """Sample indices by membership, highest first; ties by ``tiebreak`` (lowest first), then index."""
    probability = np.asarray(probability, dtype=np.float64)
    if tiebreak is None:
        return np.argsort(-probability, kind="stable")
    return np.lexsort((np.asarray(tiebreak, dtype=np.float64), -probability))


def precision_at_k(rankings: Sequence[np.ndarray], in_group: np.ndarray, k: int = 10) -> float:
    """Best, over slices, fraction of the top-``k`` members inside the ground-truth group.

    ``rankings`` holds, per slice, the sample indices from most to least probable member
    (see :func:`ranking`).

    >>> precision_at_k([ranking(np.array([0.9, 0.8, 0.1, 0.0]))], np.array([1, 0, 1, 1]), k=2)
    0.5
    """
    in_group = np.asarray(in_group, dtype=bool)
    best = 0.0
    for order in rankings:
        top = np.asarray(order)[:k]
        if len(top):
            best = max(best, float(in_group[top].mean()))
    return best


def error_precision_at_k(order: np.ndarray, is_error: np.ndarray, k: int = 10) -> float:
    """Fraction of the top-``k`` members of one slice that are misclassified.

    >>> error_precision_at_k(ranking(np.array([0.9, 0.8, 0.1])), np.array([1, 1, 0]), k=2)
    1.0
    """
    top = np.asarray(order)[:k]
    return float(np.asarray(is_error, dtype=bool)[top].mean()) if len(top) else 0.0
