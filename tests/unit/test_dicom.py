"""Tests for agent.dicom on real DICOM files: pydicom's bundled set and pydicom-data."""

from __future__ import annotations

import importlib.util
import io
import re
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.pixels import get_decoder

from agent import dicom
from agent.dicom import SAFE_TAGS, age_band, header_values, metadata_sentence
from agent.errors import DicomError, ImageRefusedError
from agent.images import REFUSED_MESSAGE, ImageAccess

# Identifying attributes that must never come out of the header or the sentence.
IDENTIFYING = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "StudyDate",
    "AccessionNumber",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
)


def bundled(name: str) -> str:
    """A file that ships inside pydicom itself."""
    path = get_testdata_file(name)
    assert path is not None, f"{name} is not among pydicom's bundled test files"
    return str(path)


def store(name: str) -> str:
    """A file from the pydicom-data package (``data_store``), found without any download."""
    spec = importlib.util.find_spec("data_store")
    assert spec is not None and spec.submodule_search_locations, (
        "pydicom-data is not installed; run: pip install pydicom-data==1.0.0"
    )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    assert path.is_file(), f"{name} is missing from pydicom-data"
    return str(path)


def _store_root() -> Path:
    spec = importlib.util.find_spec("data_store")
    assert spec is not None and spec.submodule_search_locations, "pydicom-data is not installed"
    return Path(next(iter(spec.submodule_search_locations)))


#: The roots these tests read from: pydicom's bundled files, pydicom-data, and pytest's tmp_path.
ACCESS = ImageAccess(roots=(Path(pydicom.data.__file__).parent, _store_root(), Path(tempfile.gettempdir())))


def read_header(source: object) -> dict[str, str]:
    return dicom.read_header(source, access=ACCESS)  # type: ignore[arg-type]


def read_pixels(source: object, size: int = 224) -> np.ndarray:
    return dicom.read_pixels(source, size=size, access=ACCESS)  # type: ignore[arg-type]


def min_max(arr: np.ndarray) -> np.ndarray:
    arr = arr.astype(np.float64)
    return (arr - arr.min()) / (arr.max() - arr.min())


def linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 (LINEAR), written out independently of pydicom."""
    return np.clip((values.astype(np.float64) - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


@pytest.fixture(scope="module")
def chest() -> str:
    """A real PA chest radiograph: CR, MONOCHROME1, 1955 x 1841, window 15000 / 30000."""
    return store("RG1_UNCR.dcm")


# ------------------------------------------------------------------------------------ read_header


def test_header_of_the_chest_radiograph(chest):
    assert read_header(chest) == {
        "Modality": "CR",
        "ViewPosition": "PA",
        "BodyPartExamined": "CHEST",
        "PatientSex": "F",
        "Manufacturer": "Philips Medical Systems",
        "StudyDescription": "THORAX",
        "ImageType": "DERIVED\\PRIMARY",
    }


def test_header_joins_image_type_and_keeps_age_as_text():
    header = read_header(bundled("CT_small.dcm"))
    assert header["ImageType"] == "ORIGINAL\\PRIMARY\\AXIAL"
    assert header["PatientAge"] == "000Y"
    assert "ViewPosition" not in header  # absent tags are absent, not empty


def test_header_reads_every_kind_of_source_alike(chest):
    expected = read_header(chest)
    raw = Path(chest).read_bytes()
    assert read_header(Path(chest)) == expected
    assert read_header(Path(chest).as_uri()) == expected
    assert read_header(raw) == expected
    assert read_header(pydicom.dcmread(chest, stop_before_pixels=True)) == expected


def test_header_flags_portable_from_descriptions(chest):
    ds = pydicom.dcmread(chest, stop_before_pixels=True)
    ds.SeriesDescription = "CHEST PORT 1V"
    assert read_header(ds)["Portable"] == "YES"
    ds.SeriesDescription = "REPORT ATTACHED"  # PORT inside a word is not a hint
    assert "Portable" not in read_header(ds)


@pytest.mark.parametrize(
    "path",
    [
        store("RG1_UNCR.dcm"),
        store("RG3_UNCR.dcm"),
        store("US1_UNCR.dcm"),
        bundled("CT_small.dcm"),
        bundled("MR_small.dcm"),
        bundled("rtdose.dcm"),
    ],
    ids=lambda p: Path(p).name,
)
def test_identifying_values_never_leave(path):
    full = pydicom.dcmread(path, stop_before_pixels=True)
    secrets = [str(full.get(k)) for k in IDENTIFYING if full.get(k)]
    secrets += [part for part in str(full.PatientName).split("^") if len(part) >= 3]
    assert str(full.PatientName) in secrets and str(full.PatientID) in secrets

    header = read_header(path)
    assert set(header) <= {*SAFE_TAGS, "Portable"}
    # Every attribute of the file, identifying ones included, offered to the sentence builder.
    everything = {e.keyword: e.value for e in full if e.keyword and e.VR != "SQ"}
    assert "PatientName" in everything and "PatientID" in everything
    sentence = metadata_sentence(everything)
    assert sentence == metadata_sentence(header)
    # The header values the audit's term view is cut by: the same safe fields, one term each.
    values = header_values(everything)
    assert values == header_values(header)
    assert {v.split("=")[0] for v in values} <= {
        "modality",
        "body",
        "view",
        "portable",
        "sex",
        "age",
        "manufacturer",
    }
    for secret in secrets:
        assert all(secret not in value for value in header.values()), secret
        assert secret not in sentence, secret
        assert all(secret.lower() not in v for v in values), secret
    assert not re.search(r"\d", sentence)


def test_a_non_dicom_file_and_a_missing_one_are_refused_alike(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a DICOM file\n" * 20)
    seen = []
    for source in (path, tmp_path / "absent.dcm", "https://pacs.example/studies/1/series/2/instances/3"):
        for read in (read_header, read_pixels):
            with pytest.raises(ImageRefusedError) as info:
                read(source)
            assert info.value.reason == "image_refused"
            seen.append(str(info.value))
    assert set(seen) == {REFUSED_MESSAGE}
    assert str(tmp_path) not in REFUSED_MESSAGE


def test_file_cut_inside_its_file_meta_raises():
    raw = Path(bundled("MR_small.dcm")).read_bytes()
    for cut in (raw[:200], raw[:100]):
        with pytest.raises(ImageRefusedError):
            read_header(cut)


# ------------------------------------------------------------------------------------ read_pixels


def test_chest_is_windowed_then_inverted_exactly(chest):
    # Output at the padded native size is unresized, so it can be compared pixel for pixel.
    out = read_pixels(chest, size=1955)
    stored = pydicom.dcmread(chest).pixel_array
    assert stored.shape == (1955, 1841) and out.shape == (1955, 1955)
    left = (1955 - 1841) // 2
    expected = 1.0 - linear_window(stored, center=15000, width=30000)
    np.testing.assert_allclose(out[:, left : left + 1841], expected, atol=1e-6)
    assert not out[:, :left].any() and not out[:, left + 1841 :].any()  # black padding


def test_chest_looks_like_a_chest(chest):
    out = read_pixels(chest)
    assert out.shape == (224, 224) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    spine = out[60:140, 104:120].mean()
    lungs = (out[60:140, 45:85].mean() + out[60:140, 140:180].mean()) / 2
    assert spine > lungs + 0.15  # bone bright, aerated lung dark, as on a MONOCHROME2 display


def test_monochrome1_is_the_complement_of_monochrome2(chest):
    ds = pydicom.dcmread(chest)
    as_mono1 = read_pixels(ds, size=128)
    ds.PhotometricInterpretation = "MONOCHROME2"
    as_mono2 = read_pixels(ds, size=128)
    inner = slice(8, -8)  # leave out the black padding on the left and right
    np.testing.assert_allclose(as_mono1[:, inner] + as_mono2[:, inner], 1.0, atol=1e-5)


def test_window_centre_and_width_are_applied():
    path = bundled("MR_small.dcm")
    ds = pydicom.dcmread(path)
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (600.0, 1600.0)
    expected = linear_window(ds.pixel_array, center=600, width=1600)
    np.testing.assert_allclose(read_pixels(path, size=64), expected, atol=1e-6)


def test_voi_lut_sequence_is_applied():
    path = store("vlut_04.dcm")
    ds = pydicom.dcmread(path)
    item = ds.VOILUTSequence[0]
    n_entries, first, _ = item.LUTDescriptor
    lut = np.asarray(item.LUTData, dtype=np.float64)
    expected = lut[np.clip(ds.pixel_array.astype(np.int64) - first, 0, n_entries - 1)]
    expected = (expected - lut.min()) / (lut.max() - lut.min())
    np.testing.assert_allclose(read_pixels(path, size=512), expected, atol=1e-6)


def test_without_voi_the_rescaled_image_is_min_max_scaled():
    path = bundled("CT_small.dcm")
    ds = pydicom.dcmread(path)
    assert "WindowCenter" not in ds and float(ds.RescaleIntercept) == -1024
    np.testing.assert_allclose(read_pixels(path, size=128), min_max(ds.pixel_array), atol=1e-6)


def test_multi_frame_takes_the_first_frame():
    path = store("emri_small.dcm")
    frames = pydicom.dcmread(path).pixel_array
    assert frames.shape == (10, 64, 64)
    out = read_pixels(path, size=64)
    np.testing.assert_allclose(out, min_max(frames[0]), atol=1e-6)
    assert not np.allclose(out, min_max(frames[1]), atol=1e-3)


def test_rgb_becomes_luma():
    path = store("SC_rgb.dcm")
    rgb = pydicom.dcmread(path).pixel_array.astype(np.float64)
    expected = min_max(rgb @ np.array([0.299, 0.587, 0.114]))
    np.testing.assert_allclose(read_pixels(path, size=100), expected, atol=1e-6)


@pytest.mark.parametrize("name", ["examples_palette.dcm", "examples_ybr_color.dcm", "rtdose.dcm"])
def test_palette_ybr_and_dose_images_give_grey_squares(name):
    out = read_pixels(bundled(name), size=96)
    assert out.shape == (96, 96) and out.dtype == np.float32
    assert 0.0 <= out.min() < out.max() <= 1.0


def test_decodable_compression_matches_the_uncompressed_file():
    np.testing.assert_array_equal(
        read_pixels(bundled("MR_small_RLE.dcm"), size=64), read_pixels(bundled("MR_small.dcm"), size=64)
    )


def test_compression_without_a_decoder_says_what_to_install():
    path = bundled("MR_small_jpeg_ls_lossless.dcm")
    if get_decoder(pydicom.dcmread(path).file_meta.TransferSyntaxUID).is_available:
        assert read_pixels(path, size=64).shape == (64, 64)  # a JPEG-LS plugin is installed
    else:
        with pytest.raises(DicomError, match="pylibjpeg"):
            read_pixels(pydicom.dcmread(path), size=64)


def test_no_pixel_data_raises():
    with pytest.raises(DicomError, match="no pixel data"):
        read_pixels(pydicom.dcmread(bundled("reportsi.dcm")))
    with pytest.raises(ImageRefusedError):
        read_pixels(bundled("reportsi.dcm"))
    assert read_header(bundled("reportsi.dcm"))["Modality"] == "SR"


def test_truncated_pixel_data_raises_but_the_header_reads():
    path = bundled("MR_truncated.dcm")
    assert read_header(path)["Modality"] == "MR"
    with pytest.raises(ImageRefusedError):
        read_pixels(path)
    raw = Path(bundled("MR_small.dcm")).read_bytes()
    with pytest.raises(DicomError):
        read_pixels(raw[: len(raw) // 2])


def test_header_only_dataset_has_no_pixels(chest):
    with pytest.raises(DicomError, match="no pixel data"):
        read_pixels(pydicom.dcmread(chest, stop_before_pixels=True))


def test_size_must_be_positive():
    with pytest.raises(ValueError, match="size"):
        read_pixels(bundled("MR_small.dcm"), size=0)


# --------------------------------------------------------------------------------------- age_band


@pytest.mark.parametrize(
    ("age", "band"),
    [
        ("003D", "infant"),
        ("010W", "infant"),
        ("006M", "infant"),
        ("011M", "infant"),
        ("012M", "child"),
        ("000Y", "infant"),
        ("001Y", "child"),
        ("009Y", "child"),
        ("010Y", "teens"),
        ("019Y", "teens"),
        ("020Y", "twenties"),
        ("035Y", "thirties"),
        ("040Y", "forties"),
        ("059Y", "fifties"),
        ("067Y", "sixties"),
        ("070Y", "seventies"),
        ("089Y", "eighties"),
        ("090Y", "nineties"),
        ("104Y", "nineties"),
        (" 65y ", "sixties"),
        ("65", "sixties"),
        (0.5, "infant"),
        (9.9, "child"),
        (67, "sixties"),
        (97.0, "nineties"),
    ],
)
def test_age_bands(age, band):
    assert age_band(age) == band


@pytest.mark.parametrize(
    "age",
    [
        *(None, "", "Y", "65X", "-5Y", "abc", "1000Y", -1, 131, float("nan"), True),
        pytest.param(10**400, id="int-beyond-float"),
        pytest.param(-(10**400), id="negative-beyond-float"),
    ],
)
def test_invalid_ages_have_no_band(age):
    assert age_band(age) is None


# ------------------------------------------------------------------------------ metadata_sentence


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**1000), max_value=10**1000)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=60),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from([*SAFE_TAGS, "patient age", "view_position"]), _JSON, max_size=8))
def test_any_json_values_of_the_safe_tags_give_a_sentence_without_digits(meta):
    """An event's metadata is written by whoever sends it: every value JSON can hold (integers
    beyond float's range, NaN, nested lists and objects) gives a sentence, never an error."""
    sentence = metadata_sentence(meta)
    assert isinstance(sentence, str) and sentence and not re.search(r"\d", sentence)


EXAMPLE = {
    "Modality": "CR",
    "ViewPosition": "AP",
    "BodyPartExamined": "CHEST",
    "PatientSex": "F",
    "PatientAge": "067Y",
    "Manufacturer": "Philips",
    "SeriesDescription": "CHEST PORTABLE",
}


def test_sentence_of_a_portable_chest():
    assert metadata_sentence(EXAMPLE) == (
        "Chest radiograph (computed radiography), AP view, frontal, portable, "
        "female patient in her sixties, Philips scanner."
    )


def test_sentence_of_the_real_chest(chest):
    assert metadata_sentence(read_header(chest)) == (
        "Chest radiograph (computed radiography), PA view, frontal, female patient, Philips scanner."
    )


def test_lateral_and_frontal_views_are_words():
    lateral = metadata_sentence({**EXAMPLE, "ViewPosition": "LL"})
    assert "lateral" in lateral and "frontal" not in lateral
    assert metadata_sentence({"ViewPosition": "LATERAL"}) == "Lateral view."
    assert "PA view, frontal" in metadata_sentence({"ViewPosition": "PA"})


def test_sentence_is_deterministic_and_ignores_key_order():
    reordered = dict(reversed(list(EXAMPLE.items())))
    assert metadata_sentence(EXAMPLE) == metadata_sentence(reordered) == metadata_sentence(dict(EXAMPLE))


def test_sentence_accepts_event_metadata_of_any_type_and_key_spelling():
    event = {
        "modality": "DX",
        "View Position": "PA",
        "PatientSex": "M",
        "PatientAge": 44,
        "ImageType": ["ORIGINAL", "PRIMARY", "PORTABLE"],
        "Manufacturer": None,
    }
    assert metadata_sentence(event) == (
        "Radiograph (digital radiography), PA view, frontal, portable, male patient in his forties."
    )
    assert metadata_sentence({"Portable": "YES"}) == "Portable."
    assert "portable" not in metadata_sentence({"Portable": "NO", "SeriesDescription": "AP"})


def test_sentence_is_a_whitelist_without_digits():
    meta = {
        **EXAMPLE,
        "PatientName": "Doe^Jane",
        "PatientID": "MRN0042",
        "AccessionNumber": "ACC9",
        "ReferringPhysicianName": "House^Gregory",
        "InstitutionName": "General Hospital",
        "StudyDate": "20240101",
        "Manufacturer": "Acme 3000 X-Ray Systems Ltd",
        "BodyPartExamined": "LEFT 2ND FINGER",
        "ViewPosition": "AP1",
    }
    sentence = metadata_sentence(meta)
    assert not re.search(r"\d", sentence)
    for word in ("Doe", "Jane", "MRN", "ACC", "House", "Gregory", "General", "Hospital"):
        assert word not in sentence
    assert "Acme X scanner" in sentence  # letters only, corporate words dropped, two words at most


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ({}, "No acquisition metadata."),
        ({"PatientName": "Doe^Jane", "PatientID": "42"}, "No acquisition metadata."),
        ({"Modality": "", "PatientSex": None}, "No acquisition metadata."),
        ({"PatientSex": "O", "PatientAge": "003M"}, "Infant of other sex."),
        ({"PatientAge": "015Y"}, "Patient in their teens."),
        ({"Modality": "MR", "BodyPartExamined": "HEAD"}, "Head MR scan (magnetic resonance)."),
        ({"Manufacturer": "G.E. Medical Systems"}, "GE scanner."),
    ],
)
def test_sentence_of_partial_metadata(meta, expected):
    assert metadata_sentence(meta) == expected


def _encapsulated(frame: bytes, syntax: str, rows: int, columns: int) -> bytes:
    """A DICOM file of one encapsulated 8-bit grey frame, whose header declares rows x columns."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns = "CR", rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_an_rle_frame_longer_than_its_image_could_need_is_refused_before_decoding():
    """Runs of "repeat 0 128 times" decode to 128 bytes from 2: 7.6 MiB of them decoded to 512 MB
    under a header of 16 x 16 before the frame was found too long."""
    import struct

    from pydicom.uid import RLELossless

    frame = struct.pack("<16I", 1, 64, *[0] * 14) + b"\x81\x00" * 60_000
    with pytest.raises(DicomError, match="RLE segments that do not fit a 16 x 16 image"):
        dicom.read_pixels(_encapsulated(frame, RLELossless, 16, 16))


@pytest.mark.parametrize(
    ("codec", "options"), [("JPEG", {}), ("JPEG2000", {"no_jp2": True}), ("JPEG2000", {})]
)
def test_a_codestream_larger_than_its_header_is_refused_before_decoding(codec, options):
    """The caps hold the header's rows and columns; the decoder follows the codestream (a JPEG of
    13,000 x 13,000 under a 16 x 16 header took 1.6 GB before it failed)."""
    from PIL import Image
    from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

    out = io.BytesIO()
    Image.new("L", (1200, 800), 90).save(out, codec, **options)  # JPEG 2000: a codestream, or a JP2 file
    syntax = JPEGBaseline8Bit if codec == "JPEG" else JPEG2000Lossless
    with pytest.raises(DicomError, match="holds a 800 x 1200 image where the header declares 16 x 16"):
        dicom.read_pixels(_encapsulated(out.getvalue(), syntax, 16, 16))
    fits = dicom.read_pixels(_encapsulated(out.getvalue(), syntax, 800, 1200), size=32)
    assert fits.shape == (32, 32)
