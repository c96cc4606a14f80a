"""A file drop: a folder of ``.hl7`` and ``.json`` messages converted to a JSONL file of v1 events.

Each file is converted on its own; a malformed one becomes a dead-letter line (its name and the
reason, never its content) and, for HL7, its NAK is written next to the events as ``NAME.ack``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import EventError
from agent.messages.fhir import diagnostic_report_events, observation_label_events
from agent.messages.hl7v2 import ack, oru_report_events
from agent.messages.labels import LabelMapping, csv_label_events

__all__ = ["DropResult", "convert_folder"]

log = logging.getLogger(__name__)


@dataclass
class DropResult:
    """What a pass over the folder did."""

    events: int = 0
    files: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)


def _events_of(
    path: Path, labels: LabelMapping | None, accessions: Mapping[str, str] | None
) -> tuple[list[dict[str, object]], list[EventError]]:
    """A file's events, and the errors of its rows that are not (a CSV's rows stand alone: one
    bad row loses no other); a file unreadable as a whole raises."""
    raw = path.read_bytes()
    if path.suffix == ".hl7":
        return oru_report_events(raw, accessions=accessions), []
    if path.suffix == ".json":
        kind = json.loads(raw).get("resourceType") if raw.strip().startswith(b"{") else None
        if kind == "Observation" or (
            kind == "Bundle" and b'"Observation"' in raw and b'"DiagnosticReport"' not in raw
        ):
            if labels is None:
                raise EventError("an Observation needs a label mapping (--labels)", reason="unmapped_code")
            return list(observation_label_events(raw, labels, accessions=accessions)), []
        return diagnostic_report_events(raw, accessions=accessions), []
    if labels is None:
        raise EventError("a CSV of labels needs a label mapping (--labels)", reason="unmapped_code")
    # utf-8-sig: a spreadsheet's export starts with a byte-order mark, which is not part of the header.
    rows = list(csv_label_events(raw.decode("utf-8-sig"), labels, accessions=accessions))
    return [r for r in rows if isinstance(r, dict)], [r for r in rows if isinstance(r, EventError)]


def convert_folder(
    folder: Path,
    out: Path,
    dead_letters: Path,
    *,
    labels: LabelMapping | None = None,
    accessions: Mapping[str, str] | None = None,
    acks: Path | None = None,
) -> DropResult:
    """Convert every ``.hl7``, ``.json`` and ``.csv`` file of ``folder`` (sorted by name), appending."""
    result = DropResult()
    with out.open("a", encoding="utf-8") as sink, dead_letters.open("a", encoding="utf-8") as dead:
        for path in sorted(
            p for p in folder.iterdir() if p.is_file() and p.suffix in (".hl7", ".json", ".csv")
        ):
            result.files += 1
            error: EventError | None = None
            rows: list[EventError] = []
            try:
                events, rows = _events_of(path, labels, accessions)
            except EventError as err:
                error, events = err, []
            except Exception as err:  # a file from outside (csv.Error, RecursionError, ...): not the batch
                error, events = (
                    EventError(f"cannot read the message ({type(err).__name__})", reason="unprocessable"),
                    [],
                )
            for event in events:
                sink.write(json.dumps(event, ensure_ascii=False) + "\n")
            result.events += len(events)
            for bad in [error] if error is not None else rows:
                result.dead_letters[bad.reason] = result.dead_letters.get(bad.reason, 0) + 1
                dead.write(json.dumps({"file": path.name, "reason": bad.reason, "error": str(bad)}) + "\n")
                log.debug("dead-lettered %s: %s", path.name, bad.reason)
            if acks is not None and path.suffix == ".hl7":
                (acks / f"{path.name}.ack").write_text(ack(path.read_bytes(), error), encoding="utf-8")
    return result
