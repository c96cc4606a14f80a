"""The embedder interface that every model wrapper implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Embedder", "WrappedEmbedder", "check_threads", "set_torch_threads"]


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


class WrappedEmbedder:
    """Base of embedders that add behaviour around another one (caching, locking).

    Forwards the description (name, widths, shared space) to ``inner``; subclasses define
    ``embed_images`` and ``embed_texts``.
    """

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner

    @property
    def name(self) -> str:
        """The inner embedder's name."""
        return self.inner.name

    @property
    def image_dim(self) -> int:
        """The inner embedder's image width."""
        return self.inner.image_dim

    @property
    def text_dim(self) -> int:
        """The inner embedder's text width."""
        return self.inner.text_dim

    @property
    def shared_space(self) -> bool:
        """Whether the inner embedder's image and text vectors share a space."""
        return self.inner.shared_space


def check_threads(threads: int | None) -> int | None:
    """Return ``threads`` if it is None or a positive int, else raise :class:`ConfigError`."""
    from agent.errors import ConfigError

    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"expected threads to be a positive integer or None, got {threads!r}")
    return threads


def set_torch_threads(threads: int | None) -> None:
    """Run torch's intra-op work on ``threads`` threads (None: leave torch's setting alone).

    torch keeps one pool per process, so an embedder sets it before each forward pass: on a
    sidecar of two cores, torch's default of one thread per core would compete with the
    refit's BLAS threads and with the event loop.
    """
    if threads is None:
        return
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
