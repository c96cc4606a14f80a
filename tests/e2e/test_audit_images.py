"""The image path of the audit on real DICOM files, with a shared-space (open_clip) embedder.

The open_clip model here has random weights: this checks plumbing (pixels read, embedded,
fused, r_attr computed in image space), never the quality of a result.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from agent.audit import run_audit
from agent.config import load_settings
from agent.embed import make_embedder
from agent.sample import Sample
from agent.simulate import StreamSpec, generate_stream


def _store(name: str) -> Path:
    spec = importlib.util.find_spec("data_store")
    assert spec is not None and spec.submodule_search_locations, "pydicom-data is not installed"
    return Path(spec.submodule_search_locations[0]) / "data" / name


@pytest.fixture(scope="module")
def dicom_files(tmp_path_factory) -> list[Path]:
    """Eight real radiographs: the PA chest and the AP leg, each with shifted pixels and views."""
    out = tmp_path_factory.mktemp("dicom")
    files = []
    for k, (name, view) in enumerate([("RG1_UNCR.dcm", "PA"), ("RG3_UNCR.dcm", "AP")] * 4):
        ds = pydicom.dcmread(_store(name))
        ds.PixelData = np.roll(ds.pixel_array, 37 * k, axis=1).astype(ds.pixel_array.dtype).tobytes()
        ds.ViewPosition = view
        path = out / f"img{k}.dcm"
        ds.save_as(path)
        files.append(path)
    return files


@pytest.mark.slow
def test_image_audit_runs_on_real_dicom_with_a_shared_space_model(dicom_files, tmp_path):
    events, _ = generate_stream(StreamSpec(n_studies=120, seed=2))
    inference = {e["study_uid"]: e for e in events if e["type"] == "inference"}
    labels = {e["study_uid"]: e["label"] for e in events if e["type"] == "label"}
    samples = []
    for i, (study, inf) in enumerate(inference.items()):
        image = str(dicom_files[i % len(dicom_files)]) if i != 5 else str(tmp_path / "missing.dcm")
        samples.append(
            Sample(
                study_uid=study,
                model=inf["model"],
                prediction=inf["prediction"],
                label=labels[study],
                timestamp=np.datetime64(inf["timestamp"].rstrip("Z")).astype(object),
                image=image,
            )
        )
    settings = load_settings(
        overrides={
            "audit": {"pca_components": 16, "n_components": 8},
            "images": {"roots": [str(dicom_files[0].parent), str(tmp_path)]},
        }
    )
    report, problems = run_audit(
        samples,
        embedder=make_embedder("open_clip:ViT-S-32-alt", allow_random_weights=True),
        settings=settings,
        modalities=["image", "metadata"],
    )
    assert report.modalities == ("image", "metadata")
    assert report.r_attr_space == "image"
    assert "random-weights" in report.embedder
    assert [(p.where, p.reason) for p in problems] == [(f"study {samples[5].study_uid}", "image_refused")]
    assert any("lack the image modality" in note for note in report.notes)
    json.dumps(report.to_dict())  # serialisable, NaN-free
