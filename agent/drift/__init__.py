"""Drift, with and without labels.

- :mod:`~agent.drift.errors`: the error rate per (model, class) on confirmed labels (river's ADWIN).
- :mod:`~agent.drift.embedding`: week-over-week shift of one modality's embeddings (MMD² against a
  permutation threshold), no labels needed.
- :mod:`~agent.drift.weekly`: the weekly embedding samples the agent keeps from the stream, and the
  comparison of the newest weeks (what the agent exports and the weekly summary shows).
"""

from __future__ import annotations

from agent.drift.embedding import EmbeddingDrift, embedding_drift
from agent.drift.errors import DriftMonitor, DriftSignal, ErrorRateDrift

__all__ = ["DriftMonitor", "DriftSignal", "EmbeddingDrift", "ErrorRateDrift", "embedding_drift"]
