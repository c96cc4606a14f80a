"""Hospital messages to v1 events: HL7 v2 ORU^R01, FHIR R4, CSV labels (invented names and ids)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from agent.errors import EventError
from agent.events import ReportEvent, decode_event
from agent.messages import (
    LabelMapping,
    ack,
    convert_folder,
    csv_label_events,
    diagnostic_report_events,
    observation_label_events,
    oru_report_events,
)

STUDY = "1.2.826.0.1.3680043.8.498.1001"

ORU = "\r".join(
    [
        r"MSH|^~\&|RADRIS|ACMEHOSP|SLICEAGENT|AI|20261129101500+0100||ORU^R01^ORU_R01|CTL0001|P|2.5.1",
        "PID|1||MRN0000001^^^ACMEHOSP^MR||TESTPERSON^ALICE^Q||19600101|F",
        "PV1|1|O",
        "ORC|RE|ORD777|ACC555",
        "OBR|1|ORD777|ACC555^RADRIS|71045^XR CHEST 1 VIEW^CPT|||20261129094500+0100"
        "|||||||||||ACC555||||20261129101000+0100|||F|||||||READER^BOB",
        r"OBX|1|FT|&GDT^Findings^L||Small left apical pneumothorax.\.br\Chest tube \T\ line in place.||||||F",
        "OBX|2|TX|&IMP^Impression^L||Pneumothorax, decreased.~No new effusion.||||||F",
        f"ZDS|{STUDY}^RADRIS^Application^DICOM",
    ]
)


def test_oru_becomes_a_v1_report_event() -> None:
    [event] = oru_report_events(ORU)

    decoded = decode_event(json.dumps(event))
    assert isinstance(decoded, ReportEvent)
    assert decoded.study_uid == STUDY
    assert decoded.text == (
        "Small left apical pneumothorax.\nChest tube & line in place.\n"
        "Pneumothorax, decreased.\nNo new effusion."
    )
    assert event["timestamp"] == "2026-11-29T09:10:00Z"
    assert "TESTPERSON" not in json.dumps(event)
    assert oru_report_events(ORU) == [event]  # stable event id: a replay dedupes


def test_oru_keyed_by_accession_through_the_mapping() -> None:
    message = ORU.rsplit("\r", 1)[0]  # no ZDS
    [event] = oru_report_events(message, accessions={"ACC555": STUDY})
    assert event["study_uid"] == STUDY
    with pytest.raises(EventError) as caught:
        oru_report_events(message, accessions={})
    assert caught.value.reason == "unknown_study"
    assert "ACC555" not in str(caught.value)


def test_a_preliminary_result_gives_no_event() -> None:
    assert oru_report_events(ORU.replace("|||F|||||||READER", "|||P|||||||READER")) == []


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        ("not hl7 at all", "MSH"),
        (ORU.replace("ORU^R01^ORU_R01", "ADT^A01"), "got ADT"),
        ("\r".join(s for s in ORU.split("\r") if not s.startswith("OBX")), "report text"),
        ("\r".join(s for s in ORU.split("\r") if not s.startswith("OBR")), "OBR"),
    ],
)
def test_malformed_messages_raise_with_a_reason(message: str, fragment: str) -> None:
    with pytest.raises(EventError, match=fragment) as caught:
        oru_report_events(message)
    assert caught.value.reason == "malformed_hl7"


def _parsed(text: str):  # type: ignore[no-untyped-def]
    return parse_message(text.strip("\r"), find_groups=False, validation_level=VALIDATION_LEVEL.TOLERANT)


def test_ack_aa_mirrors_the_message() -> None:
    reply = _parsed(ack(ORU))
    assert reply.msh.msh_9.to_er7() == "ACK^R01^ACK"
    assert reply.msh.msh_3.to_er7() == "SLICEAGENT" and reply.msh.msh_5.to_er7() == "RADRIS"
    assert reply.msh.msh_12.to_er7() == "2.5.1"
    assert reply.msa.msa_1.to_er7() == "AA" and reply.msa.msa_2.to_er7() == "CTL0001"


def test_nak_ae_for_content_and_ar_for_an_unreadable_message() -> None:
    bad = "\r".join(s for s in ORU.split("\r") if not s.startswith("OBX"))
    with pytest.raises(EventError) as caught:
        oru_report_events(bad)
    reply = _parsed(ack(bad, caught.value))
    assert reply.msa.msa_1.to_er7() == "AE" and reply.msa.msa_2.to_er7() == "CTL0001"
    assert "TESTPERSON" not in ack(bad, caught.value)

    with pytest.raises(EventError) as caught:
        oru_report_events("garbage")
    assert ack("garbage", caught.value).split("\r")[1].startswith("MSA|AR|")


def _report(**extra: object) -> dict[str, object]:
    text = base64.b64encode(b"Chest radiograph. Right pleural effusion.").decode()
    return {
        "resourceType": "DiagnosticReport",
        "id": "rep-1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "36643-5"}]},
        "issued": "2026-11-29T10:00:00Z",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{STUDY}"}],
        "presentedForm": [{"contentType": "text/plain", "data": text}],
        "conclusion": "Effusion.",
        **extra,
    }


def test_fhir_diagnostic_report_and_bundle() -> None:
    [event] = diagnostic_report_events(json.dumps(_report()))
    assert event["study_uid"] == STUDY
    assert event["text"] == "Chest radiograph. Right pleural effusion.\nEffusion."
    assert isinstance(decode_event(json.dumps(event)), ReportEvent)

    study = {
        "resourceType": "ImagingStudy",
        "id": "st1",
        "status": "available",
        "subject": {"reference": "Patient/p1"},
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{STUDY}"}],
    }
    report = _report(identifier=[], imagingStudy=[{"reference": "ImagingStudy/st1"}])
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": "ImagingStudy/st1", "resource": study}, {"resource": report}],
    }
    [event] = diagnostic_report_events(json.dumps(bundle))
    assert event["study_uid"] == STUDY


@pytest.mark.parametrize(
    "raw",
    ["{not json", json.dumps({"resourceType": "Patient"}), json.dumps(_report(code="not-a-concept"))],
)
def test_malformed_fhir_raises_with_a_reason(raw: str) -> None:
    with pytest.raises(EventError) as caught:
        diagnostic_report_events(raw)
    assert caught.value.reason == "malformed_fhir"


MAPPING = LabelMapping.from_mapping(
    {"model": "pneumothorax", "codes": {"http://snomed.info/sct|36118008": "pneumothorax", "NEG": "normal"}}
)


def test_fhir_observation_label_through_the_mapping() -> None:
    obs = {
        "resourceType": "Observation",
        "id": "obs-1",
        "status": "final",
        "code": {"text": "confirmed finding"},
        "effectiveDateTime": "2026-11-30T08:00:00Z",
        "identifier": [{"type": {"coding": [{"code": "ACSN"}]}, "value": "ACC555"}],
        "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "36118008"}]},
    }
    [event] = observation_label_events(json.dumps(obs), MAPPING, accessions={"ACC555": STUDY})
    assert (event["study_uid"], event["label"], event["model"]) == (STUDY, "pneumothorax", "pneumothorax")
    unmapped = {**obs, "valueCodeableConcept": {"coding": [{"system": "x", "code": "999"}]}}
    with pytest.raises(EventError) as caught:
        list(observation_label_events(json.dumps(unmapped), MAPPING, accessions={"ACC555": STUDY}))
    assert caught.value.reason == "unmapped_code"


def test_csv_labels_and_their_dead_letters() -> None:
    text = f"study_uid,code,timestamp\n{STUDY},NEG,2026-11-30T08:00:00Z\n{STUDY},UNKNOWN,\n"
    good, bad = list(csv_label_events(text, MAPPING))
    assert isinstance(good, dict) and good["label"] == "normal"
    assert isinstance(bad, EventError) and bad.reason == "unmapped_code"


def test_file_drop_writes_events_dead_letters_and_acks(tmp_path: Path) -> None:
    inbox, acks = tmp_path / "in", tmp_path / "acks"
    inbox.mkdir()
    acks.mkdir()
    (inbox / "a.hl7").write_text(ORU)
    (inbox / "b.hl7").write_text("MSH|^~\\&|X|Y|Z|W|20261129||ORU^R01|CTL2|P|2.5.1\rPID|1")
    (inbox / "c.json").write_text(json.dumps(_report()))
    result = convert_folder(inbox, tmp_path / "events.jsonl", tmp_path / "dead.jsonl", acks=acks)

    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert (result.files, result.events, len(lines)) == (3, 2, 2)
    assert result.dead_letters == {"malformed_hl7": 1}
    assert "|AA|CTL0001" in (acks / "a.hl7.ack").read_text()
    assert "|AE|CTL2|" in (acks / "b.hl7.ack").read_text()


@pytest.mark.parametrize("raw", ["MSH|\rOBR|1", "MSH\rPID|1", "MSH|^~", "MSH"])
def test_a_message_whose_msh_is_too_short_is_answered_ar(raw: str) -> None:
    """A first segment shorter than its separators ("MSH|") raised IndexError in the ACK: the
    MLLP connection closed unanswered, and an HL7 engine resends such a message for ever."""
    with pytest.raises(EventError) as caught:
        oru_report_events(raw)
    reply = ack(raw, caught.value)
    assert reply.startswith("MSH|^~\\&|") and reply.split("\r")[1].startswith("MSA|AR|")


def test_a_bad_file_is_dead_lettered_and_the_next_files_converted(tmp_path: Path) -> None:
    """A CSV field beyond the csv module's limit (csv.Error) and a JSON file nested past the
    parser (RecursionError) stopped the whole folder: every later file was skipped. A spreadsheet's
    byte-order mark hid the CSV's first column."""
    inbox = tmp_path / "in"
    inbox.mkdir()
    (inbox / "a.csv").write_text(f"study_uid,code\n{STUDY},{'x' * 200_000}\n")
    (inbox / "b.json").write_text("[" * 100_000 + "]" * 100_000)
    row = f"{STUDY},NEG,2026-11-30T08:00:00Z"
    (inbox / "c.csv").write_bytes(f"\ufeffstudy_uid,code,timestamp\n{row}\n".encode())  # a spreadsheet's BOM
    (inbox / "d.hl7").write_text(ORU)
    result = convert_folder(inbox, tmp_path / "events.jsonl", tmp_path / "dead.jsonl", labels=MAPPING)
    assert result.files == 4 and result.events == 2  # the CSV's label and the ORU's report
    assert sum(result.dead_letters.values()) == 2


def test_a_csvs_bad_row_loses_none_of_the_others(tmp_path: Path) -> None:
    """One unmapped code among 1,000 rows dead-lettered the whole file (0 events); a CSV dropped
    without a label mapping gave nothing and said nothing."""
    inbox = tmp_path / "in"
    inbox.mkdir()
    rows = [f"{STUDY}.{i},NEG,2026-11-30T08:00:00Z" for i in range(1000)]
    rows.insert(500, f"{STUDY}.x,UNKNOWN,2026-11-30T08:00:00Z")
    (inbox / "a.csv").write_text("study_uid,code,timestamp\n" + "\n".join(rows) + "\n")
    result = convert_folder(inbox, tmp_path / "events.jsonl", tmp_path / "dead.jsonl", labels=MAPPING)
    assert result.events == 1000 and result.dead_letters == {"unmapped_code": 1}
    unmapped = convert_folder(inbox, tmp_path / "e2.jsonl", tmp_path / "d2.jsonl")
    assert unmapped.events == 0 and unmapped.dead_letters == {"unmapped_code": 1}
    assert "--labels" in (tmp_path / "d2.jsonl").read_text()
