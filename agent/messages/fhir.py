"""FHIR R4 ``DiagnosticReport`` (reports) and ``Observation`` (confirmed labels) as v1 events.

A resource, or a ``Bundle`` of them, is validated with fhir.resources (R4B models, which read R4
``DiagnosticReport`` and ``Observation``); anything that does not validate is ``malformed_fhir``.
The study is a Study Instance UID (an identifier with system ``urn:dicom:uid``, on the resource
or on an ``ImagingStudy`` it references, contained or in the same bundle), else an accession
number (an identifier typed ``ACSN``, on the resource or a referenced ``ServiceRequest``) looked
up in the accession mapping. Reports count when ``final``, ``amended``, ``corrected`` or
``appended``; observations when ``final``, ``amended`` or ``corrected``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator, Mapping
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation

from agent.errors import EventError
from agent.messages.keys import event_id, study_key
from agent.messages.labels import LabelMapping, _label_event

__all__ = ["diagnostic_report_events", "observation_label_events"]

_REPORT_DONE = frozenset({"final", "amended", "corrected", "appended"})
_OBSERVATION_DONE = frozenset({"final", "amended", "corrected"})
_MODELS: dict[str, Any] = {"DiagnosticReport": DiagnosticReport, "Observation": Observation, "Bundle": Bundle}
_MAX_BYTES = 1 << 20


def _load(raw: str | bytes | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(raw, Mapping):
        obj: Any = dict(raw)
    else:
        if len(raw) > _MAX_BYTES:
            raise EventError(
                f"expected a FHIR resource of at most {_MAX_BYTES} bytes, got more", reason="oversized_event"
            )
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as err:  # nested past the parser too
            raise EventError(
                f"expected FHIR JSON, got invalid JSON ({type(err).__name__})", reason="malformed_fhir"
            ) from err
    if not isinstance(obj, dict):
        raise EventError(
            "expected a FHIR resource (a JSON object), got another JSON value", reason="malformed_fhir"
        )
    kind = obj.get("resourceType")
    model = _MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise EventError(
            f"expected a DiagnosticReport, Observation or Bundle, got {str(kind)[:40]!r}",
            reason="malformed_fhir",
        )
    try:
        model.model_validate(obj)
    except Exception as err:  # pydantic's ValidationError, and fhir.resources' own checks
        first = str(err).splitlines()[1:2]
        raise EventError(
            f"invalid FHIR {kind}: {(first[0] if first else type(err).__name__)[:120]}",
            reason="malformed_fhir",
        ) from err
    return obj


def _resources(obj: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """The resources of a bundle (or the one resource) and an index by reference for lookups."""
    index: dict[str, dict[str, Any]] = {}
    if obj["resourceType"] != "Bundle":
        items = [obj]
    else:
        items = []
        for entry in obj.get("entry") or []:
            res = entry.get("resource")
            if isinstance(res, dict):
                items.append(res)
                if entry.get("fullUrl"):
                    index[str(entry["fullUrl"])] = res
                if res.get("id"):
                    index[f"{res.get('resourceType')}/{res['id']}"] = res
    return items, index


def _resolve(
    ref: object, resource: dict[str, Any], index: Mapping[str, dict[str, Any]]
) -> dict[str, Any] | None:
    target = ref.get("reference") if isinstance(ref, dict) else None
    if not isinstance(target, str):
        return None
    if target.startswith("#"):
        for contained in resource.get("contained") or []:
            if contained.get("id") == target[1:]:
                return dict(contained)
        return None
    return index.get(target)


def _identifiers(resource: Mapping[str, Any]) -> tuple[str | None, str | None]:
    study = accession = None
    for ident in resource.get("identifier") or []:
        value = str(ident.get("value") or "")
        if ident.get("system") == "urn:dicom:uid" and value:
            study = value.removeprefix("urn:oid:")
        codes = {c.get("code") for c in ((ident.get("type") or {}).get("coding") or [])}
        if "ACSN" in codes and value:
            accession = value
    return study, accession


def _study(
    resource: dict[str, Any], index: Mapping[str, dict[str, Any]], accessions: Mapping[str, str] | None
) -> str:
    study, accession = _identifiers(resource)
    refs = [
        *(resource.get("imagingStudy") or []),
        *(resource.get("derivedFrom") or []),
        *(resource.get("partOf") or []),
        *(resource.get("basedOn") or []),
    ]
    for ref in refs:
        target = _resolve(ref, resource, index)
        if target is None:
            continue
        found_study, found_accession = _identifiers(target)
        study = study or found_study
        accession = accession or found_accession
    return study_key(study, accession, accessions, reason="malformed_fhir")


def _report_text(report: Mapping[str, Any]) -> str:
    parts = [str(report["conclusion"])] if report.get("conclusion") else []
    for form in report.get("presentedForm") or []:
        if str(form.get("contentType", "")).startswith("text/plain") and form.get("data"):
            try:
                parts.insert(0, base64.b64decode(form["data"], validate=True).decode("utf-8"))
            except (binascii.Error, UnicodeDecodeError) as err:
                raise EventError(
                    "expected base64 UTF-8 text in presentedForm.data", reason="malformed_fhir"
                ) from err
    return "\n".join(parts).strip()


def _when(resource: Mapping[str, Any]) -> str:
    when = (
        resource.get("issued")
        or resource.get("effectiveDateTime")
        or (resource.get("effectivePeriod") or {}).get("end")
    )
    if not when:
        raise EventError("expected issued or effectiveDateTime, got neither", reason="malformed_fhir")
    return str(when)


def diagnostic_report_events(
    raw: str | bytes | Mapping[str, Any], *, accessions: Mapping[str, str] | None = None
) -> list[dict[str, object]]:
    """The v1 report events of a ``DiagnosticReport`` or of the reports in a ``Bundle``."""
    items, index = _resources(_load(raw))
    events: list[dict[str, object]] = []
    for res in items:
        if res.get("resourceType") != "DiagnosticReport" or res.get("status") not in _REPORT_DONE:
            continue
        text = _report_text(res)
        if not text:
            raise EventError(
                "expected report text in presentedForm (text/plain) or conclusion", reason="malformed_fhir"
            )
        study = _study(res, index, accessions)
        key = (
            str(res.get("id") or ""),
            str(res.get("status")),
            str((res.get("meta") or {}).get("versionId") or ""),
        )
        events.append(
            {
                "type": "report",
                "event_id": event_id("fhir", study, *key),
                "study_uid": study,
                "text": text,
                "timestamp": _when(res),
            }
        )
    return events


def observation_label_events(
    raw: str | bytes | Mapping[str, Any],
    mapping: LabelMapping,
    *,
    accessions: Mapping[str, str] | None = None,
) -> Iterator[dict[str, object]]:
    """The v1 label events of an ``Observation`` (or those in a ``Bundle``) whose code is mapped.

    The code is ``valueCodeableConcept`` (else ``code``); a coding not in the mapping raises
    ``unmapped_code``.
    """
    items, index = _resources(_load(raw))
    for res in items:
        if res.get("resourceType") != "Observation" or res.get("status") not in _OBSERVATION_DONE:
            continue
        concept = res.get("valueCodeableConcept") or res.get("code") or {}
        label = None
        for coding in concept.get("coding") or []:
            label = mapping.label(str(coding.get("code", "")), coding.get("system"))
            if label is not None:
                break
        if label is None:
            raise EventError("the observation's code is not in the label mapping", reason="unmapped_code")
        study = _study(res, index, accessions)
        key = (study, str(res.get("id") or ""), str(res.get("status")))
        yield _label_event(mapping, "fhir", key, study, label, _when(res))
