"""A slicer over a sparse bag-of-words view: slices are the cases of one class carrying a term.

A slice that a few words define (a device name, a phrase, a header value) is a needle in a
whole-report sentence embedding: the words move the vector little, and a mixture over 100
dimensions rarely isolates 2% of a window. On the binary presence of each term (a word, a
bigram, or a header word of the metadata sentence) the same group is one column.

:class:`TermRuleSlicer` scores every rule "carries term ``t`` and belongs to class ``c``" (and
"carries both ``t`` and ``u``", over the best-scoring terms) by how unlikely its errors are at
the error rate of class ``c`` (the binomial tail), and keeps the ``n_rules`` best as its
components. Its membership is 1 for a case of the rule's class that carries its terms, 0
otherwise.

A group that spans both classes (a device, a phrase of one reporting template) holds half its
errors in each, and a 3% group of a 1,000-case window may hold only 5-10 cases of one class: too
few for a rule of that class alone. Rules over both classes ("carries ``t``", whatever the class)
are scored too, by Fisher's combination of the two classes' binomial tails (each at its own
class's error rate), and kept as two components, one per class (a slice is of one class: the
report's contract). A component of such a rule is reported only where its own class's cases
carrying the terms err above the rest of the class at ``half_level``, at the larger of the
rule's p-value and its own (a gatekeeping step: the rule over both classes is tested under the
family-wise correction, its halves one by one after it), so a strong half does not carry a half
without errors into the report, nor lend its p-value to a weak one.

It is tested in one of two ways:

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

from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
from scipy import sparse
from sklearn.utils._param_validation import Interval

from agent.errors import FitError
from agent.slicing.base import (
    SlicerEstimator,
    as_binary,
    binomial_strength,
    contrast,
    fisher_p,
    fisher_strength,
    gated_halves,
    max_t_p_values,
    tail_p_values,
)

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
    both_classes
        Score rules over both classes as well as rules of one class.
    half_level
        After :meth:`fit_calibrated`: a component of a rule over both classes is reported only
        where its own class's carriers err above the rest of the class at this one-sided Fisher
        level (otherwise its p-value is 1).

    Attributes
    ----------
    rules_
        ``(k, 2)`` term columns of each rule (the same column twice for a single term).
    classes_
        The class (0 or 1) of each component.
    joint_
        Whether each component is one class's half of a rule over both classes.
    means_
        The error rate of each rule on the rows fitted on (also what marks the slicer fitted).
    strength_
        Each component's score on the rows fitted on: minus the log of the binomial tail of its
        errors at its class's error rate; for a rule over both classes, minus the log of Fisher's
        combination of its two classes' tails (the same for both its components).
    p_values_
        After :meth:`fit_calibrated` only: each rule's p-value, adjusted for every rule the
        selection could have chosen.
    p_estimates_
        ``p_values_``, except beyond every permutation's largest score: there, the estimate of
        :func:`~agent.slicing.base.tail_p_values` below the permutation floor (for ranking and
        reporting; significance is decided on ``p_values_``).
    null_max_
        The largest score of each permutation.

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
        "both_classes": ["boolean"],
        "half_level": [Interval(Real, 0, 1, closed="right")],
    }

    def __init__(
        self,
        n_rules: int = 25,
        *,
        min_support: int = 10,
        n_pair_terms: int = 30,
        both_classes: bool = True,
        half_level: float = 0.05,
    ) -> None:
        self.n_rules = n_rules
        self.min_support = min_support
        self.n_pair_terms = n_pair_terms
        self.both_classes = both_classes
        self.half_level = half_level

    def fit(self, X: np.ndarray, y: np.ndarray, y_pred: np.ndarray) -> TermRuleSlicer:
        """Choose the rules on these rows (the fitting fold)."""
        self._check_params()
        return self._fit(*self._inputs(X, y, y_pred))

    def _fit(self, present: sparse.csc_matrix, y: np.ndarray, err: np.ndarray) -> TermRuleSlicer:
        classes = [(present[y == c], err[y == c]) for c in (0, 1)]
        candidates: list[tuple[float, int, int, int]] = []  # (score, class or -1 for both, terms)
        for c, (P, e) in enumerate(classes):
            candidates += self._scored(P, e, c)
        if self.both_classes:
            candidates += self._scored_both(classes)
        if not candidates:
            raise FitError(
                f"no term is carried by {self.min_support} cases with errors above their class's rate"
            )
        best = sorted(candidates, key=lambda t: (-t[0], t[1], t[2], t[3]))[: self.n_rules]
        # A rule over both classes is two components, one per class: a slice is of one class.
        components = [(z, half, a, b, c < 0) for z, c, a, b in best for half in ((0, 1) if c < 0 else (c,))]
        self.rules_ = np.array([[a, b] for _, _, a, b, _ in components], dtype=int)
        self.classes_ = np.array([c for _, c, _, _, _ in components], dtype=np.float64)
        self.joint_ = np.array([j for _, _, _, _, j in components], dtype=bool)
        self.strength_ = np.array([z for z, _, _, _, _ in components], dtype=np.float64)
        self.n_features_in_ = present.shape[1]
        inside = self._inside(present)
        self.means_ = np.array(
            [_rate(err[inside[:, k] & (y == c)]) for k, c in enumerate(self.classes_)], dtype=np.float64
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
          of each class and over both, chosen again in each permutation as :meth:`fit` chooses
          them) reaches the rule's. Exact whatever the terms' supports and correlations, but
          never below ``1 / (n_permutations + 1)``;
        * Bonferroni: the rule's one-sided Fisher p-value (for a rule over both classes, Fisher's
          combination of its two classes') times the number of rules that could have been
          chosen (every eligible term, and every pair of them, in each class and over both).
          Loose, but it orders strong slices where the permutations cannot.

        A component of a rule over both classes takes the larger of the rule's p-value and its
        own (its class's carriers against the rest of the class, one-sided Fisher), and 1 where
        its own is above ``half_level`` (:func:`~agent.slicing.base.gated_halves`).
        """
        if n_permutations < 1:
            raise FitError(f"expected n_permutations >= 1, got {n_permutations}")
        self._check_params()
        present, y, err = self._inputs(X, y, y_pred)
        self._fit(present, y, err)
        classes = [(present[y == c], err[y == c].astype(np.float32)) for c in (0, 1)]
        n_rules_possible = sum(_n_rules(_column_sums(P), self.min_support, P.shape[0]) for P, _ in classes)
        joint = self.both_classes and all(P.shape[0] for P, _ in classes)
        if joint:
            n_rules_possible += _n_rules(_column_sums(present), self.min_support, present.shape[0])
        # Each class's errors are permuted by a stream of its own, so that both classes'
        # permutations of one column are at hand together (rules over both classes need them).
        streams = [np.random.default_rng(s) for s in np.random.SeedSequence(random_state).spawn(2)]
        null_max = np.full(n_permutations, -np.inf)
        chunk = max(1, 4_000_000 // max(len(y), 1))  # permutations at a time: memory stays bounded
        for start in range(0, n_permutations, chunk):
            m = min(chunk, n_permutations - start)
            part = null_max[start : start + m]
            permuted: list[tuple[sparse.csc_matrix, np.ndarray, np.ndarray]] = []
            for (P, e), rng in zip(classes, streams, strict=True):
                if not P.shape[0]:
                    continue
                E = np.stack([rng.permutation(e) for _ in range(m)], axis=1)
                z, best = self._null_class(P, E)
                part = np.maximum(part, best)
                permuted.append((P, E, z))
            if joint:
                part = np.maximum(part, self._null_both(permuted))
            null_max[start : start + m] = part
        inside = self._inside(present)
        p_perm = max_t_p_values(null_max, self.strength_)
        p_bonf = np.empty(len(self.classes_))
        for k, (cls, both) in enumerate(zip(self.classes_, self.joint_, strict=True)):
            own = contrast(inside[:, k], y == cls, err).p_value()
            if both:
                other = contrast(inside[:, k], y == 1 - cls, err).p_value()
                own = fisher_p(own, other)
            p_bonf[k] = own * max(n_rules_possible, 1)
        p_values = np.minimum(1.0, 2 * np.minimum(p_perm, p_bonf))
        estimates = np.minimum(1.0, 2 * np.minimum(tail_p_values(null_max, self.strength_), p_bonf))
        gate = (self.joint_, inside, self.classes_, y, err, self.half_level)
        self.null_max_ = null_max
        self.p_values_ = gated_halves(p_values, *gate)
        self.p_estimates_ = gated_halves(estimates, *gate)
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
        n_in, z = _strengths(P, e)
        ok = np.flatnonzero((n_in >= self.min_support) & (z > 0))
        out = [(float(z[t]), c, int(t), int(t)) for t in ok]
        top = ok[np.argsort(-z[ok], kind="stable")][: self.n_pair_terms]
        if len(top) > 1:
            both, zz = _pair_strengths(P, e, top)
            for a, b in zip(*np.triu_indices(len(top), 1), strict=True):
                if both[a, b] >= self.min_support and zz[a, b] > max(z[top[a]], z[top[b]]):
                    out.append((float(zz[a, b]), c, int(top[a]), int(top[b])))
        return out

    def _scored_both(
        self, classes: list[tuple[sparse.csc_matrix, np.ndarray]]
    ) -> list[tuple[float, int, int, int]]:
        """Every rule over both classes with its score (class -1): single terms, then pairs."""
        if not all(P.shape[0] for P, _ in classes):
            return []
        (n0, z0), (n1, z1) = (_strengths(P, e) for P, e in classes)
        joint = fisher_strength(z0, z1)
        ok = np.flatnonzero((n0 + n1 >= self.min_support) & (joint > 0))
        out = [(float(joint[t]), -1, int(t), int(t)) for t in ok]
        top = ok[np.argsort(-joint[ok], kind="stable")][: self.n_pair_terms]
        if len(top) > 1:
            (both0, zz0), (both1, zz1) = (_pair_strengths(P, e, top) for P, e in classes)
            jj = fisher_strength(zz0, zz1)
            for a, b in zip(*np.triu_indices(len(top), 1), strict=True):
                if both0[a, b] + both1[a, b] >= self.min_support and jj[a, b] > max(
                    joint[top[a]], joint[top[b]]
                ):
                    out.append((float(jj[a, b]), -1, int(top[a]), int(top[b])))
        return out

    def _null_class(self, P: sparse.csc_matrix, E: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each column of errors ``E`` (a permutation of one class's errors: the same total in
        every column): every term's score ``(terms, permutations)``, and the largest score of any
        rule of the class that :meth:`_scored` would produce."""
        n_all = float(P.shape[0])
        e_all = float(E[:, 0].sum(dtype=np.float64))
        n_in = _column_sums(P)
        e_in = np.asarray(P.astype(np.float32).T @ E, dtype=np.float64)  # (terms, permutations)
        z = binomial_strength(n_in[:, None], e_in, n_all, e_all)
        out = np.full(E.shape[1], -np.inf)
        keep = np.flatnonzero(n_in >= self.min_support)
        if not len(keep):
            return z, out
        zk = z[keep]
        out = zk.max(axis=0)
        if self.n_pair_terms < 2 or len(keep) < 2:
            return z, out
        for b, top in self._tops(zk, keep):
            both, zz = _pair_strengths(P, E[:, b], top, e_all)
            single = z[top, b]
            better = (both >= self.min_support) & (zz > np.maximum(single[:, None], single[None, :]))
            np.fill_diagonal(better, False)
            if better.any():
                out[b] = max(out[b], float(zz[better].max()))
        return z, out

    def _null_both(self, permuted: list[tuple[sparse.csc_matrix, np.ndarray, np.ndarray]]) -> np.ndarray:
        """The largest score of any rule over both classes that :meth:`_scored_both` would produce,
        for each permutation: ``permuted`` holds each class's terms, errors and term scores."""
        (P0, E0, z0), (P1, E1, z1) = permuted
        n0, n1 = _column_sums(P0), _column_sums(P1)
        keep = np.flatnonzero(n0 + n1 >= self.min_support)
        out = np.full(E0.shape[1], -np.inf)
        if not len(keep):
            return out
        joint = fisher_strength(z0[keep], z1[keep])
        out = joint.max(axis=0)
        if self.n_pair_terms < 2 or len(keep) < 2:
            return out
        e0, e1 = float(E0[:, 0].sum(dtype=np.float64)), float(E1[:, 0].sum(dtype=np.float64))
        for b, top in self._tops(joint, keep):
            both0, zz0 = _pair_strengths(P0, E0[:, b], top, e0)
            both1, zz1 = _pair_strengths(P1, E1[:, b], top, e1)
            jj = fisher_strength(zz0, zz1)
            single = fisher_strength(z0[top, b], z1[top, b])
            better = (both0 + both1 >= self.min_support) & (jj > np.maximum(single[:, None], single[None, :]))
            np.fill_diagonal(better, False)
            if better.any():
                out[b] = max(out[b], float(jj[better].max()))
        return out

    def _tops(self, z: np.ndarray, columns: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """For each permutation ``b`` (a column of ``z``, scores of ``columns``), the term columns of
        its ``n_pair_terms`` best scores above 0, when there are two or more."""
        n_top = min(self.n_pair_terms, len(columns))
        masked = np.where(z > 0, z, -np.inf)
        tops = np.argpartition(-masked, n_top - 1, axis=0)[:n_top]  # (n_top, permutations)
        out = []
        for b in range(z.shape[1]):
            top = tops[:, b][np.isfinite(masked[tops[:, b], b])]
            if len(top) >= 2:
                out.append((b, columns[top]))
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


def _rate(err: np.ndarray) -> float:
    return float(err.mean()) if len(err) else 0.0


def _strengths(P: sparse.csc_matrix, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each term's carriers among one class's cases, and its score at the class's error rate."""
    n_in, e_in = _column_sums(P), np.asarray(P.T @ e, dtype=np.float64).ravel()
    return n_in, binomial_strength(n_in, e_in, float(len(e)), float(e.sum()))


def _pair_strengths(
    P: sparse.csc_matrix, e: np.ndarray, top: np.ndarray, e_all: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Co-occurrence counts of the terms ``top`` among one class's cases, and each pair's score."""
    S = P[:, top].toarray().astype(np.float32)  # counts: exact in float32 below 2**24
    wrong = S[np.asarray(e) > 0]  # errors are 0 or 1: only the rows in error count them
    both = (S.T @ S).astype(np.float64)
    err_both = (wrong.T @ wrong).astype(np.float64)
    total = float(np.sum(e, dtype=np.float64)) if e_all is None else e_all
    return both, binomial_strength(both, err_both, float(P.shape[0]), total)


def _n_rules(n_in: np.ndarray, min_support: int, n_rows: int) -> int:
    """Rules that could be chosen among terms of these carrier counts: each eligible term and pair."""
    eligible = int(((n_in >= min_support) & (n_in < n_rows)).sum())
    return eligible + eligible * (eligible - 1) // 2
