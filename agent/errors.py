"""One error hierarchy for the whole agent.

Each error also derives from the built-in it resembles, so callers that do not know the
agent can still catch ``ValueError`` or ``FileNotFoundError``. Messages say what was
expected, what was found, and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "PACS_REASONS",
    "AgentError",
    "ConfigError",
    "DicomError",
    "EmbedderError",
    "EventError",
    "FitError",
    "ImageRefusedError",
    "ModelFilesMissingError",
    "NotFittedError",
]

#: Every reason a fetch from the PACS can fail for; bounded, so it can be a metric label.
PACS_REASONS = (
    "pacs_not_configured",
    "pacs_unavailable",
    "pacs_timeout",
    "pacs_not_found",
    "pacs_unauthorized",
    "pacs_bad_response",
    "pacs_gave_up",
)


class AgentError(Exception):
    """Base class of every error the agent raises on purpose."""


class ConfigError(AgentError, ValueError):
    """A setting is missing, malformed or inconsistent."""


class EventError(AgentError, ValueError):
    """An event does not follow the v1 contract.

    ``reason`` is a short, bounded machine-readable code (used as a metric label and in
    dead-letter records); the message is for people.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class DicomError(AgentError, ValueError):
    """A DICOM file cannot be read or has no usable pixel data."""


class ImageRefusedError(DicomError):
    """An image file is outside the configured roots, not a regular file, or over a limit.

    ``reason`` is always ``"image_refused"`` and the message is the same for every cause, so that
    a refusal never tells whether the file exists.
    """

    def __init__(self, message: str, *, reason: str = "image_refused") -> None:
        super().__init__(message)
        self.reason = reason


class EmbedderError(AgentError, RuntimeError):
    """An embedding model cannot be built or run."""


class ModelFilesMissingError(EmbedderError, FileNotFoundError):
    """Model weights or tokenizer files are not on disk; nothing is downloaded at run time."""


class FitError(AgentError, ValueError):
    """A slicer cannot be fitted on the data it was given."""


class NotFittedError(FitError, AttributeError):
    """A slicer was asked to predict before it was fitted (scikit-learn's ``NotFittedError`` bases)."""
