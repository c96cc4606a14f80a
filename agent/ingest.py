"""Read a JSONL event file into typed events and numbered problems (the batch shell's edge)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from agent.config import EventSettings
from agent.errors import EventError
from agent.events import Event, decode_event
from agent.sample import Problem

__all__ = ["bounded_lines", "read_jsonl"]


def bounded_lines(fh: BinaryIO, limit: int) -> Iterator[bytes]:
    """The file's lines, none held longer than ``limit + 1`` bytes: a longer line gives its first
    ``limit + 1`` bytes (which the decoder refuses as ``oversized_event``) and the rest is skipped.

    >>> import io
    >>> [len(x) for x in bounded_lines(io.BytesIO(b"ab\\n" + b"x" * 5000 + b"\\ncd"), 1024)]
    [3, 1025, 2]
    """
    while line := fh.readline(limit + 1):
        if len(line) > limit and not line.endswith(b"\n"):
            while (rest := fh.readline(limit + 1)) and not rest.endswith(b"\n"):
                pass
        yield line


def read_jsonl(
    path: str | Path, *, max_report_chars: int = 20_000, limits: EventSettings | None = None
) -> tuple[list[tuple[str, Event]], list[Problem]]:
    """Decode every non-blank line; a bad line becomes a problem naming its line number. No line
    is read into memory beyond ``events.max_message_bytes`` (``limits``) and a byte."""
    limits = limits if limits is not None else EventSettings()
    events: list[tuple[str, Event]] = []
    problems: list[Problem] = []
    with Path(path).open("rb") as fh:
        for number, line in enumerate(bounded_lines(fh, limits.max_message_bytes), start=1):
            if not line.strip():
                continue
            where = f"line {number}"
            try:
                events.append((where, decode_event(line, max_report_chars=max_report_chars, limits=limits)))
            except EventError as err:
                problems.append(Problem(where, err.reason, str(err)))
    return events, problems
