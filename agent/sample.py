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
    series_uid: str | None = None
    image_uid: str | None = None
    """Series and SOP Instance UIDs of the image on the PACS (fetched by UID, with the study's)."""

    @property
    def pacs_uids(self) -> tuple[str, str, str] | None:
        """(study, series, instance) UIDs of an image to fetch from the PACS, when the event named one."""
        if self.series_uid and self.image_uid:
            return self.study_uid, self.series_uid, self.image_uid
        return None

    @property
    def has_image(self) -> bool:
        """Whether the case has an image: a file path, or UIDs on the PACS."""
        return bool(self.image) or self.pacs_uids is not None


@dataclass(frozen=True)
class Problem:
    """An input that was not used, where it came from, and why (``reason`` is bounded)."""

    where: str
    reason: str
    message: str
