"""The seed paper's three failure modes, with its measures of strength (its equation 5).

Each mode names a classifier (its target class), an error attribute, and the planted
underperforming group ``(y, attr)``: the cases of one class that carry (or lack) the attribute.

``correlation``  spurious correlation. A pneumothorax classifier trained with correlation
                 ``rho(y = 0, devices) = 0.7``: support devices mostly appear on negatives, so
                 the network learns "devices, therefore no pneumothorax" and misses
                 pneumothoraces drawn with devices. Group: ``(y = 1, devices)``.
``rare``         rare-slice undertraining. A cardiomegaly classifier trained with
                 ``R(1, lateral) = |D(1, lateral)| / |D(1)| = 0.02``: almost no enlarged heart
                 seen from the side, so it misses them. Group: ``(y = 1, lateral)``.
``noisy``        noisy labels. A finding classifier (any of pneumothorax, cardiomegaly,
                 effusion) trained with 30% of the positive frontal labels flipped to
                 negative. Group: ``(y = 1, frontal)``.

A null version of each (``rho = 0``; the lateral share of positives equal to that of
negatives; no flipped labels) trains the same classifier without the planted bias.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from agent.simulate.images import Case

__all__ = [
    "MODES",
    "FailureMode",
    "Strengths",
    "cell_shares",
    "flip_labels",
    "held_out_cells",
    "split_counts",
    "training_cells",
]


@dataclass(frozen=True)
class Strengths:
    """The paper's strengths of the three biases, and the class balance of training sets.

    Parameters
    ----------
    rho
        Correlation between the negative class and support devices (correlation mode).
    rarity
        Share of lateral views among the positives (rare mode).
    noise_rate
        Share of positive frontal training labels flipped to negative (noisy mode).
    lateral_share
        Share of lateral views among negatives, and among positives in the null rare mode.
    device_share
        Share of cases with devices in the correlation mode's training sets.
    positive_share
        Share of positives in every training set.
    """

    rho: float = 0.7
    rarity: float = 0.02
    noise_rate: float = 0.3
    lateral_share: float = 0.25
    device_share: float = 0.5
    positive_share: float = 0.5


@dataclass(frozen=True)
class FailureMode:
    """One failure mode: the classifier, the error attribute and the planted group."""

    key: str
    title: str
    model: str
    attribute: str
    group: tuple[int, int]
    words: frozenset[str]
    target: Callable[[Case], bool]
    has_attribute: Callable[[Case], bool]

    def strength(self, strengths: Strengths) -> str:
        """The strength of this mode's bias, written as the paper writes it."""
        return {
            "correlation": f"rho = {strengths.rho:g}",
            "rare": f"R(1, lateral) = {strengths.rarity:g}",
            "noisy": f"noise rate = {strengths.noise_rate:g}",
        }[self.key]


#: Words that name support devices in reports (the correlation mode's attribute).
DEVICE_WORDS = frozenset(
    {
        "tube", "tubes", "line", "lines", "drain", "catheter", "catheters", "pacemaker", "device",
        "devices", "leads", "picc", "endotracheal", "intubated", "nasogastric", "enteric", "feeding",
        "thoracostomy", "pigtail", "jugular", "subclavian", "venous", "central", "generator", "svc",
        "cavoatrial", "sternotomy", "wires", "stent", "stents", "clips",
    }
)  # fmt: skip

MODES: tuple[FailureMode, ...] = (
    FailureMode(
        key="correlation",
        title="Spurious correlation",
        model="pneumothorax",
        attribute="support devices",
        group=(1, 1),
        words=DEVICE_WORDS,
        target=lambda c: c.pneumothorax is not None,
        has_attribute=lambda c: c.has_devices,
    ),
    FailureMode(
        key="rare",
        title="Rare slice",
        model="cardiomegaly",
        attribute="lateral view",
        group=(1, 1),
        words=frozenset({"lateral"}),
        target=lambda c: c.cardiomegaly,
        has_attribute=lambda c: c.lateral,
    ),
    FailureMode(
        key="noisy",
        title="Noisy labels",
        model="finding",
        attribute="frontal view",
        group=(1, 1),
        words=frozenset({"frontal", "portable", "bedside", "posteroanterior", "anteroposterior"}),
        target=lambda c: c.finding,
        has_attribute=lambda c: c.frontal,
    ),
)


def split_counts(total: int, shares: dict[tuple[int, int], float]) -> dict[tuple[int, int], int]:
    """Integer counts summing to ``total`` in the given shares (largest remainders)."""
    raw = {k: total * v for k, v in shares.items()}
    counts = {k: math.floor(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: raw[k] - counts[k], reverse=True)[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


def cell_shares(mode: FailureMode, strengths: Strengths, *, biased: bool) -> dict[tuple[int, int], float]:
    """The share of each ``(y, attr)`` cell in the mode's training distribution.

    Examples
    --------
    >>> shares = cell_shares(MODES[1], Strengths(), biased=True)
    >>> round(shares[(1, 1)] / (shares[(1, 1)] + shares[(1, 0)]), 3)
    0.02
    """
    p1 = strengths.positive_share
    if mode.key == "correlation":
        p0, q = 1.0 - p1, strengths.device_share
        rho = strengths.rho if biased else 0.0
        joint = p0 * q + rho * math.sqrt(p0 * (1 - p0) * q * (1 - q))  # P(y = 0, devices)
        if not 0.0 <= joint <= min(p0, q):
            raise ValueError(f"rho = {rho} is not reachable with these shares; lower rho")
        return {(0, 1): joint, (0, 0): p0 - joint, (1, 1): q - joint, (1, 0): 1 - p0 - q + joint}
    if mode.key == "rare":
        lat = strengths.lateral_share
        rarity = strengths.rarity if biased else lat
        return {
            (0, 1): (1 - p1) * lat,
            (0, 0): (1 - p1) * (1 - lat),
            (1, 1): p1 * rarity,
            (1, 0): p1 * (1 - rarity),
        }
    frontal = 1.0 - strengths.lateral_share
    return {
        (0, 1): (1 - p1) * frontal,
        (0, 0): (1 - p1) * (1 - frontal),
        (1, 1): p1 * frontal,
        (1, 0): p1 * (1 - frontal),
    }


def training_cells(
    mode: FailureMode, n: int, strengths: Strengths, *, biased: bool
) -> dict[tuple[int, int], int]:
    """How many training cases of each ``(y, attr)`` cell the mode draws.

    Examples
    --------
    >>> training_cells(MODES[0], 1000, Strengths(), biased=True)
    {(0, 1): 425, (0, 0): 75, (1, 1): 75, (1, 0): 425}
    >>> training_cells(MODES[1], 1000, Strengths(), biased=True)[(1, 1)]
    10
    """
    return split_counts(n, cell_shares(mode, strengths, biased=biased))


def held_out_cells(
    mode: FailureMode, n: int, group_share: float, strengths: Strengths
) -> dict[tuple[int, int], int]:
    """A test set's cells: the planted group at ``group_share``, the rest as in biased training.

    The paper resamples test sets "keeping the error strength and the underperforming proportion
    fixed": the other cells keep the training distribution's proportions among themselves.

    >>> held_out_cells(MODES[0], 300, 0.2, Strengths())
    {(1, 1): 60, (0, 1): 110, (0, 0): 20, (1, 0): 110}
    """
    shares = cell_shares(mode, strengths, biased=True)
    group = round(group_share * n)
    rest = {cell: share for cell, share in shares.items() if cell != mode.group}
    total = sum(rest.values())
    return {mode.group: group, **split_counts(n - group, {c: v / total for c, v in rest.items()})}


def flip_labels(
    labels: np.ndarray, in_group: np.ndarray, rate: float, rng: np.random.Generator
) -> np.ndarray:
    """Labels with a ``rate`` share of the group's labels flipped (exactly, rounded), chosen at random."""
    out = np.asarray(labels).copy()
    rows = np.flatnonzero(in_group)
    chosen = rng.choice(rows, size=round(rate * len(rows)), replace=False)
    out[chosen] = 1 - out[chosen]
    return out
