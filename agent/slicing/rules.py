"""A slicer over a sparse bag-of-words view: slices are the cases of one class carrying a term.

A slice that a few words define (a device name, a phrase, a header value) is a needle in a
whole-report sentence embedding: the words move the vector little, and a mixture over 100
dimensions rarely isolates 2% of a window. On the binary presence of each term (a word, a
bigram, or a header word of the metadata sentence) the same group is one column.

:class:`TermRuleSlicer` is fitted on the fitting fold only. It scores every rule "carries term
``t`` and belongs to class ``c``" (and "carries both ``t`` and ``u``", over the best-scoring
terms) by the two-proportion z statistic of errors inside against the rest of class ``c``, and
keeps the ``n_rules`` best as its components. Its membership is 1 for a case of the rule's class
that carries its terms, 0 otherwise: the territories the honest test (:mod:`.significance`)
chooses among and tests on held-out cases, exactly as it does a mixture's components.
"""

from __future__ import annotations

from numbers import Integral
from typing import Any, ClassVar

import numpy as np
from sklearn.utils._param_validation import Interval

from agent.errors import FitError
from agent.slicing.base import SlicerEstimator, as_binary

__all__ = ["TermRuleSlicer"]


def _z(n_in: np.ndarray, e_in: np.ndarray, n_all: float, e_all: float) -> np.ndarray:
    """Two-proportion z of errors inside ``n_in`` against the rest of ``n_all`` (vectorised)."""
    n_out, e_out = n_all - n_in, e_all - e_in
    with np.errstate(divide="ignore", invalid="ignore"):
        pooled = e_all / max(n_all, 1)
        sd = np.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / n_in + 1 / n_out))
        z = (e_in / n_in - e_out / n_out) / sd
    return np.where((n_in > 0) & (n_out > 0), z, 0.0)


class TermRuleSlicer(SlicerEstimator):
    """Rules "class ``c`` and carries term ``t`` (and ``u``)" chosen by their errors on the fitting rows.

    Parameters
    ----------
    n_rules
        Rules kept as components.
    min_support
        Cases of the rule's class that must carry its terms, among the fitting rows.
    n_pair_terms
        Best single terms whose pairs are scored too (0: no pairs).

    Attributes
    ----------
    rules_
        ``(k, 2)`` term columns of each rule (the same column twice for a single term).
    classes_
        The class (0 or 1) of each rule.
    means_
        The error rate of each rule on the fitting rows (also what marks the slicer fitted).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = (rng.random((400, 6)) < 0.2).astype(float)
    >>> y = rng.integers(0, 2, 400).astype(float)
    >>> err = np.where(X[:, 3] > 0, rng.random(400) < 0.6, rng.random(400) < 0.05)
    >>> s = TermRuleSlicer(n_rules=2).fit(X, y, np.where(err, 1 - y, y))
    >>> sorted({int(t) for t in s.rules_[:, 0]})
    [3]
    """

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "n_rules": [Interval(Integral, 1, None, closed="left")],
        "min_support": [Interval(Integral, 1, None, closed="left")],
        "n_pair_terms": [Interval(Integral, 0, None, closed="left")],
    }

    def __init__(self, n_rules: int = 25, *, min_support: int = 10, n_pair_terms: int = 30) -> None:
        self.n_rules = n_rules
        self.min_support = min_support
        self.n_pair_terms = n_pair_terms

    def fit(self, X: np.ndarray, y: np.ndarray, y_pred: np.ndarray) -> TermRuleSlicer:
        """Choose the rules on these rows (the fitting fold)."""
        self._check_params()
        present = self._presence(X)
        n, d = present.shape
        y = as_binary(y, n)
        err = (y != (as_binary(y_pred, n, name="y_pred", soft=True) >= 0.5)).astype(np.float64)
        candidates: list[tuple[float, int, int, int]] = []
        for c in (0, 1):
            rows = y == c
            P = present[rows].astype(np.float64)
            e = err[rows]
            n_in, e_in = P.sum(axis=0), e @ P
            z = _z(n_in, e_in, float(rows.sum()), float(e.sum()))
            ok = np.flatnonzero((n_in >= self.min_support) & (z > 0))
            candidates += [(float(z[t]), c, int(t), int(t)) for t in ok]
            top = ok[np.argsort(-z[ok], kind="stable")][: self.n_pair_terms]
            if len(top) > 1:
                both = P[:, top].T @ P[:, top]  # co-occurrence counts of the best terms
                err_both = (P[:, top] * e[:, None]).T @ P[:, top]
                zz = _z(both, err_both, float(rows.sum()), float(e.sum()))
                for a, b in zip(*np.triu_indices(len(top), 1), strict=True):
                    if both[a, b] >= self.min_support and zz[a, b] > max(z[top[a]], z[top[b]]):
                        candidates.append((float(zz[a, b]), c, int(top[a]), int(top[b])))
        if not candidates:
            raise FitError(
                f"no term is carried by {self.min_support} cases of a class with errors above the rest"
            )
        best = sorted(candidates, key=lambda t: (-t[0], t[1], t[2], t[3]))[: self.n_rules]
        self.rules_ = np.array([[a, b] for _, _, a, b in best], dtype=int)
        self.classes_ = np.array([c for _, c, _, _ in best], dtype=np.float64)
        self.n_features_in_ = d
        inside = self._inside(present)
        self.means_ = np.array(
            [err[inside[:, k] & (y == c)].mean() for k, c in enumerate(self.classes_)], dtype=np.float64
        )
        return self

    def membership(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """``(n, k)``: 1 where a case carries a rule's terms (and, given ``y``, is of its class)."""
        self._check_fitted()
        present = self._presence(X)
        if present.shape[1] != self.n_features_in_:
            raise FitError(f"expected {self.n_features_in_} term columns as in fit, got {present.shape[1]}")
        inside = self._inside(present).astype(np.float64)
        if y is not None:
            inside *= as_binary(y, len(inside))[:, None] == self.classes_[None, :]
        return inside

    def predict(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """The first rule each case falls under, or -1 for none."""
        inside = self.membership(X, y) > 0
        return np.where(inside.any(axis=1), inside.argmax(axis=1), -1)

    def _inside(self, present: np.ndarray) -> np.ndarray:
        return present[:, self.rules_[:, 0]] & present[:, self.rules_[:, 1]]

    @staticmethod
    def _presence(X: Any) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim != 2:
            raise FitError(f"expected a 2-D term presence array, got shape {X.shape}")
        return np.asarray(X > 0)
