"""The streaming agent: Kafka (or a replayed file) in, slice reports and metrics out.

:class:`Sidecar` holds the logic both shells share: decode a batch, apply it to the durable
store (:mod:`agent.store`), embed on arrival in a worker thread, watch error-rate drift, refit with
the batch audit's pipeline and track slices. :func:`build_app` / :func:`run_worker` are the
faust-streaming shell; :func:`replay_file` the broker-less one; :func:`publish_file` and
:func:`ensure_topics` the kafka-python tools around them. Importing this package does not import
faust or kafka.
"""

from agent.stream.ingest import Message, decode_messages
from agent.stream.publish import PublishSummary, publish_file
from agent.stream.refit import RefitOutcome, Refitter, load_latest, report_dir
from agent.stream.replay import ReplaySummary, replay_file, write_dead_letters
from agent.stream.runtime import build_app, dead_letter_payload, run_worker
from agent.stream.sidecar import Sidecar
from agent.stream.topics import TopicError, ensure_topics, message_key, topic_for

__all__ = [
    "Message",
    "PublishSummary",
    "RefitOutcome",
    "Refitter",
    "ReplaySummary",
    "Sidecar",
    "TopicError",
    "build_app",
    "dead_letter_payload",
    "decode_messages",
    "ensure_topics",
    "load_latest",
    "message_key",
    "publish_file",
    "replay_file",
    "report_dir",
    "run_worker",
    "topic_for",
    "write_dead_letters",
]
