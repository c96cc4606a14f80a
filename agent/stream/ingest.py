"""The edge of the stream: raw messages become the store's inputs, decoded or with their reason."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from agent.config import EventSettings
from agent.errors import EventError
from agent.events import decode_event
from agent.store import Incoming

__all__ = ["Message", "decode_messages"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Message:
    """One raw input and where it came from.

    ``source`` is unique per input and stable across re-deliveries: ``topic:partition:offset``
    for Kafka, ``replay:FILE:LINE`` for a replayed file.
    """

    source: str
    value: bytes | None


def decode_messages(
    messages: Iterable[Message],
    *,
    max_report_chars: int = 20_000,
    naive: str = "utc",
    limits: EventSettings | None = None,
) -> list[Incoming]:
    """Decode each message; one that breaks the contract keeps its reason instead of an event.

    Examples
    --------
    >>> [i.reason for i in decode_messages([Message("t:0:0", b"{"), Message("t:0:1", None)])]
    ['invalid_json', 'invalid_json']
    """
    out: list[Incoming] = []
    for message in messages:
        raw = message.value
        if raw is None or not raw.strip():
            out.append(Incoming(message.source, b"", reason="invalid_json", message="empty message"))
            continue
        try:
            event = decode_event(raw, max_report_chars=max_report_chars, naive=naive, limits=limits)
        except EventError as err:
            out.append(Incoming(message.source, raw, reason=err.reason, message=str(err)))
            continue
        except Exception as err:  # the edge must never stop the stream; the input is kept
            log.warning("input at %s could not be decoded: %s", message.source, type(err).__name__)
            out.append(Incoming(message.source, raw, reason="unprocessable", message=repr(err)))
            continue
        out.append(Incoming(message.source, raw, event=event))
    return out
