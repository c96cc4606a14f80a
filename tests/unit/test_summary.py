"""The weekly drift summary: its data, its statistic, its files, and the page as Chromium renders it."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from typer.testing import CliRunner

from agent.cli import app
from agent.config import SummarySettings
from agent.errors import AgentError
from agent.images import ImageAccess
from agent.report import Member, SliceReport, SliceResult, TokenResult, Window
from agent.simulate.images import draw_cases, render
from agent.summary import (
    DriftEvent,
    TimedReport,
    build_summary,
    burned_in_text,
    embedding_drift,
    iso_week,
    member_thumbnails,
    previous_week,
    read_report,
    write_summary,
)

MONDAY = datetime(2026, 11, 23, tzinfo=UTC)
UIDS = [f"1.2.840.99.{i}" for i in range(30)]


def _report(error: float, *, sid: str = "s-1", model: str = "ptx", slices: bool = True) -> SliceReport:
    found = (
        SliceResult(
            rank=1,
            id=sid,
            size=30,
            error_rate=0.7,
            rest_error_rate=0.1,
            p_value=1e-6,
            error_precision_at_10=0.9,
            n_tested=30,
            members=tuple(Member(u, 0.99 - i / 100) for i, u in enumerate(UIDS)),
            tokens=(TokenResult("tube", 0.3, 0.02), TokenResult("Whitfield", 0.2), TokenResult("drain", 0.1)),
        ),
    )
    return SliceReport(
        model,
        "pneumothorax",
        ("report", "metadata"),
        Window(1000, round(1000 * error), "2026-11-23T08:00:00+00:00", "2026-11-24T09:00:00+00:00"),
        found if slices else (),
        (TokenResult("tube", 0.2),),
    )


def _week(n: int = 6) -> list[TimedReport]:
    return [
        TimedReport(MONDAY + timedelta(hours=20 * i + 1), _report(0.1 + 0.02 * i, slices=i > 1))
        for i in range(n)
    ]


# ------------------------------------------------------------------------------------- pure parts


def test_iso_weeks():
    start, end = iso_week("2026-W48")
    assert start == MONDAY and end == MONDAY + timedelta(days=7)
    assert previous_week("2026-W48") == "2026-W47"
    assert previous_week("2026-W01") == "2025-W52"
    with pytest.raises(AgentError, match="ISO week"):
        iso_week("2026-11-23")


def test_report_round_trips_through_json(tmp_path):
    report = _report(0.12)
    path = tmp_path / "r.json"
    report.write_json(path)
    assert SliceReport.from_dict(json.loads(path.read_text())) == report
    timed = read_report(path)
    assert timed.report == report and timed.at == datetime(2026, 11, 24, 9, tzinfo=UTC)
    (tmp_path / "bad.json").write_text('{"model": "x"}')
    with pytest.raises(AgentError, match="not a slice report"):
        read_report(tmp_path / "bad.json")


def _naive_mmd2(x: np.ndarray, y: np.ndarray, bandwidth: float) -> float:
    def k(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.exp(-np.sum((a - b) ** 2) / bandwidth))

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(a, b) for a in x for b in y) / (n * m)
    return xx + yy - 2 * xy


def test_mmd_matches_a_naive_loop_and_ignores_missing_rows():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(12, 3)), rng.normal(0.5, 1.0, size=(15, 3))
    pooled = np.vstack([x, y])
    d2 = [np.sum((a - b) ** 2) for i, a in enumerate(pooled) for b in pooled[i + 1 :]]
    bandwidth = float(np.median(d2))
    with_missing = np.vstack([x, np.full((3, 3), np.nan)])
    result = embedding_drift(with_missing, y, modality="report", n_permutations=50)
    assert result.mmd2 == pytest.approx(_naive_mmd2(x, y, bandwidth), rel=1e-9)
    assert (result.n_previous, result.n_current) == (12, 15)


def test_drift_threshold_holds_its_false_alarm_rate_and_catches_a_shift():
    rng = np.random.default_rng(2)
    false_alarms = sum(
        embedding_drift(
            rng.normal(size=(60, 8)), rng.normal(size=(60, 8)), modality="m", alpha=0.1, seed=s
        ).drifted
        for s in range(40)
    )
    assert false_alarms <= 9  # about 4 expected at alpha = 0.1
    shifted = embedding_drift(
        rng.normal(size=(60, 8)), rng.normal(0.6, 1, size=(60, 8)), modality="m", alpha=0.01
    )
    assert shifted.drifted and shifted.mmd2 > shifted.threshold > 0
    with pytest.raises(AgentError, match="at least 5"):
        embedding_drift(np.zeros((3, 8)), np.zeros((30, 8)), modality="m")


def test_build_summary_keeps_the_week_and_the_latest_report_per_pair():
    inside = _week()
    outside = [
        TimedReport(MONDAY - timedelta(hours=1), _report(0.9)),
        TimedReport(MONDAY + timedelta(days=7), _report(0.9)),
    ]
    other = TimedReport(MONDAY + timedelta(days=2), _report(0.3, model="fracture", sid="s-2"))
    events = [
        DriftEvent(MONDAY + timedelta(days=3), "ptx", "pneumothorax", 0.2, 0.1),
        DriftEvent(MONDAY - timedelta(days=3), "ptx", "pneumothorax"),
        DriftEvent(MONDAY + timedelta(days=1), "Jane Doe", "pneumothorax"),
    ]
    summary = build_summary("2026-W48", [*outside, *inside, other], drift_events=events)
    assert len(summary.reports) == len(inside) + 1
    assert [r.model for r in summary.latest] == ["fracture", "ptx"]
    assert summary.latest[1] is inside[-1].report
    assert len(summary.drift_events) == 1
    ptx = summary.latest[1]
    assert summary.seen_in(ptx, ptx.slices[0]) == 4 and summary.refits(ptx) == 6


# ------------------------------------------------------------------------------------------- files


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, list[TimedReport]]:
    rng = np.random.default_rng(0)
    embeddings = {
        "report": (rng.normal(size=(80, 16)), rng.normal(0.5, 1, size=(80, 16))),
        "metadata": (rng.normal(size=(80, 16)), rng.normal(size=(80, 16))),
    }
    thumbs = {("ptx", "pneumothorax", 1): [np.linspace(0, 1, 48 * 48).reshape(48, 48)] * 2}
    reports = _week()
    summary = build_summary(
        "2026-W48",
        reports,
        drift_events=[DriftEvent(MONDAY + timedelta(days=3), "ptx", "pneumothorax", 0.2, 0.1)],
        embeddings=embeddings,
        thumbnails=thumbs,
        settings=SummarySettings(drift_permutations=50, thumbnails=True),
    )
    files = write_summary(summary, tmp_path_factory.mktemp("summary"))
    return files.html, reports


def test_page_and_markdown_carry_every_plot_and_no_identifier(written):
    page_path, _ = written
    page = page_path.read_text()
    sources = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(sources) == 4  # error rate, members, slices, embedding drift
    for data in sources:
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        assert image.format == "PNG" and image.width > 50 and image.height > 50
    assert 'src="http' not in page and "<script" not in page, "the page must be self-contained"
    markdown = (page_path.parent / "summary.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", markdown)
    assert len(linked) == 4 and all((page_path.parent / name).stat().st_size > 1000 for name in linked)
    for text in (re.sub(r"base64,[A-Za-z0-9+/=]+", "", page), markdown):
        assert "tube, drain" in text and "4 of 6" in text
        assert not any(u in text for u in UIDS) and "1.2.840.99" not in text
        assert "s-1" not in text, "slice ids are hashes of study uids"
        assert "Whitfield" not in text, "a capitalised token is not a scrubbed token"
        assert "2026-11-2" not in text, "no calendar date of a case"
        assert "report" in text and "yes" in text  # the shifted modality drifted


def _require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} is not installed: run `make system-deps`", pytrace=False)
    return path


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [
        _require("chromium"),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        *args,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def test_chromium_renders_the_page_with_its_plots(written, tmp_path):
    page_path, _ = written
    # a copy of the page that records each image's decoded width once loaded (the page itself has no script)
    probe = tmp_path / "probe.html"
    script = (
        "<script>window.addEventListener('load', () => { document.body.setAttribute('data-widths', "
        "Array.from(document.images).map(i => i.complete ? i.naturalWidth : -1).join(',')); });</script>"
    )
    probe.write_text(page_path.read_text().replace("</body>", script + "</body>"))
    dom = _chromium("--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    widths = re.search(r'data-widths="([^"]*)"', dom.stdout)
    assert widths, "the page did not finish loading"
    assert [int(w) > 100 for w in widths.group(1).split(",")] == [True] * 4

    shot = tmp_path / "page.png"
    proc = _chromium(
        "--hide-scrollbars", "--window-size=1100,2400", f"--screenshot={shot}", page_path.as_uri()
    )
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    red = (pixels[..., 0] > 150) & (pixels[..., 1] < 90) & (pixels[..., 2] < 90)
    assert red.sum() > 2000, "the red slice bars are not on the rendered page"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200, "the screenshot looks blank"


# --------------------------------------------------------------------------------------- thumbnails


def _dicom(path: Path, *, burned_in: bool, pixels: np.ndarray | None = None) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName = "CR", "Doe^Jane"
    ds.BurnedInAnnotation = "YES" if burned_in else "NO"
    if pixels is None:
        pixels = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 4096
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_thumbnails_come_from_members_images_but_never_burned_in_ones(tmp_path):
    images = {
        UIDS[0]: str(_dicom(tmp_path / "a.dcm", burned_in=True)),
        UIDS[1]: str(_dicom(tmp_path / "b.dcm", burned_in=False)),
        UIDS[2]: str(tmp_path / "missing.dcm"),
        UIDS[3]: _dicom(tmp_path / "d.dcm", burned_in=False).as_uri(),
    }
    assert member_thumbnails([_report(0.1)], images, per_slice=3, size=32) == {}  # no roots: none read
    access = ImageAccess(roots=(tmp_path,))
    thumbs = member_thumbnails([_report(0.1)], images, per_slice=3, size=32, access=access)
    (got,) = thumbs.values()
    assert len(got) == 2 and all(t.shape == (32, 32) for t in got)
    assert list(thumbs) == [("ptx", "pneumothorax", 1)]


def _with_text(
    pixels: np.ndarray, rng: np.random.Generator, text: str = "DOE^JANE MRN 1234567"
) -> np.ndarray:
    """``pixels`` (12-bit) with ``text`` burned in white at a random corner, as devices do."""
    from PIL import ImageDraw, ImageFont

    span = np.ptp(pixels) or 1.0
    grey = Image.fromarray(((pixels - pixels.min()) / span * 255).astype(np.uint8))
    size = max(10, grey.width // 40)
    font = ImageFont.load_default(size=size)
    w, h = grey.size
    x = int(rng.choice([0.03 * w, 0.55 * w]))
    y = int(rng.choice([0.03 * h, 0.93 * h - size]))
    ImageDraw.Draw(grey).text((x, y), text, fill=255, font=font)
    return np.asarray(grey, dtype=np.float64) * 16


def _grey(pixels: np.ndarray, size: int = 256) -> np.ndarray:
    """As the summary sees an image without a window: scaled by its own range, 256 pixels square."""
    span = np.ptp(pixels) or 1.0
    img = Image.fromarray(((pixels - pixels.min()) / span * 255).astype(np.uint8)).resize((size, size))
    return np.asarray(img, dtype=np.float64) / 255


def test_burned_in_text_is_found_on_the_pixels_and_anatomy_is_not_text():
    rng = np.random.default_rng(7)
    cases = draw_cases(rng, 20)
    plain = [render(c).astype(np.float64) for c in cases]
    assert not any(burned_in_text(_grey(p)) for p in plain)  # lungs, ribs, devices, outlines
    found = [burned_in_text(_grey(_with_text(p, rng))) for p in plain]
    assert sum(found) >= 18, found


def test_burned_in_text_needs_a_grey_image():
    with pytest.raises(AgentError, match="2-D"):
        burned_in_text(np.zeros((4, 4, 3)))


def test_thumbnails_hold_back_images_with_text_whatever_their_tag_says(tmp_path):
    rng = np.random.default_rng(3)
    (case,) = draw_cases(rng, 1)
    clean = render(case)
    images = {
        UIDS[0]: str(_dicom(tmp_path / "a.dcm", burned_in=False, pixels=_with_text(clean, rng))),
        UIDS[1]: str(_dicom(tmp_path / "b.dcm", burned_in=False, pixels=clean)),
    }
    access = ImageAccess(roots=(tmp_path,))
    (got,) = member_thumbnails([_report(0.1)], images, per_slice=3, size=32, access=access).values()
    assert len(got) == 1  # the untagged image with a name burned in is not shown


@pytest.mark.parametrize("shape", [(512, 1024), (1024, 512)])
def test_a_film_not_square_is_checked_at_its_own_edges(tmp_path, shape):
    """A landscape or portrait film is centred on black to make it square: a name along its own
    top edge, mid-width, lay outside the bands of the square's edges that were checked, and the
    thumbnail showed it."""
    from PIL import ImageDraw, ImageFont

    h, w = shape
    film = Image.fromarray((np.tile(np.linspace(0.2, 0.6, w), (h, 1)) * 255).astype(np.uint8))
    ImageDraw.Draw(film).text((int(0.33 * w), 20), "DOE^JANE", fill=255, font=ImageFont.load_default(size=40))
    pixels = np.asarray(film, dtype=np.float64) * 16
    images = {UIDS[0]: str(_dicom(tmp_path / "a.dcm", burned_in=False, pixels=pixels))}
    access = ImageAccess(roots=(tmp_path,))
    assert member_thumbnails([_report(0.1)], images, per_slice=1, size=96, access=access) == {}


def test_thumbnails_are_off_unless_turned_on():
    thumbs = {("ptx", "pneumothorax", 1): [np.zeros((8, 8))]}
    assert build_summary("2026-W48", _week(), thumbnails=thumbs).thumbnails == {}
    on = build_summary("2026-W48", _week(), thumbnails=thumbs, settings=SummarySettings(thumbnails=True))
    assert list(on.thumbnails) == [("ptx", "pneumothorax", 1)]


# --------------------------------------------------------------------------------------------- CLI


def test_summary_command_writes_the_week(tmp_path):
    reports = tmp_path / "reports"
    reports.mkdir()
    for i, timed in enumerate(_week()):
        report = timed.report
        data = report.to_dict()
        data["window"]["end"] = timed.at.isoformat()
        (reports / f"r{i}.json").write_text(json.dumps(data))
    rng = np.random.default_rng(3)
    for week in ("2026-W47", "2026-W48"):
        (tmp_path / "emb" / week).mkdir(parents=True)
        np.save(tmp_path / "emb" / week / "report.npy", rng.normal(size=(40, 8)))
    (tmp_path / "drift.jsonl").write_text(
        json.dumps(
            {"at": "2026-11-26T10:00:00Z", "model": "ptx", "target_class": "pneumothorax", "statistic": 3.0}
        )
        + "\n"
    )
    args = ["summary", "--week", "2026-W48", "--reports", str(reports), "--out", str(tmp_path / "out")]
    args += ["--drift-events", str(tmp_path / "drift.jsonl"), "--embeddings", str(tmp_path / "emb")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "6 report(s)" in result.output
    folder = tmp_path / "out" / "2026-W48"
    assert sorted(p.name for p in folder.iterdir()) == [
        "embedding-drift.png",
        "error-rate.png",
        "slices.png",
        "summary.html",
        "summary.md",
    ]
    markdown = (folder / "summary.md").read_text()
    assert "| Thu 10:00 | ptx | pneumothorax | 3 | - |" in markdown
    assert "| report |" in markdown


@pytest.mark.parametrize("statistic", ["high", True, [3.0]])
def test_a_drift_event_whose_statistic_is_not_a_number_is_refused_by_line(tmp_path, statistic):
    """A drift-event line with a statistic that is not a number failed the summary later, in the
    HTML's number format, with no word of which line."""
    event = {"at": "2026-11-26T10:00:00Z", "model": "ptx", "target_class": "pneumothorax"}
    (tmp_path / "drift.jsonl").write_text(json.dumps({**event, "statistic": statistic}) + "\n")
    (tmp_path / "reports").mkdir()
    args = ["summary", "--week", "2026-W48", "--reports", str(tmp_path / "reports")]
    args += ["--out", str(tmp_path / "out"), "--drift-events", str(tmp_path / "drift.jsonl")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0 and "line 1: not a drift event" in str(result.exception)


def test_summary_command_shows_member_thumbnails_from_the_event_file(tmp_path):
    timed = _week(3)[-1]
    data = timed.report.to_dict()
    data["window"]["end"] = timed.at.isoformat()
    (tmp_path / "r.json").write_text(json.dumps(data))
    events = [
        {
            "type": "inference",
            "event_id": f"e{i}",
            "study_uid": uid,
            "model": "ptx",
            "prediction": "pneumothorax",
            "timestamp": "2026-11-24T08:00:00Z",
            "image": str(_dicom(tmp_path / f"{i}.dcm", burned_in=i == 0)),
        }
        for i, uid in enumerate(UIDS[:3])
    ]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    args = [
        "summary",
        "--week",
        "2026-W48",
        "--reports",
        str(tmp_path / "r.json"),
        "--out",
        str(tmp_path / "out"),
    ]
    env = {"SLICE_AGENT_IMAGES__ROOTS": json.dumps([str(tmp_path)])}
    result = CliRunner().invoke(app, [*args, "--events", str(tmp_path / "events.jsonl")], env=env)
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "out" / "2026-W48" / "members-ptx-pneumothorax-1.png").exists()  # off by default
    (tmp_path / "on.yaml").write_text("summary:\n  thumbnails: true\n")
    on = ["--config", str(tmp_path / "on.yaml"), "--events", str(tmp_path / "events.jsonl")]
    result = CliRunner().invoke(app, [*args, *on], env=env)
    assert result.exit_code == 0, result.output
    strip = Image.open(tmp_path / "out" / "2026-W48" / "members-ptx-pneumothorax-1.png")
    # square thumbnails side by side: two of them, the burned-in image left out
    assert round(strip.width / strip.height) == 2
    assert "members-ptx-pneumothorax-1.png" in (tmp_path / "out" / "2026-W48" / "summary.md").read_text()
