"""The one way image files come in: under configured roots, regular files only, bounded in cost.

Every image path an event names passes through :class:`ImageAccess` before a byte of it is
parsed:

1. **Where.** The path is resolved (``..`` and every symlink followed) and must then lie inside
   one of the configured roots; a symlink that leads out of them is refused. With no roots
   configured, every path is refused. A URL is never followed.
2. **What.** The file is opened ``O_NONBLOCK | O_NOFOLLOW`` and checked with ``fstat`` on the
   open descriptor: only a regular file of 1 byte to ``max_file_bytes`` is read. A FIFO, a
   socket or a device returns at once from a non-blocking open and is refused, so it can never
   hang the reader; ``/proc`` files report a size of 0 and are refused as empty.
3. **How much.** Only the header is parsed first (``stop_before_pixels``); ``rows x columns x
   frames x samples x bits allocated`` must be at most ``max_pixel_bits`` before any pixel is
   decoded. Deflated data sets are refused: their inflated size is not bounded by the file size.
4. **How long.** Each image has a time limit, enforced by checks between stages (file opened,
   header parsed, data set parsed, frame decoded): an image that overruns is refused and its
   pixels are not used. The decode itself is not interrupted. It is bounded instead by the caps
   above, because every pixel decoder pydicom uses (native, RLE, JPEG, JPEG-LS, JPEG 2000) runs in
   time linear in the pixels and bytes it is given and only the first frame is decoded. A worker
   process per image was the alternative; it was not chosen because the agent runs Kafka
   client threads (``fork`` is unsafe there) and ``spawn`` costs an interpreter and its imports.

Every refusal raises :class:`~agent.errors.ImageRefusedError` with reason ``image_refused`` and the
same message, whatever the cause, so that dead letters never tell a missing file from an
unreadable, misplaced or oversized one. The cause is logged at DEBUG.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NoReturn

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset, read_preamble
from pydicom.multival import MultiValue
from pydicom.uid import DeflatedExplicitVRLittleEndian

from agent.config import ImageSettings
from agent.errors import ImageRefusedError

__all__ = [
    "IMAGE_REFUSED",
    "REFUSED_MESSAGE",
    "Deadline",
    "ImageAccess",
    "check_file_meta",
    "pixel_bits",
    "refuse",
]

log = logging.getLogger(__name__)

#: The one dead-letter reason of every refused image.
IMAGE_REFUSED = "image_refused"
#: The one message of every refused image: it says nothing about whether the file exists.
REFUSED_MESSAGE = (
    "image refused: expected a readable DICOM image under the configured image roots "
    "(images.roots) within the size, pixel and time limits"
)

_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)


def refuse(cause: str) -> NoReturn:
    """Raise the uniform refusal; ``cause`` goes to the DEBUG log only."""
    log.debug("image refused: %s", cause)
    raise ImageRefusedError(REFUSED_MESSAGE, reason=IMAGE_REFUSED)


def _meta_group_ends(tag: object, vr: object, length: object) -> bool:
    return getattr(tag, "group", 0) != 0x0002


def file_meta_syntax(fp: BinaryIO) -> str | None:
    """The Transfer Syntax UID of a Part 10 file's meta (None when absent), from the preamble and
    group 0002 alone; ``fp`` is returned to where it was. Raises what pydicom raises on input that
    is not DICOM."""
    start = fp.tell()
    try:
        read_preamble(fp, False)
        meta = read_dataset(fp, False, True, stop_when=_meta_group_ends)
    finally:
        fp.seek(start)
    tsyntax = meta.get("TransferSyntaxUID")
    return str(tsyntax) if tsyntax else None


def check_file_meta(fp: BinaryIO) -> None:
    """Refuse what is not DICOM Part 10, or is deflated, from the preamble and file meta alone.

    Reads only the preamble and group 0002, then returns ``fp`` to where it was.
    """
    try:
        tsyntax = file_meta_syntax(fp)
    except Exception as err:  # pydicom raises many types on input that is not DICOM
        refuse(f"no DICOM preamble or file meta ({type(err).__name__})")
    if not tsyntax:
        refuse("no Transfer Syntax UID in the file meta")
    if tsyntax == DeflatedExplicitVRLittleEndian:
        refuse("deflated data set: its inflated size is not bounded by the file size")


def _positive_int(ds: Dataset, keyword: str, default: int | None) -> int:
    value = ds.get(keyword, default)
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) == 1 else None
    try:
        number = int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or number < 1:
        refuse(f"header field {keyword} is missing or not a positive integer")
    return number


def pixel_bits(ds: Dataset) -> int:
    """``rows x columns x frames x samples per pixel x bits allocated`` declared by a header.

    Raises :class:`~agent.errors.ImageRefusedError` when one of them is missing or not positive.

    >>> ds = Dataset()
    >>> ds.Rows, ds.Columns, ds.BitsAllocated = 512, 256, 16
    >>> pixel_bits(ds)
    2097152
    """
    rows = _positive_int(ds, "Rows", None)
    columns = _positive_int(ds, "Columns", None)
    frames = _positive_int(ds, "NumberOfFrames", 1)
    samples = _positive_int(ds, "SamplesPerPixel", 1)
    bits = _positive_int(ds, "BitsAllocated", None)
    return rows * columns * frames * samples * bits


@dataclass(frozen=True)
class Deadline:
    """A point in monotonic time after which the image it belongs to is refused."""

    at: float

    def check(self, stage: str) -> None:
        """Refuse when the time limit has passed (``stage`` names what just finished)."""
        if time.monotonic() > self.at:
            refuse(f"time limit exceeded after {stage}")


@dataclass(frozen=True)
class ImageAccess:
    """What may be read, and how much one image may cost.

    Parameters
    ----------
    roots
        Folders an image path must resolve under (after following symlinks). Empty refuses all.
    max_file_bytes
        Larger files are refused without being read.
    max_pixel_bits
        Largest ``rows x columns x frames x samples x bits allocated`` a header may declare.
    time_limit_seconds
        Longest read and decode of one image.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as root:
    ...     access = ImageAccess(roots=(Path(root),))
    ...     access.resolve(Path(root) / ".." / "etc" / "passwd")
    Traceback (most recent call last):
    ...
    agent.errors.ImageRefusedError: image refused: expected a readable DICOM image under the configured image roots (images.roots) within the size, pixel and time limits
    """  # noqa: E501

    roots: tuple[Path, ...] = ()
    max_file_bytes: int = 256 * 2**20
    max_pixel_bits: int = 2**30
    time_limit_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.max_file_bytes < 1 or self.max_pixel_bits < 1 or not self.time_limit_seconds > 0:
            raise ValueError(
                "expected max_file_bytes >= 1, max_pixel_bits >= 1 and time_limit_seconds > 0, got "
                f"{self.max_file_bytes}, {self.max_pixel_bits}, {self.time_limit_seconds}"
            )

    @classmethod
    def from_settings(cls, settings: ImageSettings) -> ImageAccess:
        """The access policy of the ``images`` settings section."""
        return cls(
            roots=tuple(settings.roots),
            max_file_bytes=settings.max_file_bytes,
            max_pixel_bits=settings.max_pixel_bits,
            time_limit_seconds=settings.time_limit_seconds,
        )

    def deadline(self) -> Deadline:
        """A deadline that starts now."""
        return Deadline(time.monotonic() + self.time_limit_seconds)

    def resolve(self, path: str | os.PathLike[str]) -> str:
        """The real path of ``path`` when it lies inside a root; refuse otherwise."""
        if not self.roots:
            refuse("no image roots are configured (images.roots)")
        try:
            real = os.path.realpath(os.fspath(path), strict=True)
        except (OSError, ValueError) as err:
            refuse(f"cannot resolve the path ({type(err).__name__})")
        for root in self.roots:
            try:
                base = os.path.realpath(root, strict=True)
            except (OSError, ValueError):
                continue
            if real != base and os.path.commonpath((real, base)) == base:
                return real
        refuse("the path resolves outside every configured root")

    @contextmanager
    def open(self, path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
        """Open a regular file under the roots, without blocking; the caller reads at most its size."""
        real = self.resolve(path)
        try:
            fd = os.open(real, _OPEN_FLAGS)
        except OSError as err:
            refuse(f"cannot open ({err.strerror or type(err).__name__})")
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                refuse("not a regular file")
            self.check_size(info.st_size)
            handle = os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise
        with handle:
            yield handle

    def check_size(self, n_bytes: int) -> None:
        """Refuse an empty input or one larger than ``max_file_bytes``."""
        if n_bytes < 1:
            refuse("empty file")
        if n_bytes > self.max_file_bytes:
            refuse(f"{n_bytes} bytes exceed images.max_file_bytes={self.max_file_bytes}")

    def check_header(self, ds: Dataset) -> int:
        """Refuse a header whose pixel data would cost more than the caps; return its pixel bits."""
        bits = pixel_bits(ds)
        if bits > self.max_pixel_bits:
            refuse(f"{bits} pixel bits exceed images.max_pixel_bits={self.max_pixel_bits}")
        return bits
