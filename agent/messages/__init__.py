"""The hospital's own messages as v1 events: HL7 v2 ORU^R01 and FHIR R4 reports, confirmed labels.

Each converter takes one message and returns plain v1 event objects (dicts that
:func:`agent.events.decode_event` accepts); a malformed message raises
:class:`agent.errors.EventError` with a bounded reason, which the caller counts and
dead-letters. HL7 v2 messages also get their acknowledgement (:func:`ack`).
"""

from agent.messages.drop import convert_folder
from agent.messages.fhir import diagnostic_report_events, observation_label_events
from agent.messages.hl7v2 import ack, oru_report_events
from agent.messages.labels import LabelMapping, csv_label_events

__all__ = [
    "LabelMapping",
    "ack",
    "convert_folder",
    "csv_label_events",
    "diagnostic_report_events",
    "observation_label_events",
    "oru_report_events",
]
