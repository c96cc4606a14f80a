"""A slicer over a sparse bag-of-words view: slices are the cases of one class carrying a term.

A slice that a few words define (a device name, a phrase, a header value) is a needle in a
whole-report sentence embedding: the words move the vector little, and a mixture over 100
dimensions rarely isolates 2% of a window. On the binary presence of each term (a word, a
bigram, or a header word of the metadata sentence) the same group is one column.

:class:`TermRuleSlicer` scores every rule "carries term ``t`` and belongs to class ``c``" (and
"carries both ``t`` and ``u``", over the best-scoring terms) by how unlikely its errors are at
the error rate of class ``c`` (the binomial tail), and keeps the ``n_rules`` best as its
components. Its membership is 1 for a case of the rule's class that carries its terms, 0
otherwise. It is tested in one of two ways:

* cross-fitted (:meth:`~TermRuleSlicer.fit` on the fitting fold): the honest test of
  :mod:`.significance` chooses among its rules and tests them on held-out cases, exactly as it
  does a mixture's components;
* on the whole window (:meth:`~TermRuleSlicer.fit_calibrated`): the rules are chosen on every
  case and each gets a p-value that is valid for the whole selection. The largest score over every
  rule the selection could have produced is recomputed with the errors permuted within each
  class (Westfall and Young's max-T); a rule's p-value is the share of permutations whose
  largest score reaches its own. No case is set aside, so a group of 15 cases of a class is tested
  on all 15 instead of the 7 of one fold: what a 3% slice of a 1,000-case window needs.
"""

from __future__ import annotations

from numbers import Integral
from typing import Any, ClassVar

import numpy as np
from scipy import sparse
from sklearn.utils._param_validation import Interval

from agent.errors import FitError
from agent.slicing.base import SlicerEstimator, as_binary, binomial_strength, contrast, max_t_p_values

__all__ = ["TermRuleSlicer"]


class TermRuleSlicer(SlicerEstimator):
    """Rules "class ``c`` and carries term ``t`` (and ``u``)" chosen by their errors.

    Parameters
    ----------
    n_rules
        Rules kept as components.
    min_support
        Cases of the rule's class that must carry its terms, among the rows fitted on.
    n_pair_terms
        Best single terms whose pairs are scored too (0: no pairs).

    Attributes
    ----------
    rules_
        ``(k, 2)`` term columns of each rule (the same column twice for a single term).
    classes_
        The class (0 or 1) of each rule.
    means_
        The error rate of each rule on the rows fitted on (also what marks the slicer fitted).
    strength_
        Each rule's score on the rows fitted on: minus the log of the binomial tail of its errors
        at its class's error rate.
    p_values_
        After :meth:`fit_calibrated` only: each rule's p-value, adjusted for every rule the
        selection could have chosen.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = (rng.random((400, 6)) < 0.2).astype(float)
    >>> y = rng.integers(0, 2, 400).astype(float)
    >>> err = np.where(X[:, 3] > 0, rng.random(400) < 0.6, rng.random(400) < 0.05)
    >>> s = TermRuleSlicer(n_rules=2).fit(X, y, np.where(err, 1 - y, y))
    >>> sorted({int(t) for t in s.rules_[:, 0]})
    [3]
    >>> s = TermRuleSlicer(n_rules=2).fit_calibrated(X, y, np.where(err, 1 - y, y), n_permutations=99)
    >>> bool(s.p_values_[0] < 0.05)
    True
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
        return self._fit(*self._inputs(X, y, y_pred))

    def _fit(self, present: sparse.csc_matrix, y: np.ndarray, err: np.ndarray) -> TermRuleSlicer:
        candidates: list[tuple[float, int, int, int]] = []
        for c in (0, 1):
            rows = y == c
            candidates += self._scored(present[rows], err[rows], c)
        if not candidates:
            raise FitError(
                f"no term is carried by {self.min_support} cases of a class with errors above the rest"
            )
        best = sorted(candidates, key=lambda t: (-t[0], t[1], t[2], t[3]))[: self.n_rules]
        self.rules_ = np.array([[a, b] for _, _, a, b in best], dtype=int)
        self.classes_ = np.array([c for _, c, _, _ in best], dtype=np.float64)
        self.strength_ = np.array([z for z, _, _, _ in best], dtype=np.float64)
        self.n_features_in_ = present.shape[1]
        inside = self._inside(present)
        self.means_ = np.array(
            [err[inside[:, k] & (y == c)].mean() for k, c in enumerate(self.classes_)], dtype=np.float64
        )
        return self

    def fit_calibrated(
        self,
        X: np.ndarray,
        y: np.ndarray,
        y_pred: np.ndarray,
        *,
        n_permutations: int = 500,
        random_state: int = 0,
    ) -> TermRuleSlicer:
        """Choose the rules on every row, and give each a p-value valid for the whole selection.

        Two family-wise p-values are computed for each rule, and the smaller one, doubled, is
        kept (``p_values_``):

        * max-T: the share of ``n_permutations`` within-class permutations of the errors in
          which the largest score over every rule (single terms, and pairs of the best terms,
          chosen again in each permutation as :meth:`fit` chooses them) reaches the rule's.
          Exact whatever the terms' supports and correlations, but never below
          ``1 / (n_permutations + 1)``;
        * Bonferroni: the rule's one-sided Fisher p-value times the number of rules that could
          have been chosen (every eligible term, and every pair of them, in each class). Loose,
          but it orders strong slices where the permutations cannot.
        """
        if n_permutations < 1:
            raise FitError(f"expected n_permutations >= 1, got {n_permutations}")
        self._check_params()
        present, y, err = self._inputs(X, y, y_pred)
        self._fit(present, y, err)
        rng = np.random.default_rng(random_state)
        null_max = np.full(n_permutations, -np.inf)
        n_rules_possible = 0
        for c in (0, 1):
            rows = np.flatnonzero(y == c)
            if not len(rows):
                continue
            P = present[rows]
            n_in = _column_sums(P)
            eligible = int(((n_in >= self.min_support) & (n_in < len(rows))).sum())
            n_rules_possible += eligible + eligible * (eligible - 1) // 2
            e = err[rows].astype(np.float32)
            chunk = max(1, 4_000_000 // len(rows))  # permutations at a time: memory stays bounded
            for start in range(0, n_permutations, chunk):
                E = np.stack([rng.permutation(e) for _ in range(min(chunk, n_permutations - start))], axis=1)
                part = null_max[start : start + E.shape[1]]
                null_max[start : start + E.shape[1]] = np.maximum(part, self._null_max(P, E))
        inside = self._inside(present)
        p_perm = max_t_p_values(null_max, self.strength_)
        p_bonf = np.array(
            [
                contrast(inside[:, k], y == c, err).p_value() * max(n_rules_possible, 1)
                for k, c in enumerate(self.classes_)
            ]
        )
        self.p_values_ = np.minimum(1.0, 2 * np.minimum(p_perm, p_bonf))
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

    def _scored(self, P: sparse.csc_matrix, e: np.ndarray, c: int) -> list[tuple[float, int, int, int]]:
        """Every rule of class ``c`` with its score: single terms, then pairs of the best terms."""
        n_in, e_in = _column_sums(P), np.asarray(P.T @ e, dtype=np.float64).ravel()
        z = binomial_strength(n_in, e_in, float(len(e)), float(e.sum()))
        ok = np.flatnonzero((n_in >= self.min_support) & (z > 0))
        out = [(float(z[t]), c, int(t), int(t)) for t in ok]
        top = ok[np.argsort(-z[ok], kind="stable")][: self.n_pair_terms]
        if len(top) > 1:
            S = P[:, top].toarray().astype(np.float64)
            both = S.T @ S  # co-occurrence counts of the best terms
            err_both = (S * e[:, None]).T @ S
            zz = binomial_strength(both, err_both, float(len(e)), float(e.sum()))
            for a, b in zip(*np.triu_indices(len(top), 1), strict=True):
                if both[a, b] >= self.min_support and zz[a, b] > max(z[top[a]], z[top[b]]):
                    out.append((float(zz[a, b]), c, int(top[a]), int(top[b])))
        return out

    def _null_max(self, P: sparse.csc_matrix, E: np.ndarray) -> np.ndarray:
        """The largest score of any rule :meth:`_scored` would produce, for each column of errors
        ``E`` (a permutation of one class's errors: the same total in every column)."""
        n_all = float(P.shape[0])
        e_all = E.sum(axis=0, dtype=np.float64)
        n_in = _column_sums(P)
        keep = np.flatnonzero(n_in >= self.min_support)
        out = np.full(E.shape[1], -np.inf)
        if not len(keep):
            return out
        Pk = P[:, keep].astype(np.float32)
        e_in = np.asarray(Pk.T @ E, dtype=np.float64)  # (terms, permutations)
        z = binomial_strength(n_in[keep][:, None], e_in, n_all, float(e_all[0]))
        out = z.max(axis=0)
        if self.n_pair_terms < 2 or len(keep) < 2:
            return out
        n_top = min(self.n_pair_terms, len(keep))
        masked = np.where(z > 0, z, -np.inf)
        tops = np.argpartition(-masked, n_top - 1, axis=0)[:n_top]  # (n_top, permutations)
        for b in range(E.shape[1]):
            top = tops[:, b][np.isfinite(masked[tops[:, b], b])]
            if len(top) < 2:
                continue
            S = Pk[:, top].toarray()
            both = S.T @ S
            err_both = (S * E[:, b : b + 1]).T @ S
            zz = binomial_strength(
                both.astype(np.float64), err_both.astype(np.float64), n_all, float(e_all[b])
            )
            single = z[top, b]
            better = (both >= self.min_support) & (zz > np.maximum(single[:, None], single[None, :]))
            np.fill_diagonal(better, False)
            if better.any():
                out[b] = max(out[b], float(zz[better].max()))
        return out

    def _inputs(self, X: Any, y: Any, y_pred: Any) -> tuple[sparse.csc_matrix, np.ndarray, np.ndarray]:
        present = self._presence(X)
        n = present.shape[0]
        y = as_binary(y, n)
        err = (y != (as_binary(y_pred, n, name="y_pred", soft=True) >= 0.5)).astype(np.float64)
        return present, y, err

    def _inside(self, present: sparse.csc_matrix) -> np.ndarray:
        """``(n, rules)``: whether each case carries both terms of each rule."""
        first = present[:, self.rules_[:, 0]].toarray()
        second = present[:, self.rules_[:, 1]].toarray()
        return np.asarray(first & second)

    @staticmethod
    def _presence(X: Any) -> sparse.csc_matrix:
        """Term presence as a sparse boolean ``(n, terms)`` matrix: a window of 50,000 reports and
        some thousands of terms is never made dense."""
        if not sparse.issparse(X):
            X = np.asarray(X)
        if X.ndim != 2:
            raise FitError(f"expected a 2-D term presence array, got shape {X.shape}")
        return sparse.csc_matrix(X > 0)


def _column_sums(P: sparse.spmatrix) -> np.ndarray:
    return np.asarray(P.sum(axis=0), dtype=np.float64).ravel()
