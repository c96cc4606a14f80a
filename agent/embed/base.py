"""The embedder interface that every model wrapper implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Embedder"]


@runtime_checkable
class Embedder(Protocol):
    """Turns images and texts into float32 row vectors.

    Images are 2-D float arrays in [0, 1] (a grey-level radiograph, as returned by
    :func:`agent.dicom.read_pixels`); the embedder resizes and normalises them itself.

    ``shared_space`` is True only when image and text vectors live in one space and their
    inner product means something (a CLIP-style model). The default embedder has two
    separate towers and says so.
    """

    @property
    def name(self) -> str: ...

    @property
    def image_dim(self) -> int: ...

    @property
    def text_dim(self) -> int: ...

    @property
    def shared_space(self) -> bool: ...

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray: ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...
