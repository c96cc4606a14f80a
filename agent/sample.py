"""A labeled study as the audit sees it, and an input that could not be used."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agent.events import ClassLabel

__all__ = ["Problem", "Sample"]


@dataclass(frozen=True)
class Sample:
    """One study as the audit sees it: prediction, confirmed label, and whatever text or image came."""

    study_uid: str
    model: str
    prediction: ClassLabel
    label: ClassLabel
    timestamp: datetime
    score: float | None = None
    report: str | None = None
    metadata: dict[str, Any] | None = None
    image: str | None = None
    event_id: str = ""
    image_key: str | None = None
    """Cache key of the image's vector, once embedded: refits read it instead of the file."""


@dataclass(frozen=True)
class Problem:
    """An input that was not used, where it came from, and why (``reason`` is bounded)."""

    where: str
    reason: str
    message: str
