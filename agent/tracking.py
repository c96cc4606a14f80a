"""Slices across refits: stable ids, and when a slice is emerging or resolved.

Each refit of a sliding window finds its slices afresh, with members and ids of its own. The
:class:`SliceTracker` says which of them are the same failure as before, so that a slice keeps one
id for as long as it lasts, and decides its state:

``candidate``
    significant, but for fewer than ``emerging_after`` consecutive refits;
``emerging``
    significant for ``emerging_after`` consecutive refits; it stays emerging through a single
    refit that misses it, until it has been missing for ``resolve_after`` consecutive refits;
``resolved``
    was emerging and has faded: not found significant for ``resolve_after`` consecutive refits.
    A resolved slice that comes back keeps its id and starts again as a candidate.

Matching rule. A new slice is the same as a tracked one when their members overlap: the overlap
coefficient ``|A & B| / min(|A|, |B|)`` of the new members and the tracked members still in the
window is at least ``min_overlap``. (Not the Jaccard index: a refit often finds the core of a
failure one time and the failure with its surroundings the next, and those are one slice.) When
too few of a tracked slice's members are still in the window to measure overlap (the window has
turned over), the slice is matched by centroid instead: the cosine distance between the mean
embeddings is at most ``max_distance``. Pairs are taken greedily, best overlap first, then
smallest distance; each tracked slice takes at most one new slice. A new slice that matches
nothing starts a track under the id its refit gave it.

Pure: no I/O; the state round-trips through :meth:`SliceTracker.to_state` as plain JSON types.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

__all__ = ["SliceObservation", "SliceTracker", "Track", "TrackStatus"]

TrackStatus = Literal["candidate", "emerging", "resolved"]


@dataclass(frozen=True)
class SliceObservation:
    """One slice found by one refit.

    Parameters
    ----------
    id
        The id the refit gave it; becomes the track id when the slice is new.
    members
        The study uids in the slice.
    significant
        Whether the refit found it significantly worse than the rest.
    centroid
        Optional mean embedding of the members, in a space that does not change between refits
        (not the refit's own PCA space).
    """

    id: str
    members: frozenset[str]
    significant: bool = True
    centroid: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Track:
    """What the tracker knows about one slice."""

    id: str
    status: TrackStatus
    streak: int
    """Consecutive refits in which the slice was found significant (0 after a miss)."""
    misses: int
    """Consecutive refits in which it was not."""
    first_seen: int
    last_seen: int
    members: frozenset[str]
    centroid: tuple[float, ...] | None = None

    @property
    def age(self) -> int:
        """Refits since the slice was first seen, counting that one."""
        return self.last_seen - self.first_seen + 1


def _overlap(a: frozenset[str], b: frozenset[str]) -> float:
    smaller = min(len(a), len(b))
    return len(a & b) / smaller if smaller else 0.0


def _cosine_distance(a: Sequence[float], b: Sequence[float]) -> float:
    if len(a) != len(b):
        return math.inf
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    if na == 0 or nb == 0:
        return math.inf
    return 1.0 - dot / (na * nb)


class SliceTracker:
    """Gives the slices of successive refits stable ids and an emerging / resolved state.

    Parameters
    ----------
    emerging_after
        Consecutive significant refits before a slice is ``emerging`` (M).
    resolve_after
        Consecutive refits without it before an emerging slice is ``resolved``.
    min_overlap
        Overlap coefficient of members (those still in the window) that matches two slices.
    max_distance
        Cosine distance between centroids that matches two slices when overlap cannot be measured.
    min_members
        A tracked slice with fewer members left in the window than this is matched by centroid.
    forget_after
        Refits after which a track that is not seen any more is dropped (bounded memory).

    Examples
    --------
    >>> tracker = SliceTracker(emerging_after=2)
    >>> a = frozenset(f"s{i}" for i in range(20))
    >>> tracker.update([SliceObservation("s-1", a)])
    >>> tracker.tracks[0].status
    'candidate'
    >>> tracker.update([SliceObservation("s-2", a | {"s99"})])  # same members: same slice
    >>> tracker.assignments, tracker.emerged
    (('s-1',), ('s-1',))
    >>> tracker.update([]); tracker.update([])
    >>> tracker.resolved, tracker.tracks[0].status
    (('s-1',), 'resolved')
    """

    def __init__(
        self,
        *,
        emerging_after: int = 3,
        resolve_after: int = 2,
        min_overlap: float = 0.5,
        max_distance: float = 0.05,
        min_members: int = 5,
        forget_after: int = 20,
    ) -> None:
        self.emerging_after = emerging_after
        self.resolve_after = resolve_after
        self.min_overlap = min_overlap
        self.max_distance = max_distance
        self.min_members = min_members
        self.forget_after = forget_after
        self._reset()

    def _reset(self) -> None:
        self._tracks: dict[str, Track] = {}
        self._n_updates = 0
        self._assignments: tuple[str, ...] = ()
        self._emerged: tuple[str, ...] = ()
        self._resolved: tuple[str, ...] = ()

    def _check(self) -> None:
        if self.emerging_after < 1 or self.resolve_after < 1:
            raise ValueError(
                f"expected emerging_after and resolve_after >= 1, got {self.emerging_after} "
                f"and {self.resolve_after}"
            )
        if not 0 < self.min_overlap <= 1:
            raise ValueError(f"expected 0 < min_overlap <= 1, got {self.min_overlap}")

    @property
    def tracks(self) -> tuple[Track, ...]:
        """Every slice tracked now, emerging first, then by first sighting."""
        order = {"emerging": 0, "candidate": 1, "resolved": 2}
        return tuple(sorted(self._tracks.values(), key=lambda t: (order[t.status], t.first_seen, t.id)))

    @property
    def n_updates(self) -> int:
        """Refits seen so far."""
        return self._n_updates

    @property
    def assignments(self) -> tuple[str, ...]:
        """The track id of each observation of the last update, in its order."""
        return self._assignments

    @property
    def emerged(self) -> tuple[str, ...]:
        """Ids that became emerging in the last update."""
        return self._emerged

    @property
    def resolved(self) -> tuple[str, ...]:
        """Ids that became resolved in the last update."""
        return self._resolved

    def get(self, track_id: str) -> Track | None:
        """The track with this id, if tracked."""
        return self._tracks.get(track_id)

    def update(self, observations: Sequence[SliceObservation], window: Collection[str] | None = None) -> None:
        """Take one refit's slices.

        Parameters
        ----------
        observations
            The refit's slices (significant or not); not modified.
        window
            The study uids in the refit's window; tracked members outside it are ignored when
            measuring overlap. None when every tracked member is still present.
        """
        self._check()
        self._n_updates += 1
        now = self._n_updates
        present = frozenset(window) if window is not None else None
        pairs: list[tuple[int, float, float, int, str]] = []
        for i, obs in enumerate(observations):
            for tid, track in self._tracks.items():
                kept = track.members & present if present is not None else track.members
                if len(kept) >= self.min_members:
                    overlap = _overlap(obs.members, kept)
                    if overlap >= self.min_overlap:
                        pairs.append((0, -overlap, 0.0, i, tid))
                elif obs.centroid is not None and track.centroid is not None:
                    distance = _cosine_distance(obs.centroid, track.centroid)
                    if distance <= self.max_distance:
                        pairs.append((1, 0.0, distance, i, tid))
        pairs.sort()
        matched: dict[int, str] = {}
        taken: set[str] = set()
        for _, _, _, i, tid in pairs:
            if i in matched or tid in taken:
                continue
            matched[i] = tid
            taken.add(tid)

        emerged: list[str] = []
        resolved: list[str] = []
        assignments: list[str] = []
        for i, obs in enumerate(observations):
            if i in matched:
                tid = matched[i]
                track = self._tracks[tid]
            else:
                tid = obs.id
                while tid in self._tracks:
                    tid = f"{tid}'"
                track = Track(tid, "candidate", 0, 0, now, now, obs.members, obs.centroid)
            assignments.append(tid)
            if obs.significant:
                streak = track.streak + 1
                status: TrackStatus = track.status
                if status == "resolved":
                    status = "candidate"
                if status == "candidate" and streak >= self.emerging_after:
                    status = "emerging"
                    emerged.append(tid)
                self._tracks[tid] = replace(
                    track,
                    status=status,
                    streak=streak,
                    misses=0,
                    last_seen=now,
                    members=obs.members,
                    centroid=obs.centroid if obs.centroid is not None else track.centroid,
                )
            else:
                self._tracks[tid] = self._missed(track, resolved)
        for tid in set(self._tracks) - set(assignments):
            self._tracks[tid] = self._missed(self._tracks[tid], resolved)
        for tid in [t for t, track in self._tracks.items() if track.misses >= self.forget_after]:
            del self._tracks[tid]
        self._assignments = tuple(assignments)
        self._emerged = tuple(emerged)
        self._resolved = tuple(resolved)

    def _missed(self, track: Track, resolved: list[str]) -> Track:
        misses = track.misses + 1
        status = track.status
        if status == "emerging" and misses >= self.resolve_after:
            status = "resolved"
            resolved.append(track.id)
        return replace(track, status=status, streak=0, misses=misses)

    def to_state(self) -> dict[str, Any]:
        """The tracker's state as JSON-ready types (parameters are not included)."""
        return {
            "n_updates": self._n_updates,
            "tracks": [
                {
                    "id": t.id,
                    "status": t.status,
                    "streak": t.streak,
                    "misses": t.misses,
                    "first_seen": t.first_seen,
                    "last_seen": t.last_seen,
                    "members": sorted(t.members),
                    "centroid": list(t.centroid) if t.centroid is not None else None,
                }
                for t in self.tracks
            ],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any] | None, **params: Any) -> SliceTracker:
        """A tracker with ``params`` that continues from a state saved by :meth:`to_state`."""
        tracker = cls(**params)
        if not state:
            return tracker
        tracker._n_updates = int(state.get("n_updates", 0))
        for t in state.get("tracks", []):
            centroid = t.get("centroid")
            tracker._tracks[t["id"]] = Track(
                id=t["id"],
                status=t["status"],
                streak=int(t["streak"]),
                misses=int(t["misses"]),
                first_seen=int(t["first_seen"]),
                last_seen=int(t["last_seen"]),
                members=frozenset(t["members"]),
                centroid=tuple(float(x) for x in centroid) if centroid is not None else None,
            )
        return tracker
