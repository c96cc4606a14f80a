"""ISO weeks, the unit of the weekly summary and of the embedding samples (UTC)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from agent.errors import AgentError

__all__ = ["iso_week", "previous_week", "week_of"]


def iso_week(week: str) -> tuple[datetime, datetime]:
    """The UTC start (Monday 00:00) and end (next Monday 00:00) of an ISO week such as ``2026-W48``.

    >>> start, end = iso_week("2026-W48")
    >>> start.isoformat(), (end - start).days
    ('2026-11-23T00:00:00+00:00', 7)
    """
    try:
        year, number = week.upper().split("-W")
        monday = date.fromisocalendar(int(year), int(number), 1)
    except ValueError as err:
        raise AgentError(f"expected an ISO week such as 2026-W48, got {week!r}") from err
    start = datetime(monday.year, monday.month, monday.day, tzinfo=UTC)
    return start, start + timedelta(days=7)


def week_of(at: datetime | float) -> str:
    """The ISO week of a time (a datetime, naive read as UTC, or Unix seconds).

    >>> week_of(datetime(2026, 11, 29, 23, 59, tzinfo=UTC)), week_of(datetime(2027, 1, 1, tzinfo=UTC))
    ('2026-W48', '2026-W53')
    """
    if not isinstance(at, datetime):
        at = datetime.fromtimestamp(float(at), UTC)
    elif at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    year, number, _ = at.astimezone(UTC).isocalendar()
    return f"{year}-W{number:02d}"


def previous_week(week: str) -> str:
    """The ISO week before ``week``.

    >>> previous_week("2027-W01")
    '2026-W53'
    """
    start, _ = iso_week(week)
    return week_of(start - timedelta(days=7))
