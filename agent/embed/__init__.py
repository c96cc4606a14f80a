"""Embedders: images and texts to float32 vectors.

:class:`Embedder` is the protocol every model wrapper implements. :class:`DefaultEmbedder`
(EfficientNet-Lite0 + all-MiniLM-L6-v2) runs offline from pip packages, with image and text in
two separate spaces; :class:`OpenClipEmbedder` runs any open_clip model (BiomedCLIP
recommended) from local files, with image and text in one space. :class:`CachedEmbedder` wraps
either with a :class:`MemoryCache` or a :class:`SqliteCache` so no input is embedded twice.
:func:`make_embedder` builds one from a spec such as ``"default"`` or
``"open_clip:NAME@CHECKPOINT"``. Importing this package does not import torch; models load on
first use.
"""

from agent.embed.base import Embedder
from agent.embed.cache import CachedEmbedder, MemoryCache, SqliteCache
from agent.embed.default import DefaultEmbedder
from agent.embed.factory import make_embedder
from agent.embed.openclip import OpenClipEmbedder

__all__ = [
    "CachedEmbedder",
    "DefaultEmbedder",
    "Embedder",
    "MemoryCache",
    "OpenClipEmbedder",
    "SqliteCache",
    "make_embedder",
]
