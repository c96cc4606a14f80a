"""What a refit leaves behind to recognise its slices in new, unlabeled cases.

The fusion of the refit (per-modality normalisation, then its PCA mean and basis, float32) and,
per reported slice, the diagonal Gaussian mixture of the fold that found it (every component's
means, variances and weight) with the slice's component. A case belongs to a slice when it lies
in the component's *territory* as discovery defines it (:mod:`agent.slicing.significance`): the
component's membership, from the embedding alone, is at least ``beta`` times the case's largest.
Discovery also used the label to form the territory and kept the members of one class; new cases
have no label, so the rule covers the region of the space the slice lies in, whatever the class.

New cases are assigned when they are embedded on arrival, before any report: the *live view*
drops the report modality (a zero block, as for any case that lacks a modality). Everything the
tests compare against (each slice's window share, its error and score in the window, the
calibrations) is measured on the window in the same live view, so that a case in the window
and a new case alike are judged on what is known at inference time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from agent.audit import FitView
from agent.config import WarnSettings
from agent.events import ClassLabel
from agent.fuse import project
from agent.slicing.mixture import diag_gaussian_log_prob
from agent.warn.calibrate import Calibration

__all__ = ["LIVE_MODALITIES", "KnownSlice", "SliceSpace", "describe_fit"]

#: The modalities an inference carries when it arrives (a report comes later).
LIVE_MODALITIES = ("image", "metadata")

_F32 = np.dtype("<f4")


@dataclass(frozen=True)
class KnownSlice:
    """One reported slice as the early warning knows it."""

    id: str
    rank: int
    component: int
    means: np.ndarray
    variances: np.ndarray
    weights: np.ndarray
    """The fold's mixture: ``(k, d)``, ``(k, d)`` and ``(k,)``."""
    window_inside: int
    window_n: int
    error_rate: float
    """Error rate of the window's cases inside (by the rule, live view)."""
    score_mean: float | None
    calibration: Calibration | None
    """Fitted on the window's cases inside when there are enough; else the space's applies."""

    @property
    def window_share(self) -> float:
        """Share of the labeled window inside the slice."""
        return self.window_inside / self.window_n if self.window_n else 0.0


@dataclass(frozen=True)
class SliceSpace:
    """The fused space of one refit and the slices it reported."""

    model: str
    target: ClassLabel
    number: int
    modalities: tuple[str, ...]
    widths: tuple[int, ...]
    center: np.ndarray
    basis: np.ndarray
    slices: tuple[KnownSlice, ...]
    calibration: Calibration
    window_n: int
    window_error_rate: float
    beta: float
    """Territory threshold, relative to a case's most probable component."""

    def fuse(self, blocks: Mapping[str, np.ndarray], n: int) -> np.ndarray:
        """``(n, k)`` fused rows of new cases in the live view (absent or late modalities: NaN)."""
        arrays = []
        for modality, width in zip(self.modalities, self.widths, strict=True):
            block = blocks.get(modality) if modality in LIVE_MODALITIES else None
            if block is None or block.shape != (n, width):
                block = np.full((n, width), np.nan, dtype=np.float32)
            arrays.append(block)
        return project(arrays, self.center, self.basis)

    def assign(self, fused: np.ndarray) -> np.ndarray:
        """``(n, slices)`` boolean: which slices' territories each row is in."""
        rows = np.asarray(fused, dtype=np.float64)
        out = np.zeros((len(rows), len(self.slices)), dtype=bool)
        for j, s in enumerate(self.slices):
            out[:, j] = _territory(rows, s, self.beta)
        return out

    def error_probabilities(
        self, scores: np.ndarray, predicted_target: np.ndarray, inside: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """P(error) of each case by the space's calibration ``(n,)``, and by each slice's own
        (or the space's where the slice has none) ``(n, slices)``."""
        overall = self.calibration.predict(scores, predicted_target)
        per = np.repeat(overall[:, None], len(self.slices), axis=1)
        for j, s in enumerate(self.slices):
            if s.calibration is not None and inside[:, j].any():
                rows = inside[:, j]
                per[rows, j] = s.calibration.predict(scores[rows], predicted_target[rows])
        return overall, per

    # -- storage -------------------------------------------------------------------------------

    def to_record(self) -> tuple[str, bytes, bytes, bytes]:
        """``(document, center, basis, densities)`` as the store keeps them."""
        document = {
            "model": self.model,
            "target": self.target,
            "number": self.number,
            "modalities": list(self.modalities),
            "widths": list(self.widths),
            "k": int(self.basis.shape[1]),
            "calibration": self.calibration.to_dict(),
            "window_n": self.window_n,
            "window_error_rate": self.window_error_rate,
            "beta": self.beta,
            "slices": [
                {
                    "id": s.id,
                    "rank": s.rank,
                    "component": s.component,
                    "weights": [float(w) for w in s.weights],
                    "window_inside": s.window_inside,
                    "window_n": s.window_n,
                    "error_rate": s.error_rate,
                    "score_mean": s.score_mean,
                    "calibration": None if s.calibration is None else s.calibration.to_dict(),
                }
                for s in self.slices
            ],
        }
        k = self.basis.shape[1]
        parts = [np.concatenate([s.means, s.variances], axis=1) for s in self.slices]
        densities = np.concatenate(parts) if parts else np.zeros((0, 2 * k))
        return (
            json.dumps(document, sort_keys=True),
            np.ascontiguousarray(self.center, dtype=_F32).tobytes(),
            np.ascontiguousarray(self.basis, dtype=_F32).tobytes(),
            np.ascontiguousarray(densities, dtype=_F32).tobytes(),
        )

    @classmethod
    def from_record(cls, document: str, center: bytes, basis: bytes, densities: bytes) -> SliceSpace:
        """The inverse of :meth:`to_record`."""
        doc = json.loads(document)
        k = int(doc["k"])
        width = sum(doc["widths"])
        dens = np.frombuffer(densities, dtype=_F32).reshape(-1, 2 * k).astype(np.float64)
        slices = []
        at = 0
        for s in doc["slices"]:
            m = len(s["weights"])
            block = dens[at : at + m]
            at += m
            slices.append(
                KnownSlice(
                    id=str(s["id"]),
                    rank=int(s["rank"]),
                    component=int(s["component"]),
                    means=block[:, :k],
                    variances=block[:, k:],
                    weights=np.array(s["weights"], dtype=np.float64),
                    window_inside=int(s["window_inside"]),
                    window_n=int(s["window_n"]),
                    error_rate=float(s["error_rate"]),
                    score_mean=None if s["score_mean"] is None else float(s["score_mean"]),
                    calibration=None if s["calibration"] is None else Calibration.from_dict(s["calibration"]),
                )
            )
        return cls(
            model=str(doc["model"]),
            target=doc["target"],
            number=int(doc["number"]),
            modalities=tuple(doc["modalities"]),
            widths=tuple(int(w) for w in doc["widths"]),
            center=np.frombuffer(center, dtype=_F32).copy(),
            basis=np.frombuffer(basis, dtype=_F32).reshape(width, k).copy(),
            slices=tuple(slices),
            calibration=Calibration.from_dict(doc["calibration"]),
            window_n=int(doc["window_n"]),
            window_error_rate=float(doc["window_error_rate"]),
            beta=float(doc["beta"]),
        )


def _territory(rows: np.ndarray, s: KnownSlice, beta: float) -> np.ndarray:
    """Whether each row's membership of the slice's component, from the embedding alone, is at
    least ``beta`` times its largest membership (float32 parameters stored, float64 arithmetic)."""
    joint = diag_gaussian_log_prob(rows, s.means, s.variances) + np.log(np.maximum(s.weights, 1e-300))
    return np.asarray(joint[:, s.component] - joint.max(axis=1) >= np.log(beta))


def _scores(samples: Sequence[Any]) -> np.ndarray:
    return np.array([np.nan if s.score is None else float(s.score) for s in samples], dtype=np.float64)


def describe_fit(
    view: FitView, ids: Sequence[str], number: int, settings: WarnSettings, *, beta: float
) -> SliceSpace | None:
    """The description of one refit's reported slices (``ids``: their tracked ids, in report
    order; ``beta``: the audit's territory threshold); None when the fit kept no transform, no
    slice has a mixture, or no modality is known at inference time."""
    fused = view.fused
    if fused.basis is None or not view.slices:
        return None
    if not any(m in LIVE_MODALITIES for m in fused.modalities):
        return None
    samples = view.samples
    n = len(samples)
    target = view.target
    err = np.array([(s.label == target) != (s.prediction == target) for s in samples], dtype=np.float64)
    side = np.array([s.prediction == target for s in samples], dtype=bool)
    scores = _scores(samples)
    space = SliceSpace(
        model=samples[0].model,
        target=target,
        number=number,
        modalities=fused.modalities,
        widths=tuple(int(view.blocks[m].shape[1]) for m in fused.modalities),
        center=fused.basis.centre,
        basis=fused.basis.axes,
        slices=(),
        calibration=Calibration.fit(scores, side, err),
        window_n=n,
        window_error_rate=float(err.mean()) if n else 0.0,
        beta=beta,
    )
    live = np.asarray(space.fuse(view.blocks, n), dtype=np.float64)
    known: list[KnownSlice] = []
    for result, finding, tracked in zip(view.slices, view.findings, ids, strict=True):
        if finding.mixture is None or finding.mixture_component is None:
            continue
        component = finding.mixture_component
        # Rounded to float32 here as the store keeps them: the window counts what new cases will meet.
        means, variances, weights = (np.asarray(a, dtype=_F32).astype(np.float64) for a in finding.mixture)
        probe = KnownSlice(tracked, result.rank, component, means, variances, weights, 0, n, 0, None, None)
        inside = _territory(live, probe, beta)
        calibration = (
            Calibration.fit(scores[inside], side[inside], err[inside])
            if inside.sum() >= settings.min_calibration_labels
            else None
        )
        scored = scores[inside][np.isfinite(scores[inside])]
        known.append(
            replace(
                probe,
                window_inside=int(inside.sum()),
                error_rate=float(err[inside].mean()) if inside.any() else 0.0,
                score_mean=float(scored.mean()) if len(scored) else None,
                calibration=calibration,
            )
        )
    if not known:
        return None
    return replace(space, slices=tuple(known))
