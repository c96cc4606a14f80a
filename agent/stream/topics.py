"""Topic names, message keys and topic creation (kafka-python).

Keys. Every topic is keyed by **model**, so that with the default partitioner all of a model's
inferences, labels and reports land on the same partition number of the three topics, which the
consumer group assigns to one worker: a model's join, window and refits live on one worker, and
workers split the models (the design's "topics partitioned by model"). Inference events carry
their model. A label or report does not always: its producer keys it by the model that inferred
its study (``slice-agent publish`` looks that up in the file; a label's own ``model`` field wins).
A study that several models inferred has its label and report sent once per model. A label or
report whose model cannot be known is keyed by ``study_uid``: one worker still joins it, but with
several workers it may land on one that does not own the model, where it expires as an orphan.

Keying labels by study instead would spread one model's labels over every worker and break the
join unless a repartition stage moved join state between workers on every rebalance, through
changelog topics; the design keeps state in each worker's own store instead (and Tansu, the broker
the tests run on, reports wrong end offsets after batches, so changelogs cannot be restored there).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from agent.config import StreamSettings
from agent.errors import AgentError

__all__ = ["TopicError", "ensure_topics", "message_keys", "topic_for"]

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


def message_keys(obj: Any, study_models: Mapping[str, set[str]]) -> list[bytes | None]:
    """The key (one per copy to send) of one event, following the module's keying rule.

    Parameters
    ----------
    obj
        The parsed event (any JSON value: a malformed one gets one copy with no key).
    study_models
        For each study, the models that inferred it.

    Examples
    --------
    >>> message_keys({"type": "inference", "model": "ptx", "study_uid": "s"}, {})
    [b'ptx']
    >>> message_keys({"type": "report", "study_uid": "s"}, {"s": {"ptx", "edema"}})
    [b'edema', b'ptx']
    >>> message_keys({"type": "label", "study_uid": "u"}, {})
    [b'u']
    """
    if not isinstance(obj, dict):
        return [None]
    kind = obj.get("type")
    model = obj.get("model")
    if kind == "inference":
        return [model.encode("utf-8")] if isinstance(model, str) and model else [None]
    if kind in ("label", "report"):
        if kind == "label" and isinstance(model, str) and model:
            return [model.encode("utf-8")]
        study = obj.get("study_uid")
        if not isinstance(study, str):
            return [None]
        models = study_models.get(study)
        if models:
            return [m.encode("utf-8") for m in sorted(models)]
        return [study.encode("utf-8")]
    return [None]


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
