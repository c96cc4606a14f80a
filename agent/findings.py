"""One failure, one finding: slices whose members or validated names overlap are merged.

A mixture often splits one failure into several components (one per device word, per view,
per fold), and each passes its test. A reviewer wants one row per failure with its sub-groups.
Two slices belong to one finding when

- their members overlap: ``|A ∩ B| / min(|A|, |B|) >= overlap`` (the overlap coefficient, as
  the tracker uses: the core of a failure and the failure with its surroundings are one); or
- their names overlap: at least ``shared_names`` words of one slice's validated tokens are
  among the other's candidate names (its validated and rejected tokens: the words that most
  set its errors apart on the fitting fold); a bigram counts its two words, and a plural its
  singular (``tubes`` is ``tube``). A validated name
  has passed a held-out test of separating its own slice from the rest of its class, so when
  it also marks the other slice's errors the two are carved from one group (the demo's device
  failure comes out as one slice per device kind, named ``tip``, ``tube``, ``svc``... and
  barely overlapping in members).
  Slices of either class can share names: a failure that spans both classes is one finding;
  or
- their profiles point the same way: given each slice's profile (the mean of its members'
  case vectors less that of the rest of its class: what sets the slice apart in the text or
  shared embedding), the cosine of two profiles is at least ``similar``. A failure the slicer
  cut along words the names never share (``line``, ``picc`` beside ``tube``, ``drain``) sits
  in one region of a sentence embedding, apart from another failure (``lateral``).

Findings are the connected groups of that relation. Within a finding, sub-slices are ranked by
the errors they account for beyond the rest's rate, ``size × (error_rate - rest_error_rate)``
(size and effect together); findings are ranked by their best sub-slice's p-value.

Pure: slices in, findings out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from agent.report import Finding, SliceResult, TokenResult, finding_id

__all__ = ["group_slices"]


def _coefficient(a: frozenset[str], b: frozenset[str]) -> float:
    if not a or not b:
        return 0.0
    return len(a & b) / min(len(a), len(b))


def _stem(word: str) -> str:
    """A name word without its plural ``s``: ``tubes`` and ``tube`` are one name (not ``glass``)."""
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def _words(tokens: Sequence[TokenResult]) -> frozenset[str]:
    return frozenset(_stem(w) for t in tokens for w in t.token.split(" "))


def _excess(s: SliceResult) -> float:
    return s.size * (s.error_rate - s.rest_error_rate)


def _cosines(profiles: Sequence[np.ndarray] | None, n: int) -> np.ndarray:
    """Pairwise cosine of the slices' profiles (zeros without profiles)."""
    if profiles is None or n == 0:
        return np.zeros((n, n))
    P = np.asarray(profiles, dtype=np.float64).reshape(n, -1)
    norm = np.linalg.norm(P, axis=1, keepdims=True)
    unit = np.divide(P, norm, out=np.zeros_like(P), where=norm > 0)
    return np.asarray(unit @ unit.T)


def group_slices(
    slices: Sequence[SliceResult],
    *,
    overlap: float = 0.5,
    shared_names: int = 1,
    top_tokens: int = 5,
    profiles: Sequence[np.ndarray] | None = None,
    similar: float = 0.6,
) -> tuple[Finding, ...]:
    """Merge the slices that are one failure into findings, best first.

    Parameters
    ----------
    slices
        The report's slices, with their members' study uids (the local form) and validated tokens.
    overlap
        Overlap coefficient of members at which two slices are one failure.
    shared_names
        Validated name words two slices must share to be one failure.
    top_tokens
        Names a finding keeps, best held-out AUROC first.
    profiles
        Per slice, its profile vector (all of one width); None: no merging by profile.
    similar
        Cosine of two profiles at which two slices are one failure.

    Examples
    --------
    >>> from agent.report import Member
    >>> def sl(i, uids, words):
    ...     members = tuple(Member(u, 1.0) for u in uids)
    ...     toks = tuple(TokenResult(w, 0.1, None, 0.8, 0.001) for w in words)
    ...     return SliceResult(i, f"s-{i}", len(uids), 0.6, 0.1, 1e-5 * i, 1.0, 9, members, toks)
    >>> found = group_slices([sl(1, "abc", ["tube"]), sl(2, "xyz", ["chest tube"]), sl(3, "pq", ["lateral"])])
    >>> [(f.id, f.sub_slices) for f in found]
    [('f-1', ('s-1', 's-2')), ('f-3', ('s-3',))]
    """
    n = len(slices)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    members = [frozenset(m.study_uid for m in s.members if m.study_uid) for s in slices]
    validated = [_words(s.tokens) for s in slices]
    candidates = [_words((*s.tokens, *s.rejected_tokens)) for s in slices]
    cosine = _cosines(profiles, n)
    for i in range(n):
        for j in range(i + 1, n):
            if (
                _coefficient(members[i], members[j]) >= overlap
                or len(validated[i] & candidates[j]) >= shared_names
                or len(validated[j] & candidates[i]) >= shared_names
                or cosine[i, j] >= similar
            ):
                parent[root(j)] = root(i)

    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    drafts = []
    for idx in groups.values():
        subs = sorted((slices[i] for i in idx), key=lambda s: (-_excess(s), s.p_value, s.rank))
        best = min(subs, key=lambda s: (s.p_value, -_excess(s)))
        names: dict[str, TokenResult] = {}
        for s in subs:
            for t in s.tokens:
                kept = names.get(t.token)
                if kept is None or (t.auroc or 0.0) > (kept.auroc or 0.0):
                    names[t.token] = t
        tokens = sorted(names.values(), key=lambda t: (-(t.auroc or 0.0), t.p_value or 1.0, t.token))
        uids = set().union(*(members[i] for i in idx))
        size = len(uids) if uids else max(s.size for s in subs)
        drafts.append((best.p_value, -sum(_excess(s) for s in subs), subs, best, tokens, size))
    drafts.sort(key=lambda d: (d[0], d[1]))
    return tuple(
        Finding(
            rank=rank,
            id=finding_id(subs[0].id),
            size=size,
            error_rate=best.error_rate,
            p_value=best.p_value,
            tokens=tuple(tokens[:top_tokens]),
            sub_slices=tuple(s.id for s in subs),
        )
        for rank, (_, _, subs, best, tokens, size) in enumerate(drafts, start=1)
    )
