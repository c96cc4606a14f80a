"""Confirmed labels through a small mapping file: a code (FHIR coding, CSV column) -> a class label.

The mapping is YAML::

    model: pneumothorax            # optional: the labels are for this model only
    codes:                         # "system|code" or a bare code -> class label
      "http://snomed.info/sct|36118008": pneumothorax
      "NEG": no_pneumothorax
    csv:                           # column names of a CSV export (these are the defaults)
      study_uid: study_uid
      accession: accession
      code: code
      timestamp: timestamp
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import yaml

from agent.errors import ConfigError, EventError
from agent.messages.keys import event_id, study_key

__all__ = ["LabelMapping", "csv_label_events"]

_CSV_DEFAULTS = {"study_uid": "study_uid", "accession": "accession", "code": "code", "timestamp": "timestamp"}


@dataclass(frozen=True)
class LabelMapping:
    """Codes to class labels, the model they are for, and the columns of a CSV export."""

    codes: Mapping[str, str | int]
    model: str | None = None
    columns: Mapping[str, str] = field(default_factory=lambda: dict(_CSV_DEFAULTS))

    @classmethod
    def load(cls, path: str | Path) -> LabelMapping:
        """Read the YAML mapping file; :class:`ConfigError` when it is not one."""
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"cannot read label mapping {path}: {err}") from err
        return cls.from_mapping(data, source=str(path))

    @classmethod
    def from_mapping(cls, data: object, *, source: str = "label mapping") -> LabelMapping:
        """Build from parsed YAML; :class:`ConfigError` names what is wrong."""
        if not isinstance(data, dict) or not isinstance(data.get("codes"), dict) or not data["codes"]:
            raise ConfigError(
                f"{source}: expected a mapping with a non-empty 'codes' mapping, got another shape"
            )
        codes: dict[str, str | int] = {}
        for code, label in data["codes"].items():
            if isinstance(label, bool) or not isinstance(label, str | int):
                raise ConfigError(f"{source}: expected a string or integer class label for code {code!r}")
            codes[str(code)] = label
        model = data.get("model")
        if model is not None and not isinstance(model, str):
            raise ConfigError(f"{source}: expected 'model' to be a string")
        columns = dict(_CSV_DEFAULTS)
        extra = data.get("csv") or {}
        if not isinstance(extra, dict) or set(extra) - set(_CSV_DEFAULTS):
            raise ConfigError(
                f"{source}: expected 'csv' to map some of {sorted(_CSV_DEFAULTS)} to column names"
            )
        columns.update({k: str(v) for k, v in extra.items()})
        return cls(codes=codes, model=model, columns=columns)

    def label(self, code: str, system: str | None = None) -> str | int | None:
        """The class label of ``system|code``, else of the bare ``code``; None when unmapped."""
        if system:
            found = self.codes.get(f"{system}|{code}")
            if found is not None:
                return found
        return self.codes.get(code)


def _label_event(
    mapping: LabelMapping, kind: str, key: tuple[str, ...], study: str, label: str | int, when: str
) -> dict[str, object]:
    event: dict[str, object] = {
        "type": "label",
        "event_id": event_id(kind, *key),
        "study_uid": study,
        "label": label,
        "timestamp": when,
    }
    if mapping.model is not None:
        event["model"] = mapping.model
    return event


def csv_label_events(
    text: str, mapping: LabelMapping, *, accessions: Mapping[str, str] | None = None
) -> Iterator[dict[str, object] | EventError]:
    """One label event per row of a CSV export, or the row's :class:`EventError` (dead-letter it).

    A row with no timestamp is stamped now (UTC). A whole file without the needed columns raises.
    """
    reader = csv.DictReader(io.StringIO(text))
    cols = mapping.columns
    header = set(reader.fieldnames or ())
    if cols["code"] not in header or not ({cols["study_uid"], cols["accession"]} & header):
        raise EventError(
            f"expected CSV columns {cols['code']!r} and {cols['study_uid']!r} or {cols['accession']!r}",
            reason="malformed_csv",
        )
    for line, row in enumerate(reader, start=2):
        try:
            code = (row.get(cols["code"]) or "").strip()
            label = mapping.label(code)
            if label is None:
                raise EventError(f"row {line}: the code is not in the label mapping", reason="unmapped_code")
            study = study_key(
                (row.get(cols["study_uid"]) or "").strip() or None,
                (row.get(cols["accession"]) or "").strip() or None,
                accessions,
                reason="malformed_csv",
            )
            stamped = (row.get(cols["timestamp"]) or "").strip()
            when = stamped or datetime.now(UTC).isoformat()
            yield _label_event(mapping, "csv", (study, code, stamped), study, label, when)
        except EventError as err:
            yield err
