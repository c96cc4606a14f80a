"""Replay mode: the streaming agent fed from a JSONL file, with no broker.

Each batch of lines goes through the same :class:`~agent.stream.sidecar.Sidecar` as a batch of
Kafka messages, and the line reached is stored with the batch, so a replay interrupted at any point
resumes where its durable state ends. Dead letters go to a JSONL file; refits run when due (every
``refit_every_labels`` labels or ``refit_every_seconds``) and once more at the end of the file for
every model with labels its last refit did not see, so a replay always ends with current reports.
After every batch the early warning runs as on the live sidecar's timer (share tests of the
buckets completed, estimates), and once more at the end, when everything has been embedded.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agent.config import EventSettings
from agent.ingest import bounded_lines
from agent.paths import open_private
from agent.store import Store
from agent.stream.ingest import Message, decode_messages
from agent.stream.refit import RefitOutcome
from agent.stream.sidecar import Sidecar

__all__ = ["ReplaySummary", "load_file", "replay_file", "write_dead_letters"]

log = logging.getLogger(__name__)


@dataclass
class ReplaySummary:
    """What one replay did (this run only; the store's counters hold the totals)."""

    lines: int = 0
    skipped: int = 0
    accepted: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    joined: int = 0
    refits: list[RefitOutcome] = field(default_factory=list)
    warnings: int = 0
    """Early warnings raised (buckets in which a slice's share rose significantly)."""


def write_dead_letters(store: Store, path: Path) -> int:
    """Append the store's undelivered dead letters to a JSONL file; returns how many.

    Each line holds ``source``, ``reason``, ``message`` and the input as ``raw`` text. The file is
    synced before the letters are marked delivered: a crash in between repeats them, never loses them.
    """
    written = 0
    while letters := store.unsent_dead_letters():
        with open_private(path, "a") as fh:
            for letter in letters:
                record = {
                    "source": letter.source,
                    "reason": letter.reason,
                    "message": letter.message,
                    "raw": (letter.raw or b"").decode("utf-8", errors="replace"),
                }
                fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        store.mark_dead_letters_sent([letter.id for letter in letters])
        written += len(letters)
    return written


def _batches(path: Path, start: int, size: int, limit: int = 2**20) -> Iterator[tuple[list[Message], int]]:
    """Batches of (message, next line number) from line ``start + 1`` on (blank lines skipped);
    no line is read into memory beyond ``limit + 1`` bytes."""
    batch: list[Message] = []
    number = 0
    with path.open("rb") as fh:
        for number, line in enumerate(bounded_lines(fh, limit), start=1):
            if number <= start:
                continue
            stripped = line.rstrip(b"\r\n")
            if stripped.strip():
                batch.append(Message(f"replay:{path.name}:{number}", stripped))
            if len(batch) >= size:
                yield batch, number
                batch = []
    if batch or number > start:
        yield batch, number


def load_file(
    path: str | Path,
    store: Store,
    *,
    batch_size: int = 500,
    max_report_chars: int = 20_000,
    naive: str = "utc",
    limits: EventSettings | None = None,
) -> ReplaySummary:
    """Apply a whole JSONL event file to a store (``slice-agent audit``'s way in: the same decoding and
    the same join as the streaming agent), then settle what still waits for a partner."""
    path = Path(path)
    summary = ReplaySummary()
    limit = (limits or EventSettings()).max_message_bytes
    for messages, _ in _batches(path, 0, batch_size, limit):
        incoming = decode_messages(messages, max_report_chars=max_report_chars, naive=naive, limits=limits)
        result = store.apply(incoming, maintain=True)
        summary.lines += len(messages)
        summary.accepted.update(result.accepted)
        summary.dead_lettered.update(result.dead_lettered)
        summary.duplicates += result.duplicates
        summary.joined += len(result.joined)
    summary.dead_lettered.update(store.settle().dead_lettered)
    return summary


def replay_file(path: str | Path, sidecar: Sidecar, *, final_refit: bool = True) -> ReplaySummary:
    """Feed a JSONL event file through the agent, resuming where an earlier replay of it stopped."""
    path = Path(path)
    dead_letter_path = sidecar.settings.stream.dead_letter_path
    key = f"replay:{path.resolve()}"
    done = sidecar.store.position(key)
    summary = ReplaySummary(skipped=done)
    if done:
        log.info("resuming the replay of %s after line %d", path.name, done)
    limit = sidecar.settings.events.max_message_bytes
    for messages, reached in _batches(path, done, sidecar.settings.stream.batch_size, limit):
        result = sidecar.ingest(messages, position=(key, reached), maintain=True)
        summary.lines += len(messages)
        summary.accepted.update(result.accepted)
        summary.dead_lettered.update(result.dead_lettered)
        summary.duplicates += result.duplicates
        summary.joined += len(result.joined)
        write_dead_letters(sidecar.store, dead_letter_path)
        for model in sidecar.due_models():
            summary.refits += sidecar.refit(model)
        summary.warnings += _watch(sidecar)
    if final_refit:
        for model in sidecar.store.models():
            if sidecar.store.labels_since_refit(model):
                summary.refits += sidecar.refit(model, trigger="end of replay")
    # what the arrival worker has not embedded yet is embedded here, so that the early warning
    # tests every bucket the file completed
    sidecar.arrival.drain()
    summary.warnings += _watch(sidecar)
    sidecar.watch_embeddings(force=True)
    write_dead_letters(sidecar.store, dead_letter_path)
    return summary


def _watch(sidecar: Sidecar) -> int:
    """Run the early warning as the live sidecar's refresh does; returns the warnings it raised."""
    return sum(state.new_warnings for state in sidecar.watch())
