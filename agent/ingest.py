"""Read a JSONL event file into typed events and numbered problems (the batch shell's edge)."""

from __future__ import annotations

from pathlib import Path

from agent.errors import EventError
from agent.events import Event, decode_event
from agent.sample import Problem

__all__ = ["read_jsonl"]


def read_jsonl(
    path: str | Path, *, max_report_chars: int = 20_000
) -> tuple[list[tuple[str, Event]], list[Problem]]:
    """Decode every non-blank line; a bad line becomes a problem naming its line number."""
    events: list[tuple[str, Event]] = []
    problems: list[Problem] = []
    with Path(path).open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"line {number}"
            try:
                events.append((where, decode_event(line, max_report_chars=max_report_chars)))
            except EventError as err:
                problems.append(Problem(where, err.reason, str(err)))
    return events, problems
