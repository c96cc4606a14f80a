"""Warm refits: what one refit of a stream leaves for the next, and why the held-out test stays honest.

A refit of a sliding window fits a PCA basis and, per cross-fitting fold, an error-aware mixture.
The next window shares most of its cases, so the next refit starts from them:

- the **basis** (centre and axes) is reused as it is, unless it has served ``refresh_refits``
  refits or no longer captures the window's variance (:func:`agent.fuse.fuse`'s drift check);
- each fold's **mixture** starts EM from the last refit's mixture of the same fold, when the basis
  is the one those parameters live in and the number of components and dimensions is unchanged;
  otherwise it starts cold (a warm fold checks its convergence in the pass that computes the
  memberships: :meth:`~agent.slicing.ErrorAwareMixture.fit_memberships`);
- each **modality's own space** keeps the same (its basis and fold mixtures) under its name;
- the **projections** of the last window's cases on each basis (:class:`~agent.fuse.Projected`)
  are kept in memory, so that only new or changed cases are projected.

**Why the test stays honest.** A case's fold is a hash of its study id and the audit seed
(:func:`stable_folds`), so it is the same in every refit. The mixture of fold ``f`` is fitted on
the cases outside fold ``f`` and tested on those inside; its warm start is the mixture of fold
``f`` of the refit before, itself fitted on cases outside fold ``f`` and started from the one
before. By induction no fit in that chain ever saw the label or the prediction of a case of fold
``f``, so the start carries nothing about the cases the test is run on. The basis is fitted on
embeddings alone, never on labels or predictions (as in a cold refit, where it is fitted on the
whole window). Whatever reached the test therefore depends on the held-out cases only through
their embeddings and labels, the same as in a cold refit, and under the null (errors independent
of the embedding within a class) the held-out errors are independent of the chosen territory.
``tests/unit/test_warm.py`` checks this on null streams refitted warm many times.
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from agent.fuse import Basis, Fused, Projected, fuse
from agent.hashing import mix64
from agent.slicing import ErrorAwareMixture, Slicer
from agent.slicing.mixture import MixtureParams

__all__ = ["WarmStart", "WarmState", "stable_folds"]

log = logging.getLogger(__name__)

_PARAMS = ("weights", "means", "variances", "y_probs", "y_pred_probs")


def stable_folds(keys: Sequence[str], n_splits: int, seed: int) -> np.ndarray:
    """Each case's fold from a hash of its key and the seed: the same in every refit, whatever
    else is in the window.

    The keys' code points are weighted by position (weights drawn from the seed), summed and
    mixed, all in numpy: a window of 50,000 keys takes milliseconds, not a Python loop of hashes.

    >>> folds = stable_folds(["a", "b", "c"], 2, 0)
    >>> folds.tolist() == stable_folds(["c", "a", "b", "a-much-longer-key"], 2, 0)[[1, 2, 0]].tolist()
    True
    """
    if not len(keys):
        return np.zeros(0, dtype=np.intp)
    codes = np.array(keys, dtype=str)
    width = codes.dtype.itemsize // 4
    points = codes.view(np.uint32).reshape(len(keys), width).astype(np.uint64)
    offset = np.uint64(seed % 2**32) << np.uint64(32)
    weights = mix64(np.arange(1, width + 1, dtype=np.uint64) + offset) | np.uint64(1)
    with np.errstate(over="ignore"):
        hashed = mix64((points * weights).sum(axis=1, dtype=np.uint64))
    return (hashed % np.uint64(n_splits)).astype(np.intp)


@dataclass(frozen=True)
class WarmState:
    """A refit's basis and its folds' mixtures; ``age`` counts the refits that reused the basis.

    ``spaces`` holds the same for each modality's own space (its own basis and mixtures), by
    modality name. ``projected``, the window's cases on the basis
    (:class:`~agent.fuse.Projected`), lives in memory only: it is not saved, and a state read back
    starts without it (the next fusion then projects every case once).
    """

    basis: Basis
    mixtures: dict[int, MixtureParams] = field(default_factory=dict)
    age: int = 0
    projected: Projected | None = field(default=None, compare=False, repr=False)
    spaces: dict[str, WarmState] = field(default_factory=dict)

    def with_projections_of(self, other: WarmState | None) -> WarmState:
        """This state with ``other``'s projections (and its spaces'), where they lie on the same basis.

        A worker keeps its last refit's state in memory and reads the shared one from the
        store: the projections carry over only if no other worker refitted the basis since.
        """
        if other is None:
            return self
        spaces = {name: sub.with_projections_of(other.spaces.get(name)) for name, sub in self.spaces.items()}
        projected = self.projected
        if projected is None and other.projected is not None and self.basis.same_as(other.projected.basis):
            projected = other.projected
        return replace(self, projected=projected, spaces=spaces)

    def to_bytes(self) -> bytes:
        """An ``.npz`` of float32 arrays and JSON strings (no pickles)."""
        arrays: dict[str, Any] = {}
        self._arrays("", arrays)
        for name, sub in self.spaces.items():
            sub._arrays(f"{name}/", arrays)
        out = io.BytesIO()
        np.savez(out, **arrays)
        return out.getvalue()

    def _arrays(self, prefix: str, arrays: dict[str, Any]) -> None:
        b = self.basis
        meta = {"modalities": b.modalities, "widths": b.widths, "explained": b.explained, "age": self.age}
        if not prefix:
            meta["spaces"] = sorted(self.spaces)
        arrays[f"{prefix}meta"] = np.array(json.dumps(meta))
        arrays[f"{prefix}centre"] = np.asarray(b.centre, dtype=np.float32)
        arrays[f"{prefix}axes"] = np.asarray(b.axes, dtype=np.float32)
        for fold, params in self.mixtures.items():
            for name in _PARAMS:
                arrays[f"{prefix}{fold}.{name}"] = np.asarray(getattr(params, name), dtype=np.float32)

    @classmethod
    def from_bytes(cls, data: bytes | None) -> WarmState | None:
        """The state saved by :meth:`to_bytes`; None (a cold start) when absent or unreadable."""
        if not data:
            return None
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as f:
                files = {k: f[k] for k in f.files}
            state, meta = cls._read("", files)
            spaces = {str(name): cls._read(f"{name}/", files)[0] for name in meta.get("spaces", [])}
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as err:
            log.warning("warm state unreadable, refitting cold: %s", err)
            return None
        return replace(state, spaces=spaces)

    @classmethod
    def _read(cls, prefix: str, files: dict[str, np.ndarray]) -> tuple[WarmState, dict[str, Any]]:
        meta = json.loads(str(files[f"{prefix}meta"]))
        basis = Basis(
            files[f"{prefix}centre"],
            files[f"{prefix}axes"],
            tuple(meta["modalities"]),
            tuple(int(w) for w in meta["widths"]),
            float(meta["explained"]),
        )
        own = [k[len(prefix) :] for k in files if k.startswith(prefix) and "/" not in k[len(prefix) :]]
        folds = sorted({int(k.split(".")[0]) for k in own if "." in k})
        mixtures = {
            fold: MixtureParams(*(files[f"{prefix}{fold}.{name}"] for name in _PARAMS)) for fold in folds
        }
        return cls(basis, mixtures, int(meta["age"])), meta


class WarmStart:
    """What one refit starts from (``previous``) and, once it ran, what it leaves (``current``).

    The refit fuses through :meth:`fuse` and makes the fused space's slicers through
    :meth:`slicers`; each modality's own space does the same through its :meth:`space`.

    Parameters
    ----------
    previous
        The last refit's state, or None for a cold start.
    refresh_refits
        Refits one basis serves at most (the one that fitted it included); 1 never reuses it.
    max_drift
        Relative loss of captured variance beyond which the basis is fitted again.
    remember
        Whether this refit keeps its cases' projections for the next (``current.projected``).
    """

    def __init__(
        self,
        previous: WarmState | None,
        *,
        refresh_refits: int = 10,
        max_drift: float = 0.05,
        remember: bool = True,
    ) -> None:
        # The last refit's projections and spaces are taken out of its state: each is let go as
        # soon as the fusion that reads it is done, so a refit never holds two windows of them
        # (the caller drops its own reference to ``previous``).
        self.previous = None if previous is None else replace(previous, projected=None, spaces={})
        self._projected = None if previous is None else previous.projected
        self._last_spaces = {} if previous is None else dict(previous.spaces)
        self.refresh_refits = refresh_refits
        self.max_drift = max_drift
        self.remember = remember
        self.current: WarmState | None = None
        self.warm_folds: tuple[int, ...] = ()
        self._slicers: dict[int, Slicer] = {}
        self._fused: Fused | None = None
        self._spaces: dict[str, WarmStart] = {}

    def basis(self) -> Basis | None:
        """The basis to offer :func:`~agent.fuse.fuse`: the last one, unless it is due a refresh."""
        p = self.previous
        return p.basis if p is not None and p.age + 1 < self.refresh_refits else None

    def projected(self) -> Projected | None:
        """The last refit's cases on the basis :meth:`basis` offers, when it kept them."""
        return None if self.basis() is None else self._projected

    def fuse(self, blocks: Mapping[str, np.ndarray], *, n_components: int, random_state: int) -> Fused:
        """:func:`~agent.fuse.fuse` from the last refit's basis and projections, kept for :meth:`finish`."""
        fused = fuse(
            blocks,
            n_components=n_components,
            random_state=random_state,
            basis=self.basis(),
            max_drift=self.max_drift,
            projected=self.projected(),
            remember=self.remember,
        )
        self._projected = None  # read: let go
        self._fused = fused
        return fused

    def space(self, name: str) -> WarmStart:
        """The warm start of the space named ``name`` (a modality's own), from its last state."""
        if name not in self._spaces:
            last = self._last_spaces.pop(name, None)
            self._spaces[name] = WarmStart(
                last, refresh_refits=self.refresh_refits, max_drift=self.max_drift, remember=self.remember
            )
        return self._spaces[name]

    def slicers(
        self, make: Callable[[int, MixtureParams | None], Slicer], seed: int
    ) -> Callable[[int], Slicer]:
        """A slicer factory for :func:`~agent.slicing.discover_slices` (seed ``seed + fold``): fold
        ``f`` starts from the last refit's fold ``f`` when :meth:`fuse` reused its basis."""
        reused = self._fused is not None and self._fused.reused
        starts = self.previous.mixtures if reused and self.previous is not None else {}

        def build(fold_seed: int) -> Slicer:
            fold = fold_seed - seed
            slicer = make(fold_seed, starts.get(fold))
            self._slicers[fold] = slicer
            return slicer

        return build

    def finish(self) -> None:
        """Keep this refit's basis and fitted mixtures (and each space's) as ``current``."""
        for sub in self._spaces.values():
            sub.finish()
        fused = self._fused
        if fused is None or fused.basis is None:
            return
        mixtures: dict[int, MixtureParams] = {}
        warm: list[int] = []
        for fold, slicer in sorted(self._slicers.items()):
            if isinstance(slicer, ErrorAwareMixture) and hasattr(slicer, "means_"):
                mixtures[fold] = MixtureParams.of(slicer)
                if slicer.warm_started_:
                    warm.append(fold)
        self.warm_folds = tuple(warm)
        age = self.previous.age + 1 if fused.reused and self.previous is not None else 0
        spaces = {name: sub.current for name, sub in self._spaces.items() if sub.current is not None}
        self.current = WarmState(fused.basis, mixtures, age, fused.projected, spaces)

    def describe(self) -> dict[str, object]:
        """What this refit reused, for its report (and each space's, by name)."""
        fused = self._fused
        out: dict[str, object] = {
            "basis": "reused" if fused is not None and fused.reused else "fitted",
            "warm_folds": list(self.warm_folds),
            "cases_remembered": 0 if fused is None else fused.remembered,
        }
        if self._spaces:
            out["spaces"] = {name: sub.describe() for name, sub in sorted(self._spaces.items())}
        return out
