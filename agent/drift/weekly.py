"""Embedding drift from the stream: weekly samples of the arrival embedder's vectors, compared.

:class:`EmbeddingSampler` takes every batch the arrival embedder embedded (inferences: image and
metadata; reports: report) and offers each case's vector to the store's sample of its model,
modality and ISO week (event time; :mod:`agent.store.samples`). :func:`weekly_drift` compares, per
modality, the newest week holding enough embeddings with the week before it
(:func:`~agent.drift.embedding.embedding_drift`), which the sidecar exports as gauges on a slow
timer; :func:`weekly_samples` hands the weekly summary the same two samples.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import timedelta

import numpy as np

from agent.config import SummarySettings
from agent.drift.embedding import EmbeddingDrift, embedding_drift
from agent.sample import Sample
from agent.store import EmbeddedCase, Store
from agent.weeks import iso_week, previous_week, week_of

__all__ = ["EmbeddingSampler", "weekly_drift", "weekly_samples"]

log = logging.getLogger(__name__)


class EmbeddingSampler:
    """Keeps the weekly embedding samples (``summary.embedding_samples`` per model, modality, week).

    Parameters
    ----------
    store
        Where the samples are kept.
    settings
        The ``summary`` section (sample size).
    """

    def __init__(self, store: Store, settings: SummarySettings) -> None:
        self.store = store
        self.settings = settings
        self.kept = 0

    def observe(self, samples: Sequence[Sample], blocks: Mapping[str, np.ndarray]) -> int:
        """Offer embedded cases (rows of ``blocks`` aligned with ``samples``; NaN rows, a missing
        modality, are skipped) to their week's samples; returns how many were kept."""
        weeks = [week_of(s.timestamp) for s in samples]
        cases = [
            EmbeddedCase(s.model, modality, weeks[i], s.study_uid, block[i])
            for modality, block in sorted(blocks.items())
            for i, s in enumerate(samples)
            if np.all(np.isfinite(block[i]))
        ]
        kept = self.store.record_embedding_samples(cases, self.settings.embedding_samples)
        self.kept += kept
        return kept


def weekly_samples(store: Store, week: str, size: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per modality with a sample in both, the previous week's and ``week``'s embeddings."""
    before = previous_week(week)
    held = store.embedding_sample_keys()
    modalities = sorted({m for w, m in held if w == week} & {m for w, m in held if w == before})
    return {
        m: (store.embedding_sample(m, before, size), store.embedding_sample(m, week, size))
        for m in modalities
    }


def weekly_drift(store: Store, settings: SummarySettings) -> list[tuple[str, EmbeddingDrift]]:
    """Per modality, the newest week (of the newest event time seen) with at least
    ``drift_min_samples`` embeddings, or else the week before it, against its previous week;
    ``(week, drift)`` pairs. Samples older than ``embedding_weeks`` are dropped on the way."""
    marks = store.watermarks()
    if not marks:
        return []
    week = week_of(max(marks.values()))
    start, _ = iso_week(week)
    store.prune_embedding_samples(week_of(start - timedelta(days=7 * (settings.embedding_weeks - 1))))
    size, least = settings.drift_max_samples, settings.drift_min_samples
    out = []
    held = store.embedding_sample_keys()
    for modality in sorted({m for _, m in held}):
        for current in (week, previous_week(week)):
            before = previous_week(current)
            cur = store.embedding_sample(modality, current, size)
            if len(cur) < least:
                continue
            prev = store.embedding_sample(modality, before, size)
            if len(prev) >= least and prev.shape[1] == cur.shape[1]:
                drift = embedding_drift(
                    prev,
                    cur,
                    modality=modality,
                    alpha=settings.drift_alpha,
                    n_permutations=settings.drift_permutations,
                    max_samples=size,
                    seed=settings.seed,
                )
                out.append((current, drift))
                log.info(
                    "embedding drift of %s from %s to %s: MMD2 %.4g against threshold %.4g (%d / %d cases)",
                    modality,
                    before,
                    current,
                    drift.mmd2,
                    drift.threshold,
                    drift.n_previous,
                    drift.n_current,
                )
            break
    return out
