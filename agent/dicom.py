"""DICOM headers to safe text, DICOM pixels to a display-ready grey image.

Two jobs sit here, both at the edge of the agent:

* :func:`read_header` and :func:`metadata_sentence` turn a header into the few acquisition
  facts the slice explainer may use (modality, view, body part, sex, age band, portable,
  manufacturer). Both work from a whitelist (:data:`SAFE_TAGS`): names, ids, dates, accession
  numbers, physicians, institutions and UIDs are never copied out, whatever the input holds.
* :func:`read_pixels` turns the first frame of an image into a float32 square in [0, 1] that
  looks as it would on a reading-room display: modality LUT, then VOI LUT or window, then
  MONOCHROME1 inversion.

Files are opened only through the image access boundary (:mod:`agent.images`): pass an
:class:`~agent.images.ImageAccess` with the configured roots and caps. Every failure to read a
path is one uniform :class:`agent.errors.ImageRefusedError` (reason ``image_refused``) that does
not tell whether the file exists. Other errors are :class:`agent.errors.DicomError`; their
messages name the source by its base name only, never by its directory or by anything read from
the header.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO, TypeAlias
from urllib.parse import unquote, urlparse

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi, apply_windowing
from pydicom.pixels.utils import pixel_array

from agent.errors import DicomError, ImageRefusedError
from agent.images import Deadline, ImageAccess, check_file_meta, refuse

__all__ = [
    "SAFE_TAGS",
    "DicomSource",
    "age_band",
    "burned_in_annotation",
    "header_values",
    "metadata_sentence",
    "read_header",
    "read_pixels",
    "safe_metadata",
]

log = logging.getLogger(__name__)

DicomSource: TypeAlias = "str | os.PathLike[str] | bytes | Dataset"
"""What the readers accept: a path (or ``file://`` URI), the file's bytes, or a parsed dataset."""

SAFE_TAGS: tuple[str, ...] = (
    "Modality",
    "ViewPosition",
    "BodyPartExamined",
    "PatientSex",
    "PatientAge",
    "Manufacturer",
    "SeriesDescription",
    "StudyDescription",
    "ImageType",
)
"""DICOM keywords that :func:`read_header` copies out; everything else is dropped."""

PORTABLE_KEY = "Portable"
"""Key of the derived flag that :func:`read_header` adds when a portable acquisition is hinted."""

_PORTABLE_HINT = re.compile(r"(?<![A-Z0-9])PORT(?:ABLE)?(?![A-Z0-9])")
_PORTABLE_SOURCES = ("SeriesDescription", "StudyDescription", "ImageType")
_WORD_SPLIT = re.compile(r"[\W_]+")
_AGE = re.compile(r"^\s*(\d{1,3}(?:\.\d+)?)\s*([DWMY]?)\s*$", re.IGNORECASE)
_MAX_AGE_YEARS = 130.0
_DECADES = ("teens", "twenties", "thirties", "forties", "fifties", "sixties", "seventies", "eighties")
_INSTALL_HINT = (
    "install a decoder for it: pylibjpeg with pylibjpeg-libjpeg and pylibjpeg-openjpeg, or python-gdcm"
)

# Modality code -> (what the picture is called, how it was acquired).
_MODALITIES: dict[str, tuple[str, str]] = {
    "CR": ("radiograph", "computed radiography"),
    "DX": ("radiograph", "digital radiography"),
    "RG": ("radiograph", "radiographic imaging"),
    "IO": ("radiograph", "intra-oral radiography"),
    "PX": ("radiograph", "panoramic radiography"),
    "MG": ("mammogram", "mammography"),
    "RF": ("image", "radiofluoroscopy"),
    "XA": ("angiogram", "x-ray angiography"),
    "CT": ("CT scan", "computed tomography"),
    "MR": ("MR scan", "magnetic resonance"),
    "PT": ("PET scan", "positron emission tomography"),
    "NM": ("scan", "nuclear medicine"),
    "BMD": ("scan", "bone densitometry"),
    "US": ("image", "ultrasound"),
    "ES": ("image", "endoscopy"),
    "XC": ("photograph", "external camera"),
    "OP": ("photograph", "ophthalmic photography"),
    "OCT": ("scan", "optical coherence tomography"),
    "SM": ("image", "slide microscopy"),
    "SEG": ("image", "segmentation"),
    "RTIMAGE": ("image", "radiotherapy imaging"),
    "RTDOSE": ("dose map", "radiotherapy dose"),
    "OT": ("image", "other modality"),
}

# ViewPosition code -> words. Frontal projections say so, so that "frontal" and "lateral" are
# tokens the explainer can contrast.
_VIEWS: dict[str, str] = {
    "PA": "PA view, frontal",
    "AP": "AP view, frontal",
    "LL": "lateral view",
    "RL": "lateral view",
    "LAT": "lateral view",
    "LATERAL": "lateral view",
    "LLD": "decubitus view",
    "RLD": "decubitus view",
    "LLO": "oblique view",
    "RLO": "oblique view",
    "LAO": "oblique view",
    "RAO": "oblique view",
    "OBL": "oblique view",
    "OBLIQUE": "oblique view",
    "CC": "craniocaudal view",
    "MLO": "mediolateral oblique view",
    "ML": "mediolateral view",
    "LM": "lateromedial view",
}

# BodyPartExamined defined terms (PS3.16 Annex L) and common vendor spellings -> words.
_BODY_PARTS: dict[str, str] = {
    "CHEST": "chest",
    "THORAX": "chest",
    "LUNG": "chest",
    "ABDOMEN": "abdomen",
    "ABDOMENPELVIS": "abdomen and pelvis",
    "CHESTABDOMEN": "chest and abdomen",
    "CHESTABDPELVIS": "chest, abdomen and pelvis",
    "PELVIS": "pelvis",
    "HEAD": "head",
    "SKULL": "skull",
    "BRAIN": "brain",
    "HEADNECK": "head and neck",
    "NECK": "neck",
    "SPINE": "spine",
    "CSPINE": "cervical spine",
    "TSPINE": "thoracic spine",
    "LSPINE": "lumbar spine",
    "SSPINE": "sacral spine",
    "WHOLESPINE": "whole spine",
    "WHOLEBODY": "whole body",
    "EXTREMITY": "extremity",
    "SHOULDER": "shoulder",
    "ARM": "arm",
    "ELBOW": "elbow",
    "FOREARM": "forearm",
    "WRIST": "wrist",
    "HAND": "hand",
    "HIP": "hip",
    "LEG": "leg",
    "KNEE": "knee",
    "ANKLE": "ankle",
    "FOOT": "foot",
    "BREAST": "breast",
    "HEART": "heart",
    "JAW": "jaw",
}

_SEX = {"M": "male", "MALE": "male", "F": "female", "FEMALE": "female", "O": "other", "OTHER": "other"}
_PRONOUN = {"male": "his", "female": "her", "other": "their"}

# Words that say what kind of company a manufacturer is, not which one.
_CORPORATE_WORDS = frozenset(
    {
        "ag", "co", "company", "corp", "corporation", "gmbh", "health", "healthcare",
        "imaging", "inc", "incorporated", "international", "limited", "ltd", "medical", "sa",
        "solutions", "system", "systems", "technologies", "technology", "the",
    }
)  # fmt: skip


# --------------------------------------------------------------------------------------- reading


def _source_name(source: DicomSource) -> str:
    """A name for ``source`` fit for an error message: a base name, never a directory."""
    if isinstance(source, Dataset):
        filename = getattr(source, "filename", None)
        return Path(filename).name if isinstance(filename, str) and filename else "<dataset>"
    if isinstance(source, bytes | bytearray | memoryview):
        return "<bytes>"
    return Path(_as_path(source)).name or "<path>"


def _as_path(source: str | os.PathLike[str]) -> str:
    path = os.fspath(source)
    if path.startswith("file://"):
        return unquote(urlparse(path).path)
    return path


def _parse(target: BinaryIO, name: str, *, header_only: bool) -> Dataset:
    """Parse an open DICOM file; raise :class:`DicomError` on anything that is not usable DICOM."""
    try:
        ds = pydicom.dcmread(target, stop_before_pixels=header_only)
    except InvalidDicomError as err:
        raise DicomError(
            f"{name}: not a DICOM file (expected a 128-byte preamble, 'DICM' and file meta information)"
        ) from err
    except Exception as err:  # pydicom raises a zoo of types on corrupt input
        raise DicomError(
            f"{name}: cannot parse the DICOM data set ({type(err).__name__}); "
            "the file is truncated or corrupt"
        ) from err
    if not ds.file_meta.get("TransferSyntaxUID"):
        raise DicomError(
            f"{name}: incomplete file meta information (no Transfer Syntax UID); the file is truncated"
        )
    if len(ds) == 0:
        raise DicomError(f"{name}: no data set after the file meta information; the file is truncated")
    return ds


def _parse_bounded(
    fh: BinaryIO, name: str, access: ImageAccess, deadline: Deadline, *, header_only: bool
) -> Dataset:
    """The file meta, then the header, checked against the caps before the pixel data is read."""
    check_file_meta(fh)
    head = _parse(fh, name, header_only=True)
    if header_only:
        return head
    access.check_header(head)
    deadline.check("header")
    fh.seek(0)
    ds = _parse(fh, name, header_only=False)
    deadline.check("data set")
    return ds


def _read(
    source: DicomSource, access: ImageAccess | None, deadline: Deadline | None = None, *, header_only: bool
) -> Dataset:
    """Parse ``source`` through the image access boundary.

    A path is opened only through ``access`` (no roots: refused), and every failure to read it
    becomes the one uniform :class:`ImageRefusedError`. Bytes are checked against the same caps.
    """
    if isinstance(source, Dataset):
        return source
    if not isinstance(source, str | os.PathLike | bytes | bytearray | memoryview):
        raise DicomError(f"expected a path, bytes or pydicom Dataset, got {type(source).__name__}")
    policy = access if access is not None else ImageAccess()
    deadline = deadline if deadline is not None else policy.deadline()
    name = _source_name(source)
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        policy.check_size(len(data))
        return _parse_bounded(io.BytesIO(data), name, policy, deadline, header_only=header_only)
    target = _as_path(source)
    if re.match(r"^[a-z][a-z0-9+.-]*://", target, re.IGNORECASE):
        refuse("a remote URL is never followed; fetch the instance through the PACS client")
    try:
        with policy.open(target) as fh:
            return _parse_bounded(fh, name, policy, deadline, header_only=header_only)
    except ImageRefusedError:
        raise
    except (DicomError, OSError) as err:
        refuse(str(err) if isinstance(err, DicomError) else type(err).__name__)


def _text(value: object) -> str | None:
    """``value`` as stripped text: multi-values joined with a backslash; empty and NaN are None."""
    if value is None:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("ascii", errors="ignore")
    if isinstance(value, MultiValue | list | tuple):
        parts = [p for p in (_text(v) for v in value) if p]
        return "\\".join(parts) or None
    text = str(value).strip()
    return text or None


def _is_portable(texts: list[str]) -> bool:
    return any(_PORTABLE_HINT.search(t.upper()) for t in texts)


def read_header(source: DicomSource, *, access: ImageAccess | None = None) -> dict[str, str]:
    """Read the safe acquisition tags of a DICOM file, without its pixel data.

    Parameters
    ----------
    source
        A path or ``file://`` URI, the bytes of a DICOM Part 10 file, or a parsed
        :class:`pydicom.dataset.Dataset`.
    access
        The image access boundary a path is opened through (roots and caps); without it every
        path is refused, and bytes are held to the default caps.

    Returns
    -------
    dict of str to str
        The tags of :data:`SAFE_TAGS` that are present and not empty, keyed by DICOM keyword,
        as text (``ImageType`` values joined with a backslash), plus ``"Portable": "YES"`` when
        a description or the image type says PORTABLE or PORT. Nothing else: names, ids, dates,
        accession numbers, physicians, institutions and UIDs never appear.

    Raises
    ------
    ImageRefusedError
        For a path that is outside the roots, not a regular file, over a cap, or not readable
        DICOM: one uniform message, whatever the cause.
    DicomError
        If the source is not a path, bytes or dataset. A file cut inside its pixel data has a
        complete header and reads here; :func:`read_pixels` refuses it.
    """
    ds = _read(source, access, header_only=True)
    out: dict[str, str] = {}
    for keyword in SAFE_TAGS:
        text = _text(ds.get(keyword))
        if text:
            out[keyword] = text
    if _is_portable([out[k] for k in _PORTABLE_SOURCES if k in out]):
        out[PORTABLE_KEY] = "YES"
    return out


# ---------------------------------------------------------------------------------------- pixels


def _min_max(arr: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """Scale to [0, 1] by the image's own range; a constant or empty image becomes all zeros."""
    out = np.asarray(arr, dtype=np.float64)
    finite = np.isfinite(out)
    if not finite.any():
        return np.zeros(out.shape, dtype=np.float64)
    lo, hi = float(out[finite].min()), float(out[finite].max())
    if hi <= lo:
        return np.zeros(out.shape, dtype=np.float64)
    return np.nan_to_num((out - lo) / (hi - lo), nan=0.0, posinf=1.0, neginf=0.0)


def _scale_to(arr: np.ndarray, lo: float, hi: float) -> npt.NDArray[np.float64]:
    return np.clip((np.asarray(arr, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)


def _apply_voi(values: np.ndarray, ds: Dataset) -> npt.NDArray[np.float64] | None:
    """The VOI LUT or window of ``ds`` applied to modality values, scaled to [0, 1].

    The VOI output range is found by pushing the extremes of the input domain through the same
    pydicom function, so that a window maps exactly onto [0, 1] whatever the bit depth. Returns
    None when the header has no usable VOI transform.
    """
    voi_seq = ds.get("VOILUTSequence")
    item = voi_seq[0] if voi_seq else None
    if item is not None and item.get("LUTDescriptor") is not None and item.get("LUTData") is not None:
        n_entries = int(item.LUTDescriptor[0]) or 2**16
        first = int(item.LUTDescriptor[1])
        domain = np.arange(first, first + n_entries, dtype=np.int64)
        indices = values if np.issubdtype(values.dtype, np.integer) else np.rint(values).astype(np.int64)
        try:
            out, reach = apply_voi(indices, ds), apply_voi(domain, ds)
        except (ValueError, NotImplementedError, AttributeError, IndexError) as err:
            log.debug("VOI LUT Sequence unusable (%s); falling back to min-max", err)
            return None
    elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        try:
            out = apply_windowing(values, ds)
            with np.errstate(over="ignore"):
                reach = apply_windowing(np.array([-1e12, 1e12]), ds)
        except (ValueError, TypeError, AttributeError, IndexError) as err:
            log.debug("window centre/width unusable (%s); falling back to min-max", err)
            return None
    else:
        return None
    lo, hi = float(np.min(reach)), float(np.max(reach))
    if not hi > lo:
        return None
    return _scale_to(out, lo, hi)


def _to_display(frame: np.ndarray, ds: Dataset) -> npt.NDArray[np.float64]:
    """One decoded frame to display grey levels in [0, 1] (bright = dense, as on MONOCHROME2)."""
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric == "PALETTE COLOR":
        frame = apply_color_lut(frame, ds)
    if frame.ndim == 3:
        # RGB (YBR is converted to RGB while decoding): ITU-R BT.601 luma.
        rgb = frame[..., :3].astype(np.float64)
        return _min_max(rgb @ np.array([0.299, 0.587, 0.114]))
    values = apply_modality_lut(frame, ds)
    grey = _apply_voi(values, ds)
    if grey is None:
        grey = _min_max(values)
    if photometric == "MONOCHROME1":
        grey = 1.0 - grey
    return grey


def _square(grey: npt.NDArray[np.float64], size: int) -> npt.NDArray[np.float32]:
    """Resize so that the longer side is ``size`` (bilinear, antialiased), then centre on black.

    Resizing comes first, so that a long thin strip never becomes a huge square canvas: memory
    stays proportional to the image and to ``size**2``.
    """
    rows, cols = grey.shape
    side = max(rows, cols)
    if side == size and rows == cols:
        return np.asarray(grey, dtype=np.float32)
    if side != size:
        import torch  # imported here: reading headers must not pay for torch
        import torch.nn.functional as F

        shape = (max(1, round(rows * size / side)), max(1, round(cols * size / side)))
        tensor = torch.from_numpy(np.ascontiguousarray(grey, dtype=np.float32))[None, None]
        resized = F.interpolate(tensor, size=shape, mode="bilinear", align_corners=False, antialias=True)
        grey = np.clip(resized[0, 0].numpy(), 0.0, 1.0)
        rows, cols = shape
    top, left = (size - rows) // 2, (size - cols) // 2
    canvas = np.zeros((size, size), dtype=np.float32)
    canvas[top : top + rows, left : left + cols] = grey
    return canvas


def burned_in_annotation(source: DicomSource, *, access: ImageAccess | None = None) -> bool:
    """Whether the header says ``BurnedInAnnotation`` is ``YES`` (read as :func:`read_header`
    reads, through the image access boundary; the tag says nothing when absent or ``NO``, as many
    devices never set it).

    Raises
    ------
    ImageRefusedError
        As :func:`read_header`.
    """
    ds = _read(source, access, header_only=True)
    return (_text(ds.get("BurnedInAnnotation")) or "").upper() == "YES"


def read_pixels(
    source: DicomSource, size: int = 224, *, access: ImageAccess | None = None
) -> npt.NDArray[np.float32]:
    """Read the first frame of a DICOM image as a square, display-ready grey image.

    The processing follows the DICOM grayscale pipeline, in order:

    1. decode the first frame only (multi-frame files are not decoded in full);
    2. colour: a palette is applied and RGB (or YBR, converted while decoding) becomes
       ITU-R BT.601 luma, scaled by its own range; grey levels go on with steps 3 to 5;
    3. modality LUT (rescale slope and intercept, or a Modality LUT Sequence);
    4. VOI LUT Sequence if present, else the first window centre/width (LINEAR,
       LINEAR_EXACT or SIGMOID), mapped so that the window's output range is exactly [0, 1];
       without either, or with an unusable one, the image's own min-max;
    5. MONOCHROME1 is inverted, so that air is dark and bone bright as on MONOCHROME2.

    The result keeps its aspect ratio: the image is centred on a black square (the colour of
    air on a radiograph) and that square is resized with antialiased bilinear interpolation.
    An image that is already ``size`` x ``size`` is returned unresized.

    Parameters
    ----------
    source
        A path or ``file://`` URI, the bytes of a DICOM Part 10 file, or a parsed dataset
        that includes its pixel data and file meta information.
    size
        Side of the square output, in pixels.
    access
        The image access boundary (roots, file and pixel caps, time limit); without it every
        path is refused, and bytes and datasets are held to the default caps.

    Returns
    -------
    numpy.ndarray
        float32 array of shape ``(size, size)`` with values in [0, 1].

    Raises
    ------
    ImageRefusedError
        For a path, on any failure (outside the roots, not a regular file, over a cap or the
        time limit, not DICOM, no pixel data, undecodable): one uniform message.
    DicomError
        If bytes or a dataset have no pixel data, are truncated, or are compressed with a
        transfer syntax for which no decoder is installed (bytes that are not DICOM, or over a
        cap, raise :class:`ImageRefusedError`).
    ValueError
        If ``size`` is smaller than 1.
    """
    if size < 1:
        raise ValueError(f"expected size >= 1, got {size}")
    policy = access if access is not None else ImageAccess()
    deadline = policy.deadline()
    ds = _read(source, policy, deadline, header_only=False)
    if not isinstance(source, str | os.PathLike):
        return _decode(ds, _source_name(source), size, policy, deadline)
    try:
        return _decode(ds, _source_name(source), size, policy, deadline)
    except ImageRefusedError:
        raise
    except DicomError as err:
        refuse(str(err))


#: JPEG start-of-frame markers (baseline, extended, progressive, lossless, arithmetic; JPEG-LS).
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7})


def _codestream_shape(frame: bytes) -> tuple[int, int] | None:
    """``(rows, columns)`` a JPEG, JPEG-LS or JPEG 2000 codestream declares (None: not found).

    >>> sof = bytes([0xFF, 0xD8, 0xFF, 0xC0, 0, 11, 8, 0x32, 0xC8, 0x01, 0x00])
    >>> _codestream_shape(sof)  # a start of frame of 13,000 x 256
    (13000, 256)
    """
    # JPEG 2000: SOC, then SIZ; at the start of a codestream, or in its box of a JP2 file.
    j2k = frame.find(b"\xff\x4f\xff\x51", 0, 4096)
    if j2k >= 0 and len(frame) >= j2k + 24:
        width, height, left, top = (
            int.from_bytes(frame[j2k + i : j2k + i + 4], "big") for i in (8, 12, 16, 20)
        )
        return height - top, width - left
    if frame[:2] != b"\xff\xd8":
        return None
    at = 2
    while at + 9 <= len(frame) and frame[at] == 0xFF:
        marker = frame[at + 1]
        if marker == 0xFF:  # a fill byte
            at += 1
            continue
        if marker in _SOF:
            tall, wide = frame[at + 5 : at + 7], frame[at + 7 : at + 9]
            return int.from_bytes(tall, "big"), int.from_bytes(wide, "big")
        at += 2 + int.from_bytes(frame[at + 2 : at + 4], "big")
    return None


def _check_codestream(ds: Dataset, name: str) -> None:
    """Refuse compressed pixel data that would decode to more than its header declares.

    The caps hold the header's Rows x Columns; decoders follow the codestream. A JPEG of
    13,000 x 13,000 under a header of 16 x 16 took 1.6 GB before it failed, and an RLE segment of
    "repeat 128 times" runs, 7.6 MiB, decoded to 512 MB for a 256-byte image. So the first frame's
    JPEG or JPEG 2000 dimensions must not exceed the header's, and no RLE segment may be longer
    than its plane could need (twice the plane: every byte a literal run of one). That bounds an
    RLE frame's decoding to 256 times its declared size, not to the file's length times 128.
    """
    from pydicom.encaps import get_frame
    from pydicom.uid import RLELossless

    rows, columns = int(ds.Rows), int(ds.Columns)
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
        frame = get_frame(ds.PixelData, 0, number_of_frames=frames)
    except Exception as err:  # encapsulation errors come in many types on corrupt data
        raise DicomError(
            f"{name}: cannot read the first frame's encapsulated data ({type(err).__name__})"
        ) from err
    if ds.file_meta.TransferSyntaxUID == RLELossless:
        if len(frame) < 64:
            raise DicomError(f"{name}: an RLE frame shorter than its 64-byte header")
        count, *offsets = (int.from_bytes(frame[i : i + 4], "little") for i in range(0, 64, 4))
        starts, ends = offsets[:count], [*offsets[1:count], len(frame)]
        longest = 2 * rows * columns + 64  # each byte a literal run of one, at worst
        spans = zip(starts, ends, strict=True)
        if not 1 <= count <= 15 or any(not 64 <= a <= b or b - a > longest for a, b in spans):
            raise DicomError(f"{name}: RLE segments that do not fit a {rows} x {columns} image")
        return
    shape = _codestream_shape(frame)
    if shape is not None and (shape[0] > rows or shape[1] > columns or 0 in shape):
        raise DicomError(
            f"{name}: the codestream holds a {shape[0]} x {shape[1]} image where the header declares "
            f"{rows} x {columns}"
        )


def _decode(
    ds: Dataset, name: str, size: int, access: ImageAccess, deadline: Deadline
) -> npt.NDArray[np.float32]:
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DicomError(f"{name}: no pixel data (modality {_text(ds.get('Modality')) or 'unknown'})")
    access.check_header(ds)
    tsyntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if not tsyntax:
        raise DicomError(f"{name}: cannot decode pixel data without a Transfer Syntax UID in the file meta")
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError as err:
        raise DicomError(f"{name}: cannot decode pixel data: unsupported transfer syntax {tsyntax}") from err
    if not decoder.is_available:
        log.warning("cannot decode '%s' pixel data; %s", tsyntax.name, _INSTALL_HINT)
        raise DicomError(f"{name}: cannot decode '{tsyntax.name}' pixel data; {_INSTALL_HINT}")
    if tsyntax.is_compressed:
        _check_codestream(ds, name)
    try:
        frame = pixel_array(ds, index=0)
        deadline.check("decoding")
        grey = _to_display(frame, ds)
    except ImageRefusedError:
        raise
    except Exception as err:  # decoders and LUT code raise many types on corrupt data
        raise DicomError(
            f"{name}: cannot decode '{tsyntax.name}' pixel data ({type(err).__name__}: {str(err)[:200]}); "
            "the file is truncated or corrupt"
        ) from err
    if grey.ndim != 2 or grey.size == 0:
        raise DicomError(f"{name}: expected a 2-D frame after decoding, got shape {grey.shape}")
    out = _square(grey, size)
    deadline.check("display")
    return out


# ------------------------------------------------------------------------------------------ text


def age_band(age: str | int | float | None) -> str | None:
    """The age band of a DICOM age string or a number of years, as one word.

    Parameters
    ----------
    age
        A DICOM AS value (``"065Y"``, ``"006M"``, ``"010W"``, ``"003D"``; a bare number counts
        as years) or a number of years.

    Returns
    -------
    str or None
        ``"infant"`` (under one year), ``"child"`` (1 to 9), ``"teens"`` (10 to 19), then one
        word per decade from ``"twenties"`` to ``"eighties"``, and ``"nineties"`` for 90 and
        over. None for a missing, malformed, negative or implausible (over 130 years) age.

    Examples
    --------
    >>> [age_band(a) for a in ("065Y", "006M", "018M", "003D", 19, 97.5, "", "abc")]
    ['sixties', 'infant', 'child', 'infant', 'teens', 'nineties', None, None]
    """
    if age is None or isinstance(age, bool):
        return None
    years: float
    if isinstance(age, int | float):
        try:
            years = float(age)
        except OverflowError:  # an integer beyond float's range: no age
            return None
    elif isinstance(age, str):
        match = _AGE.match(age)
        if match is None:
            return None
        number, unit = float(match.group(1)), match.group(2).upper() or "Y"
        years = {"D": number / 365.25, "W": number * 7 / 365.25, "M": number / 12, "Y": number}[unit]
    else:
        return None
    if not math.isfinite(years) or years < 0 or years > _MAX_AGE_YEARS:
        return None
    if years < 1:
        return "infant"
    if years < 10:
        return "child"
    if years >= 90:
        return "nineties"
    return _DECADES[int(years // 10) - 1]


def _normalise_key(key: str) -> str:
    return re.sub(r"[^a-z]", "", key.lower())


_SAFE_KEYS = {_normalise_key(k): k for k in (*SAFE_TAGS, PORTABLE_KEY)}


def _safe_fields(meta: Mapping[str, object]) -> dict[str, object]:
    """The whitelisted fields of ``meta``; keys match DICOM keywords ignoring case and spaces."""
    fields: dict[str, object] = {}
    for key, value in meta.items():
        if not isinstance(key, str):
            continue
        keyword = key if key in _SAFE_KEYS.values() else _SAFE_KEYS.get(_normalise_key(key))
        if keyword is None or value is None:
            continue
        if keyword not in fields or key == keyword:
            fields[keyword] = value
    return fields


def safe_metadata(meta: Mapping[str, object]) -> dict[str, object]:
    """The whitelisted tags of an event's metadata, as the store keeps them (nothing else is stored).

    >>> safe_metadata({"ViewPosition": "AP", "PatientName": "DOE^JANE", "patient age": "061Y"})
    {'ViewPosition': 'AP', 'PatientAge': '061Y'}
    """
    return _safe_fields(meta)


def _letter_words(text: str) -> list[str]:
    """The words of ``text`` made of letters only; a word with a digit in it is dropped whole."""
    return [w for w in _WORD_SPLIT.split(text) if w.isalpha()]


def _body_part(value: str) -> str | None:
    mapped = _BODY_PARTS.get(re.sub(r"[^A-Z]", "", value.upper()))
    if mapped:
        return mapped
    words = _letter_words(value)[:2]
    return " ".join(w.lower() for w in words) or None


def _manufacturer(value: str) -> str | None:
    words = _letter_words(value.replace(".", ""))  # "G.E." is one word
    distinctive = [w for w in words if w.lower() not in _CORPORATE_WORDS]
    return " ".join((distinctive or words)[:2]) or None


def _patient(sex: str | None, band: str | None) -> str | None:
    if band in ("infant", "child"):
        if sex == "other":
            return f"{band} of other sex"
        return f"{sex} {band}" if sex else band
    if band is not None:
        pronoun = _PRONOUN.get(sex or "", "their")
        who = "patient of other sex" if sex == "other" else f"{sex} patient" if sex else "patient"
        return f"{who} in {pronoun} {band}"
    if sex == "other":
        return "patient of other sex"
    return f"{sex} patient" if sex else None


def _truthy(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = _text(value)
    return text is not None and text.upper() in ("YES", "Y", "TRUE", "T", "1")


def metadata_sentence(meta: Mapping[str, object]) -> str:
    """One short English sentence that describes an acquisition from its safe tags.

    Only the fields of :data:`SAFE_TAGS` (and the derived ``Portable``) are read; any other key,
    identifying or not, is ignored. Keys are DICOM keywords, matched ignoring case, spaces and
    underscores (``"View Position"`` works). Codes become words, the age becomes a band word
    (:func:`age_band`) and the manufacturer keeps at most two distinctive words of letters, so
    the sentence holds no digits. The same input always gives the same sentence.

    Parameters
    ----------
    meta
        The dict from :func:`read_header`, or the ``metadata`` of an inference event; values
        may be strings, numbers or lists.

    Returns
    -------
    str
        For example ``"Chest radiograph (computed radiography), AP view, frontal, portable,
        female patient in her sixties, Philips scanner."``; ``"No acquisition metadata."`` when
        nothing usable is present.

    Examples
    --------
    >>> metadata_sentence({"Modality": "CR", "ViewPosition": "AP", "BodyPartExamined": "CHEST",
    ...                    "PatientSex": "F", "PatientAge": "067Y", "Manufacturer": "Philips",
    ...                    "SeriesDescription": "CHEST PORTABLE", "PatientName": "Doe^Jane"})
    'Chest radiograph (computed radiography), AP view, frontal, portable, female patient in her sixties, Philips scanner.'
    >>> metadata_sentence({"PatientID": "12345"})
    'No acquisition metadata.'
    """  # noqa: E501
    fields = _safe_fields(meta)
    text = {k: _text(v) for k, v in fields.items()}
    parts: list[str] = []

    modality = _MODALITIES.get((text.get("Modality") or "").upper())
    body = _body_part(raw_body) if (raw_body := text.get("BodyPartExamined")) else None
    if modality is not None:
        noun, how = modality
        parts.append(f"{body} {noun} ({how})" if body else f"{noun} ({how})")
    elif body is not None:
        parts.append(f"{body} image")

    view = _VIEWS.get(re.sub(r"[\s_-]", "", (text.get("ViewPosition") or "").upper()))
    if view is not None:
        parts.append(view)

    if _portable(fields, text):
        parts.append("portable")

    sex = _SEX.get((text.get("PatientSex") or "").upper())
    age = fields.get("PatientAge")
    band = age_band(age if isinstance(age, str | int | float) else text.get("PatientAge"))
    patient = _patient(sex, band)
    if patient is not None:
        parts.append(patient)

    maker = _manufacturer(raw_maker) if (raw_maker := text.get("Manufacturer")) else None
    if maker is not None:
        parts.append(f"{maker} scanner")

    if not parts:
        return "No acquisition metadata."
    sentence = ", ".join(parts)
    return sentence[0].upper() + sentence[1:] + "."


def _portable(fields: Mapping[str, object], text: Mapping[str, str | None]) -> bool:
    """Whether a portable acquisition: the derived flag where present, else the descriptions."""
    if PORTABLE_KEY in fields:
        return _truthy(fields[PORTABLE_KEY])
    return _is_portable([t for k in _PORTABLE_SOURCES if (t := text.get(k))])


def header_values(meta: Mapping[str, object]) -> list[str]:
    """The acquisition's safe header values as ``field=value`` terms, one per attribute.

    The same fields and normalisations as :func:`metadata_sentence` (codes become words, the
    age a band, the manufacturer at most two words), but each attribute is its own term: in the
    sentence a view shares its words with reports ("lateral") and the age shares a clause with
    the sex, so a group that one header value defines is not one column of the sentence's words.

    >>> header_values({"Modality": "CR", "ViewPosition": "LL", "PatientSex": "F",
    ...                "PatientAge": "067Y", "Manufacturer": "Philips", "PatientName": "Doe^Jane"})
    ['modality=cr', 'view=lateral', 'sex=female', 'age=sixties', 'manufacturer=philips']
    """
    fields = _safe_fields(meta)
    text = {k: _text(v) for k, v in fields.items()}
    out: list[str] = []
    if (modality := (text.get("Modality") or "").upper()) in _MODALITIES:
        out.append(f"modality={modality.lower()}")
    if (raw_body := text.get("BodyPartExamined")) and (body := _body_part(raw_body)) is not None:
        out.append(f"body={body.lower()}")
    view = re.sub(r"[\s_-]", "", (text.get("ViewPosition") or "").upper())
    if view in _VIEWS:
        out.append(f"view={_VIEWS[view].split(' view')[0].split(',')[0].lower()}")
    if _portable(fields, text):
        out.append("portable=yes")
    if (sex := _SEX.get((text.get("PatientSex") or "").upper())) is not None:
        out.append(f"sex={sex.lower()}")
    age = fields.get("PatientAge")
    if (band := age_band(age if isinstance(age, str | int | float) else text.get("PatientAge"))) is not None:
        out.append(f"age={band}")
    if (raw_maker := text.get("Manufacturer")) and (maker := _manufacturer(raw_maker)) is not None:
        out.append(f"manufacturer={maker.lower()}")
    return out
