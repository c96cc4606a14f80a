"""Whether a slice's share of one time bucket rose above its share of the labeled window.

One-sided Fisher exact test of the 2x2 table (in the slice, not) x (bucket, labeled window):
the window share is itself a sample, and a binomial test against it as if it were exact would
raise false alarms whenever the window happened to hold few of the slice's cases. p-values are
Bonferroni-adjusted over the slices of the (model, target class); a bucket is tested once, when
it is complete, so the false-alarm rate per bucket and (model, target class) is at most ``alpha``
(Fisher's test is conservative). A river drift detector (ADWIN, as for the labeled error rate in
:mod:`agent.drift.errors`) would watch the incoming share for change against its own past, not against
the window the slice was measured on, and gives no false-alarm rate to state.
"""

from __future__ import annotations

from dataclasses import dataclass

from scipy.stats import fisher_exact

__all__ = ["ShareTest", "share_test"]


@dataclass(frozen=True)
class ShareTest:
    """One bucket's test of one slice."""

    n: int
    inside: int
    share: float
    window_share: float
    p_value: float
    """Bonferroni-adjusted over the slices tested together."""
    warned: bool


def share_test(
    inside: int,
    n: int,
    window_inside: int,
    window_n: int,
    *,
    n_slices: int,
    alpha: float,
    min_cases: int,
) -> ShareTest:
    """Test a bucket's ``inside`` of ``n`` cases against the window's ``window_inside`` of ``window_n``.

    >>> share_test(30, 100, 50, 1000, n_slices=3, alpha=0.01, min_cases=30).warned
    True
    >>> share_test(7, 100, 50, 1000, n_slices=3, alpha=0.01, min_cases=30).warned
    False
    """
    window_share = window_inside / window_n if window_n else 0.0
    share = inside / n if n else 0.0
    if n < min_cases or window_n == 0:
        return ShareTest(n, inside, share, window_share, 1.0, False)
    table = [[inside, n - inside], [window_inside, window_n - window_inside]]
    p = min(1.0, float(fisher_exact(table, alternative="greater")[1]) * max(n_slices, 1))
    return ShareTest(n, inside, share, window_share, p, p < alpha)
