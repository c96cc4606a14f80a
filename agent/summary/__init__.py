"""The weekly drift summary: one self-contained HTML page, and Markdown with PNG files.

Inputs are plain data, so the batch CLI and the streaming agent feed it the same way:

- the slice reports of the week, each with the time it was made (:class:`TimedReport`);
- optionally, drift events (:class:`DriftEvent`) found by the stream's detector;
- optionally, per modality, the embeddings of the previous and of this week, compared by a
  kernel two-sample statistic (MMD) against a permutation threshold
  (:func:`agent.drift.embedding.embedding_drift`); the agent keeps them in its store
  (:func:`agent.drift.weekly.weekly_samples`);
- optionally, thumbnails of slice members, where images exist (:func:`member_thumbnails`); off
  unless ``SummarySettings.thumbnails`` is set, read only through the image access boundary, and
  each image is first checked on its pixels for burned-in text (:func:`burned_in_text`), whatever
  its ``BurnedInAnnotation`` tag says.

The parts, by concern: :mod:`~agent.summary.data` (inputs, and :func:`build_summary`, which keeps
the week's reports and computes the figures' data), :mod:`~agent.summary.thumbnails` (member
images), :mod:`~agent.summary.plots` (the PNG plots) and :mod:`~agent.summary.render`
(:func:`write_summary`: ``summary.html`` with the plots inlined as base64, and ``summary.md`` next
to the PNG files).

What the summary shows is aggregate: model and class names, counts, rates, p-values and scrubbed
tokens (re-checked to be lower-case words), read from each report's export form
(:meth:`~agent.report.SliceReport.for_export`). It never shows a study uid, a slice id, report text,
header values or a calendar date of a case: the week is named by its ISO week and days by their
weekday.
"""

from __future__ import annotations

from agent.drift.embedding import EmbeddingDrift, embedding_drift
from agent.summary.data import (
    DriftEvent,
    SliceKey,
    TimedReport,
    WeeklySummary,
    build_summary,
    read_report,
    read_reports,
)
from agent.summary.render import SummaryFiles, render_html, render_markdown, write_summary
from agent.summary.thumbnails import burned_in_text, member_thumbnails
from agent.weeks import iso_week, previous_week

__all__ = [
    "DriftEvent",
    "EmbeddingDrift",
    "SliceKey",
    "SummaryFiles",
    "TimedReport",
    "WeeklySummary",
    "build_summary",
    "burned_in_text",
    "embedding_drift",
    "iso_week",
    "member_thumbnails",
    "previous_week",
    "read_report",
    "read_reports",
    "render_html",
    "render_markdown",
    "write_summary",
]
