"""An MLLP listener for HL7 v2 ORU^R01 reports: each message becomes report events on the report topic.

MLLP frames a message as ``0x0b`` *message* ``0x1c 0x0d``. For each frame the listener converts the
message (:func:`agent.messages.hl7v2.oru_report_events`), produces its events to the report topic
keyed by study (as ``slice-agent publish`` does), waits for the broker to acknowledge them, and only
then answers:

- ``AA``: the events are on the topic (a message with no final result gives none, and an AA);
- ``AE``: the message was read but cannot be used (no report text, unknown study...); it is
  dead-lettered with its reason;
- ``AR``: the message is unreadable (dead-lettered too), over ``mllp.max_message_bytes``, or the
  broker did not take its events in time (nothing is dead-lettered: the sender sends it again).

A dead letter names the reason and where the message came from, never its content. The listener
binds to ``mllp.host`` (loopback by default).
"""

from __future__ import annotations

import json
import logging
import socket
import socketserver
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.config import MllpSettings, StreamSettings
from agent.errors import AgentError, EventError
from agent.messages.hl7v2 import ack, oru_report_events
from agent.stream.topics import TopicError, message_key

__all__ = ["END", "START", "MllpListener", "ack_code", "frame", "read_frames"]

log = logging.getLogger(__name__)

START = b"\x0b"
END = b"\x1c\x0d"


def frame(message: bytes) -> bytes:
    """``message`` in an MLLP frame.

    >>> frame(b"MSH|...")
    b'\\x0bMSH|...\\x1c\\r'
    """
    return START + message + END


class FrameTooLarge(AgentError, ValueError):
    """A frame grew past ``mllp.max_message_bytes`` before its end."""


def read_frames(recv: Callable[[int], bytes], limit: int) -> Iterator[bytes]:
    """The messages of the MLLP frames read with ``recv`` until the peer closes; bytes outside a
    frame are skipped. :class:`FrameTooLarge` when a frame passes ``limit`` bytes.

    >>> chunks = iter([b"noise\\x0bMSH|1\\x1c", b"\\r\\x0bMSH|2\\x1c\\r", b""])
    >>> list(read_frames(lambda n: next(chunks), 100))
    [b'MSH|1', b'MSH|2']
    """
    buffer = bytearray()
    while True:
        chunk = recv(65536)
        if not chunk:
            return
        buffer += chunk
        while True:
            start = buffer.find(START)
            if start < 0:
                buffer.clear()
                break
            end = buffer.find(END, start + 1)
            if end < 0:
                if len(buffer) - start > limit:
                    raise FrameTooLarge(f"expected an MLLP frame of at most {limit} bytes, got more")
                del buffer[:start]
                break
            if end - start - 1 > limit:
                raise FrameTooLarge(f"expected an MLLP frame of at most {limit} bytes, got more")
            yield bytes(buffer[start + 1 : end])
            del buffer[: end + len(END)]


def ack_code(answer: str) -> str:
    """The acknowledgement code (MSA-1) of an ACK.

    >>> ack_code("MSH|^~&|A|B|C|D|20261129||ACK|1|P|2.5.1" + chr(13) + "MSA|AE|M1|no text")
    'AE'
    """
    msa = next((s for s in answer.split("\r") if s.startswith("MSA")), "")
    return msa[4:6]


@dataclass
class ListenerCounts:
    """What the listener answered, by code, and dead-lettered, by reason."""

    answers: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)


class MllpListener:
    """Listen for ORU^R01 messages over MLLP and produce their report events.

    Parameters
    ----------
    settings
        The ``mllp`` section: address, limits, accession mapping.
    stream
        The ``stream`` section: broker, report and dead-letter topics.
    producer
        A ``kafka.KafkaProducer`` (default: one for ``stream.bootstrap_servers``, all replicas
        acknowledging).
    accessions
        Accession number to Study Instance UID, for reports keyed by accession.
    """

    def __init__(
        self,
        settings: MllpSettings,
        stream: StreamSettings,
        *,
        producer: Any = None,
        accessions: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.stream = stream
        self.accessions = accessions
        self.counts = ListenerCounts()
        self._lock = threading.Lock()
        self._sequence = 0
        if producer is None:
            from kafka import KafkaProducer
            from kafka.errors import KafkaError

            try:
                producer = KafkaProducer(
                    bootstrap_servers=stream.bootstrap_servers.split(","),
                    client_id="slice-agent-mllp",
                    acks="all",
                    retries=5,
                    max_in_flight_requests_per_connection=1,
                )
            except KafkaError as err:
                raise TopicError(f"cannot reach the broker at {stream.bootstrap_servers}: {err}") from err
        self.producer = producer
        self._server = self._make_server()

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) listened on."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def _make_server(self) -> socketserver.ThreadingTCPServer:
        listener = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                listener._serve(self.request, f"{self.client_address[0]}:{self.client_address[1]}")

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        return Server((self.settings.host, self.settings.port), Handler)

    def serve_forever(self) -> None:
        """Answer messages until :meth:`shutdown` (blocking)."""
        host, port = self.address
        log.info("MLLP listener on %s:%d, reports to topic %s", host, port, self.stream.report_topic)
        self._server.serve_forever(poll_interval=0.5)

    def shutdown(self) -> None:
        """Stop listening, and flush and close the producer."""
        self._server.shutdown()
        self._server.server_close()
        self.producer.flush(timeout=self.settings.publish_timeout_seconds)
        self.producer.close(timeout=self.settings.publish_timeout_seconds)

    def _serve(self, conn: socket.socket, peer: str) -> None:
        conn.settimeout(self.settings.idle_timeout_seconds)
        try:
            for message in read_frames(conn.recv, self.settings.max_message_bytes):
                conn.sendall(frame(self._answer(message).encode("utf-8")))
        except FrameTooLarge as err:
            self._count("AR")
            conn.sendall(frame(ack(b"", EventError(str(err), reason="oversized_event")).encode("utf-8")))
            log.warning("MLLP frame from %s refused: over mllp.max_message_bytes", peer)
        except (TimeoutError, OSError) as err:
            log.debug("MLLP connection from %s closed (%s)", peer, type(err).__name__)

    def _answer(self, message: bytes) -> str:
        """:meth:`handle`, and an AR for a message whose handling failed in a way nothing foresaw:
        the sender is answered (an HL7 engine resends until it is), the connection stays open for
        the next message, and the failure is counted and dead-lettered."""
        try:
            return self.handle(message)
        except Exception as err:  # the message came from outside: no failure of it ends the connection
            # The type only: an error's text may quote the message. The traceback at DEBUG.
            log.error("MLLP message not handled (%s); answered AR", type(err).__name__)
            log.debug("MLLP message not handled", exc_info=True)
            what = type(err).__name__
            refused = EventError(f"the message could not be handled ({what})", reason="unprocessable")
            self._dead_letter(refused)
            self._count("AR")
            return ack(b"", refused, reject=True)

    def handle(self, message: bytes) -> str:
        """Convert, produce and acknowledge one message; returns the ACK (ER7 text)."""
        try:
            events = oru_report_events(message, accessions=self.accessions)
        except EventError as err:
            answer = ack(message, err)
            self._dead_letter(err)
            self._count(ack_code(answer))
            return answer
        try:
            pending = [
                self.producer.send(
                    self.stream.report_topic,
                    key=message_key(event),
                    value=json.dumps(event, ensure_ascii=False).encode("utf-8"),
                )
                for event in events
            ]
            for future in pending:
                future.get(timeout=self.settings.publish_timeout_seconds)
        except Exception as err:  # kafka-python raises its own types; the sender retries on AR
            log.warning("report events not taken by the broker (%s); answered AR", type(err).__name__)
            self._count("AR")
            error = EventError(
                "the report topic did not take the events; send the message again", reason="unprocessable"
            )
            return ack(message, error, reject=True)
        self._count("AA")
        return ack(message)

    def _count(self, code: str) -> None:
        with self._lock:
            self.counts.answers[code] += 1

    def _dead_letter(self, error: EventError) -> None:
        with self._lock:
            self._sequence += 1
            self.counts.dead_letters[error.reason] += 1
            source = f"mllp:{self._sequence}"
        record = {"source": source, "reason": error.reason, "message": str(error), "raw": ""}
        try:
            self.producer.send(
                self.stream.dead_letter_topic,
                key=error.reason.encode("utf-8"),
                value=json.dumps(record).encode("utf-8"),
                headers=[("reason", error.reason.encode("utf-8"))],
            ).get(timeout=self.settings.publish_timeout_seconds)
        except Exception as err:  # the NAK still goes back; the dead letter is logged instead
            log.warning("dead letter %s not delivered (%s): %s", source, type(err).__name__, error.reason)
