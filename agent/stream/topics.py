"""Topic names, message keys and topic creation (kafka-python).

Keys. Every topic is keyed by ``study_uid``: the one field every producer has (a RIS that publishes
labels and reports never knows which AI model read the study). With the default partitioner all
events of a study land on the same partition number of the three topics, so one worker usually sees
them together, but nothing depends on it: the workers of a group share one PostgreSQL store
(``stream.store_url``), where any worker joins any event and any worker can refit any model. A group
on the embedded SQLite store must have one worker (the agent logs an ERROR when it is given only a
part of the partitions). Events without a usable ``study_uid`` get no key; the agent dead-letters
them with their reason.
"""

from __future__ import annotations

import logging
from typing import Any

from agent.config import StreamSettings
from agent.errors import AgentError

__all__ = ["TopicError", "ensure_topics", "message_key", "topic_for"]

log = logging.getLogger(__name__)


class TopicError(AgentError, ConnectionError):
    """The broker cannot be reached or refuses to create a topic."""


def topic_for(event_type: object, settings: StreamSettings) -> str:
    """The topic an event of this ``type`` goes to; anything unroutable goes to the inference topic,
    where the agent dead-letters it with its reason.

    >>> topic_for("label", StreamSettings()), topic_for(None, StreamSettings())
    ('label-events', 'inference-events')
    """
    if event_type == "label":
        return settings.label_topic
    if event_type == "report":
        return settings.report_topic
    return settings.inference_topic


def message_key(obj: Any) -> bytes | None:
    """The key of one event: its ``study_uid`` (None for a malformed event).

    Examples
    --------
    >>> message_key({"type": "inference", "model": "ptx", "study_uid": "1.2.3"})
    b'1.2.3'
    >>> message_key({"type": "label", "study_uid": 7}) is None, message_key([1]) is None
    (True, True)
    """
    if not isinstance(obj, dict):
        return None
    study = obj.get("study_uid")
    return study.encode("utf-8") if isinstance(study, str) and study else None


def ensure_topics(settings: StreamSettings, *, timeout_s: float = 30.0) -> list[str]:
    """Create the inference, label, report and dead-letter topics with ``settings.partitions``.

    Topics that exist are left alone (a different partition count is logged). Returns the names
    of the topics created.

    Raises
    ------
    TopicError
        If the broker cannot be reached within ``timeout_s``.
    """
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    names = [
        settings.inference_topic,
        settings.label_topic,
        settings.report_topic,
        settings.dead_letter_topic,
    ]
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=settings.bootstrap_servers.split(","),
            client_id="slice-agent-admin",
            request_timeout_ms=int(timeout_s * 1000),
        )
    except KafkaError as err:
        raise TopicError(
            f"cannot reach the broker at {settings.bootstrap_servers} to create topics: {err}"
        ) from err
    created: list[str] = []
    try:
        for name in names:
            try:
                admin.create_topics([NewTopic(name, settings.partitions, 1)])
                created.append(name)
            except TopicAlreadyExistsError:
                pass
        described = admin.describe_topics(names)
        for topic in described:
            n = len(topic.get("partitions") or [])
            if n and n != settings.partitions:
                log.warning(
                    "topic %s has %d partitions, settings say %d; keeping it as it is",
                    topic.get("topic"),
                    n,
                    settings.partitions,
                )
    except KafkaError as err:
        raise TopicError(f"cannot create topics on {settings.bootstrap_servers}: {err}") from err
    finally:
        admin.close()
    if created:
        log.info("created topic(s) %s with %d partitions", ", ".join(created), settings.partitions)
    return created
