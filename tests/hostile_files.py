"""Hostile image files, built with pydicom for the tests of the image boundary (unit and integration)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

__all__ = ["dataset", "hostile_folder", "rle_bomb", "write"]


def dataset(rows: int, columns: int, *, bits: int = 16, frames: int = 1, tsyntax=ExplicitVRLittleEndian):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = tsyntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    return ds


def write(ds: Dataset, path: Path, pixels: np.ndarray | None = None) -> Path:
    if pixels is not None:
        ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def rle_bomb(path: Path, side: int = 16384) -> Path:
    """An 8-bit RLE image that declares side x side zeros: ~4 MB on disk, side**2 bytes decoded.

    One RLE segment of replicate runs (``-127`` then the byte: 128 zeros per two bytes), wrapped
    in an encapsulated Pixel Data element with an empty basic offset table.
    """
    runs = b"\x81\x00" * (side * side // 128)
    header = np.zeros(16, dtype="<u4")
    header[0], header[1] = 1, 64
    frame = header.tobytes() + runs
    frame += b"\x00" * (len(frame) % 2)
    ds = dataset(side, side, bits=8, tsyntax=RLELossless)
    item = b"\xfe\xff\x00\xe0"
    ds.PixelData = item + b"\x00\x00\x00\x00" + item + len(frame).to_bytes(4, "little") + frame
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)
    return path


def hostile_folder(root: Path, outside: Path) -> tuple[dict[str, Path | str], dict[str, Path]]:
    """Files an image root may hold, or events may name: ``(hostile, good)`` by name.

    Hostile: a FIFO, a symlink out of the root, /proc and /dev paths, a path that climbs out, a
    truncated DICOM, an RLE bomb, a file that is not DICOM. Good: a plain image, a 16-bit strip and
    a multi-frame file, which must still be read.
    """
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    def pixels(*shape: int, top: int = 4096) -> np.ndarray:
        return rng.integers(0, top, shape, dtype=np.uint16)

    good = {
        "plain": write(dataset(64, 64), root / "plain.dcm", pixels(64, 64)),
        "strip": write(dataset(2, 3000), root / "strip.dcm", pixels(2, 3000, top=65535)),
        "frames": write(dataset(32, 32, frames=3), root / "frames.dcm", pixels(3, 32, 32)),
    }
    os.mkfifo(root / "fifo.dcm")
    outside.write_bytes(good["plain"].read_bytes())
    (root / "out.dcm").symlink_to(outside)
    whole = good["plain"].read_bytes()
    (root / "truncated.dcm").write_bytes(whole[: len(whole) // 2])
    (root / "notes.txt").write_text("not an image\n")
    hostile: dict[str, Path | str] = {
        "fifo": root / "fifo.dcm",
        "symlink_out": root / "out.dcm",
        "proc": "/proc/self/environ",
        "dev": "/dev/zero",
        "climb": str(root / ".." / outside.name),
        "truncated": root / "truncated.dcm",
        "bomb": rle_bomb(root / "bomb.dcm"),
        "not_dicom": root / "notes.txt",
        "missing": root / "missing.dcm",
    }
    return hostile, good
