"""The simulated chest X-ray source: attributes show in the pixels, headers agree, reports name them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pydicom
import pytest

from agent.dicom import metadata_sentence, read_header, read_pixels
from agent.explain import tokens
from agent.images import ImageAccess
from agent.simulate.images import Case, ImageSpec, case_report, draw_case, draw_cases, render, write_dicom

SPEC = ImageSpec(size=64)


def _pair(**changes: object) -> tuple[np.ndarray, np.ndarray]:
    """The same case rendered without and with a change (same seed, so same anatomy and noise)."""
    base = Case(uid="1.2.3", seed=11, view=str(changes.pop("view", "PA")))
    plain = render(base, SPEC).astype(np.float64) / 4095
    return plain, render(dataclasses.replace(base, **changes), SPEC).astype(np.float64) / 4095


def test_cases_and_pixels_are_deterministic_by_seed():
    a = [draw_case(np.random.default_rng(3), i) for i in range(5)]
    b = [draw_case(np.random.default_rng(3), i) for i in range(5)]
    assert [c.uid for c in a] == [c.uid for c in b]
    assert all(np.array_equal(render(x, SPEC), render(y, SPEC)) for x, y in zip(a, b, strict=True))


def test_draw_cases_meets_the_condition_and_refuses_an_impossible_one():
    cases = draw_cases(np.random.default_rng(0), 20, lambda c: c.portable and c.has_devices)
    assert len(cases) == 20 and all(c.view == "AP" and c.devices for c in cases)
    assert len({c.uid for c in cases}) == 20
    with pytest.raises(ValueError, match="loosen the condition"):
        draw_cases(np.random.default_rng(0), 1, lambda c: False, max_draws=5)


def test_population_rates_come_out_near_their_settings():
    cases = [draw_case(np.random.default_rng([1, i]), i) for i in range(3000)]
    views = np.array([c.view for c in cases])
    assert abs(np.mean(views == "PA") - 0.5) < 0.03
    assert abs(np.mean([c.cardiomegaly for c in cases]) - 0.25) < 0.03
    assert np.mean([c.has_devices for c in cases if c.portable]) > np.mean(
        [c.has_devices for c in cases if c.view == "PA"]
    )


def test_devices_add_bright_thin_lines():
    plain, with_tube = _pair(devices=(("chest_tube", "left"), ("endotracheal_tube", "right")))
    brighter = (with_tube - plain) > 0.2
    assert 20 < brighter.sum() < 0.1 * plain.size  # visible, and thin


def test_cardiomegaly_widens_the_heart():
    plain, big = _pair(cardiomegaly=True, cardiomegaly_size=1.0)
    row = int(0.63 * SPEC.size)
    assert (big[row] > 0.55).sum() > (plain[row] > 0.55).sum() + 4


def test_pneumothorax_darkens_one_lung_only():
    plain, ptx = _pair(pneumothorax="left", pneumothorax_size=1.0)
    darker = (ptx - plain) < -0.05
    half = SPEC.size // 2
    # The patient's left lung is on the viewer's right of a frontal film.
    assert darker[:, half:].sum() > 100
    assert darker[:, :half].sum() == 0


def test_effusion_fills_the_costophrenic_angle():
    plain, fluid = _pair(effusion="right", effusion_size=1.0)
    n = SPEC.size
    angle = (slice(int(0.7 * n), int(0.78 * n)), slice(int(0.2 * n), int(0.3 * n)))
    assert fluid[angle].mean() > plain[angle].mean() + 0.1


def test_lateral_and_frontal_silhouettes_differ():
    frontal = render(Case(uid="1", seed=5, view="PA"), SPEC).astype(float) / 4095
    lateral = render(Case(uid="1", seed=5, view="LL"), SPEC).astype(float) / 4095
    n = SPEC.size
    rows = slice(int(0.2 * n), int(0.5 * n))
    spine = (rows, slice(int(0.76 * n), int(0.84 * n)))  # the vertebrae behind a lateral chest
    middle = (rows, slice(int(0.46 * n), int(0.54 * n)))  # the mediastinum of a frontal one
    assert lateral[spine].mean() > frontal[spine].mean() + 0.2
    assert frontal[middle].mean() > lateral[middle].mean() + 0.2


def test_dicom_header_agrees_with_the_case_and_keeps_identifiers_out_of_the_safe_read(tmp_path):
    case = dataclasses.replace(
        draw_case(np.random.default_rng(4), 0), view="AP", sex="F", age=67, name="Okafor^Priya"
    )
    path = write_dicom(case, render(case, SPEC), tmp_path / "a.dcm")
    ds = pydicom.dcmread(path)
    assert (ds.ViewPosition, ds.PatientSex, ds.PatientAge, ds.Modality) == ("AP", "F", "067Y", "CR")
    assert "PORTABLE" in ds.SeriesDescription and str(ds.PatientName) == "Okafor^Priya"
    assert ds.SOPInstanceUID == case.uid
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    header = read_header(path, access=ImageAccess(roots=(tmp_path,)))
    assert "PatientName" not in header and "PatientID" not in header
    sentence = metadata_sentence(header)
    assert "portable" in sentence and "frontal" in sentence and "sixties" in sentence
    assert "Okafor" not in sentence and "Priya" not in sentence


def test_read_pixels_gives_back_the_rendered_image(tmp_path):
    case = draw_case(np.random.default_rng(5), 0)
    pixels = render(case, SPEC)
    grey = read_pixels(
        write_dicom(case, pixels, tmp_path / "b.dcm"), size=SPEC.size, access=ImageAccess(roots=(tmp_path,))
    )
    assert np.allclose(grey, pixels / 4095, atol=2e-3)


def test_lateral_header_reads_as_lateral(tmp_path):
    case = dataclasses.replace(draw_case(np.random.default_rng(6), 0), view="LL")
    header = read_header(
        write_dicom(case, render(case, SPEC), tmp_path / "c.dcm"), access=ImageAccess(roots=(tmp_path,))
    )
    assert "lateral" in metadata_sentence(header) and "frontal" not in metadata_sentence(header)


def test_report_names_what_the_image_shows_and_scrubs_to_no_identifier():
    case = Case(
        uid="1.2.3",
        seed=21,
        view="AP",
        devices=(("chest_tube", "left"),),
        pneumothorax="left",
        pneumothorax_size=0.5,
        cardiomegaly=True,
        effusion="bilateral",
        name="Tanaka^Hiro",
        patient_id="MRN1234567",
    )
    text = case_report(case)
    assert text == case_report(case)  # deterministic
    lower = text.lower()
    assert "pneumothorax" in lower and "left" in lower
    assert any(w in lower for w in ("cardiomegaly", "enlarged"))
    assert any(w in lower for w in ("effusion", "costophrenic", "fluid"))
    words = set(tokens(text))
    assert not words & {"tanaka", "hiro", "mrn"}
    assert not any(ch.isdigit() for w in words for ch in w)


def test_reports_vary_and_mention_devices_most_of_the_time():
    cases = draw_cases(np.random.default_rng(7), 60, lambda c: c.has_devices)
    reports = [case_report(c).lower() for c in cases]
    assert len({r.split("\n")[-1] for r in reports}) > 50
    device_words = ("tube", "drain", "line", "catheter", "pacemaker", "intubated", "device", "generator")
    assert np.mean([any(w in r for w in device_words) for r in reports]) > 0.75
