"""What a refit leaves behind to recognise its slices in new, unlabeled cases.

The fusion of the refit (per-modality normalisation, then its PCA mean and basis, float32) and,
per reported slice, its mixture component's diagonal Gaussian in that space. A case belongs to a
slice when its log density under the slice's Gaussian is at least the ``member_quantile`` of the
log densities of the slice's members in the window. The rule reads the embedding only: no label
and no prediction, which new cases do not have (the slice's members were chosen with their
labels; the rule covers the region of the space they lie in, whatever the new cases' labels).

New cases are assigned when they are embedded on arrival, before any report: the *live view*
drops the report modality (a zero block, as for any case that lacks a modality). Everything the
tests compare against (each slice's window share, its density cut, its error and score in the
window, the calibrations) is measured on the window in the same live view, so that a case in
the window and a new case alike are judged on what is known at inference time.
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
    mean: np.ndarray
    variances: np.ndarray
    weight: float
    threshold: float
    """Log-density cut: a case at or above it is in the slice."""
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

    def fuse(self, blocks: Mapping[str, np.ndarray], n: int) -> np.ndarray:
        """``(n, k)`` fused rows of new cases in the live view (absent or late modalities: NaN)."""
        arrays = []
        for modality, width in zip(self.modalities, self.widths, strict=True):
            block = blocks.get(modality) if modality in LIVE_MODALITIES else None
            if block is None or block.shape != (n, width):
                block = np.full((n, width), np.nan, dtype=np.float32)
            arrays.append(block)
        return project(arrays, self.center, self.basis)

    def log_densities(self, fused: np.ndarray) -> np.ndarray:
        """``(n, slices)`` log density of each row under each slice's Gaussian."""
        if not self.slices:
            return np.empty((len(fused), 0))
        means = np.stack([s.mean for s in self.slices]).astype(np.float64)
        variances = np.stack([s.variances for s in self.slices]).astype(np.float64)
        return diag_gaussian_log_prob(np.asarray(fused, dtype=np.float64), means, variances)

    def assign(self, fused: np.ndarray) -> np.ndarray:
        """``(n, slices)`` boolean: which slices each row is in."""
        cuts = np.array([s.threshold for s in self.slices])
        return self.log_densities(fused) >= cuts[None, :]

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
            "slices": [
                {
                    "id": s.id,
                    "rank": s.rank,
                    "weight": s.weight,
                    "threshold": s.threshold,
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
        dens = np.stack([np.concatenate([s.mean, s.variances]) for s in self.slices]) if self.slices else None
        densities = np.zeros((0, 2 * k), dtype=_F32) if dens is None else dens.astype(_F32)
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
        slices = tuple(
            KnownSlice(
                id=str(s["id"]),
                rank=int(s["rank"]),
                mean=dens[j, :k],
                variances=dens[j, k:],
                weight=float(s["weight"]),
                threshold=float(s["threshold"]),
                window_inside=int(s["window_inside"]),
                window_n=int(s["window_n"]),
                error_rate=float(s["error_rate"]),
                score_mean=None if s["score_mean"] is None else float(s["score_mean"]),
                calibration=None if s["calibration"] is None else Calibration.from_dict(s["calibration"]),
            )
            for j, s in enumerate(doc["slices"])
        )
        return cls(
            model=str(doc["model"]),
            target=doc["target"],
            number=int(doc["number"]),
            modalities=tuple(doc["modalities"]),
            widths=tuple(int(w) for w in doc["widths"]),
            center=np.frombuffer(center, dtype=_F32).copy(),
            basis=np.frombuffer(basis, dtype=_F32).reshape(width, k).copy(),
            slices=slices,
            calibration=Calibration.from_dict(doc["calibration"]),
            window_n=int(doc["window_n"]),
            window_error_rate=float(doc["window_error_rate"]),
        )


def _scores(samples: Sequence[Any]) -> np.ndarray:
    return np.array([np.nan if s.score is None else float(s.score) for s in samples], dtype=np.float64)


def describe_fit(view: FitView, ids: Sequence[str], number: int, settings: WarnSettings) -> SliceSpace | None:
    """The description of one refit's reported slices (``ids``: their tracked ids, in report
    order); None when the fit kept no transform or no slice has a Gaussian, or no modality is
    known at inference time."""
    fused = view.fused
    if fused.center is None or fused.basis is None or not view.slices:
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
        center=fused.center,
        basis=fused.basis,
        slices=(),
        calibration=Calibration.fit(scores, side, err),
        window_n=n,
        window_error_rate=float(err.mean()) if n else 0.0,
    )
    live = np.asarray(space.fuse(view.blocks, n), dtype=np.float64)
    known: list[KnownSlice] = []
    for result, finding, tracked in zip(view.slices, view.findings, ids, strict=True):
        if finding.density is None:
            continue
        mean, variances, weight = finding.density
        dens = diag_gaussian_log_prob(live, mean[None, :], variances[None, :])[:, 0]
        cut = float(np.quantile(dens[finding.members], settings.member_quantile))
        inside = dens >= cut
        calibration = (
            Calibration.fit(scores[inside], side[inside], err[inside])
            if inside.sum() >= settings.min_calibration_labels
            else None
        )
        scored = scores[inside][np.isfinite(scores[inside])]
        known.append(
            KnownSlice(
                id=tracked,
                rank=result.rank,
                mean=mean,
                variances=variances,
                weight=weight,
                threshold=cut,
                window_inside=int(inside.sum()),
                window_n=n,
                error_rate=float(err[inside].mean()) if inside.any() else 0.0,
                score_mean=float(scored.mean()) if len(scored) else None,
                calibration=calibration,
            )
        )
    if not known:
        return None
    return replace(space, slices=tuple(known))
