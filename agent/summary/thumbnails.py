"""Thumbnails of slice members for the summary, read only through the image access boundary.

An image is shown only if its pixels show no burned-in text (:func:`burned_in_text`): a
``BurnedInAnnotation`` of ``YES`` skips it without looking at the pixels, but no tag value lets an
image through unchecked (many CR and DX devices never set it).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

from agent import dicom
from agent.errors import AgentError
from agent.images import ImageAccess
from agent.report import SliceReport
from agent.summary.data import SliceKey, report_key

__all__ = ["burned_in_text", "member_thumbnails"]

log = logging.getLogger(__name__)

#: Side of the rendering an image's pixels are checked for burned-in text on.
CHECK_SIZE = 256


def member_thumbnails(
    reports: Sequence[SliceReport],
    images: Mapping[str, str],
    *,
    per_slice: int = 3,
    size: int = 96,
    access: ImageAccess | None = None,
) -> dict[SliceKey, tuple[np.ndarray, ...]]:
    """Small grey images of each slice's most probable members, where the study has an image.

    ``images`` maps study uid to a DICOM path or ``file://`` URI (from the inference events).
    Files are read only through ``access`` (:class:`~agent.images.ImageAccess`: the image roots,
    size and pixel caps, time limit); without it no image is read. Each image is read once, at
    :data:`CHECK_SIZE` pixels, checked for burned-in text there and scaled down to ``size``;
    unreadable or refused images are skipped.
    """
    policy = access if access is not None else ImageAccess()
    out: dict[SliceKey, tuple[np.ndarray, ...]] = {}
    for report in reports:
        for s in report.slices:
            found: list[np.ndarray] = []
            for m in s.members:
                if len(found) >= per_slice:
                    break
                source = images.get(m.study_uid)
                thumb = _thumbnail(source, size, policy) if source else None
                if thumb is not None:
                    found.append(thumb)
            if found:
                out[(*report_key(report), s.rank)] = tuple(found)
    return out


def _thumbnail(source: str, size: int, access: ImageAccess) -> np.ndarray | None:
    """One member's thumbnail, or None when it is tagged or found to carry text, or unreadable."""
    try:
        if dicom.burned_in_annotation(source, access=access):
            return None
        pixels = dicom.read_pixels(source, size=CHECK_SIZE, access=access)
    except (AgentError, OSError) as err:
        log.debug("thumbnail skipped: %s", type(err).__name__)
        return None
    if burned_in_text(pixels) or burned_in_text(_content(pixels)):
        log.debug("thumbnail skipped: text-like strokes at the image's edges")
        return None
    if size == CHECK_SIZE:
        return np.asarray(pixels, dtype=np.float32)
    grey = Image.fromarray(np.asarray(pixels, dtype=np.float32))
    return np.asarray(grey.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)


def _content(pixels: np.ndarray) -> np.ndarray:
    """The image without the black bands that square it (a film not square is centred on black):
    its own edges, where annotations are burned in, lie inside the square's. Black rows and
    columns at the image's own edges go with them, which only brings its edges nearer."""
    img = np.asarray(pixels)
    rows, cols = np.flatnonzero(img.any(axis=1)), np.flatnonzero(img.any(axis=0))
    if not len(rows) or not len(cols):
        return img
    return img[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def burned_in_text(
    pixels: np.ndarray,
    *,
    border: float = 0.2,
    tile: int = 16,
    contrast: float = 0.15,
    min_transitions: int = 4,
    min_rows: float = 0.25,
) -> bool:
    """Whether a grey image (values in [0, 1]) shows text-like strokes along its edges.

    Burned-in annotations (names, ids, dates) sit in the corners and along the edges, as thin
    strokes of high contrast. The bands within ``border`` of each edge are cut into square tiles
    of ``tile`` pixels; along each row of a tile, a *transition* is a step of more than
    ``contrast`` between neighbouring pixels. A line of characters crosses each row of its tiles
    several times (on and off every stroke), where anatomy or a body's outline crosses once and a
    wire or tube twice. A tile is text-like when at least ``min_rows`` of its rows have
    ``min_transitions`` transitions or more, and so do ``min_rows`` of its columns; one such tile
    is enough (an image wrongly held back costs a thumbnail, one wrongly shown may show a name).

    Examples
    --------
    >>> smooth = np.tile(np.linspace(0.0, 1.0, 128), (128, 1))
    >>> burned_in_text(smooth)
    False
    >>> marked = smooth.copy()
    >>> marked[4:14, 4:60:3] = 1.0  # vertical strokes of a word
    >>> marked[4:14:3, 4:60] = np.where(marked[4:14:3, 4:60] > 0.5, 0.0, 1.0)
    >>> burned_in_text(marked)
    True
    """
    img = np.asarray(pixels, dtype=np.float64)
    if img.ndim != 2:
        raise AgentError(f"expected a 2-D grey image, got shape {img.shape}")
    h, w = img.shape
    band_h, band_w = max(tile, int(h * border)), max(tile, int(w * border))
    steps_x = np.abs(np.diff(img, axis=1)) > contrast
    steps_y = np.abs(np.diff(img, axis=0)) > contrast
    for y in range(0, h - tile + 1, tile // 2):
        for x in range(0, w - tile + 1, tile // 2):
            at_edge = y < band_h or y + tile > h - band_h or x < band_w or x + tile > w - band_w
            if not at_edge:
                continue
            rows = steps_x[y : y + tile, x : x + tile - 1].sum(axis=1)
            cols = steps_y[y : y + tile - 1, x : x + tile].sum(axis=0)
            if np.mean(rows >= min_transitions) >= min_rows and np.mean(cols >= min_transitions) >= min_rows:
                return True
    return False
