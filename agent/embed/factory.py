"""Build an embedder from its one-line spec, as given on the command line or in settings."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal, NamedTuple

from agent.embed.base import Embedder
from agent.embed.default import DefaultEmbedder
from agent.embed.openclip import OpenClipEmbedder
from agent.errors import ConfigError

__all__ = ["EmbedderSpec", "make_embedder", "parse_spec"]

log = logging.getLogger(__name__)

_OPEN_CLIP = "open_clip:"
_EXPECTED = "expected 'default' or 'open_clip:NAME[@CHECKPOINT]'"


class EmbedderSpec(NamedTuple):
    """A parsed embedder spec."""

    kind: Literal["default", "open_clip"]
    name: str | None
    """The open_clip model name; None for the default embedder."""
    checkpoint: str | None
    """What followed the last '@', if anything."""


def parse_spec(spec: str) -> EmbedderSpec:
    """Split an embedder spec into (kind, name, checkpoint).

    NAME may itself contain ':' (``hf-hub:org/name``), so the checkpoint is whatever follows
    the last '@'.

    Parameters
    ----------
    spec
        ``"default"``, ``"open_clip:NAME"`` or ``"open_clip:NAME@CHECKPOINT"``.

    Raises
    ------
    ConfigError
        If the spec has another form, or an empty name or checkpoint.

    Examples
    --------
    >>> parse_spec("default")
    EmbedderSpec(kind='default', name=None, checkpoint=None)
    >>> parse_spec("open_clip:hf-hub:org/model@/models/dir")
    EmbedderSpec(kind='open_clip', name='hf-hub:org/model', checkpoint='/models/dir')
    """
    if not isinstance(spec, str):
        raise ConfigError(f"{_EXPECTED}, got {spec!r}")
    text = spec.strip()
    if text == "default":
        return EmbedderSpec("default", None, None)
    if not text.startswith(_OPEN_CLIP):
        raise ConfigError(f"{_EXPECTED}, got {spec!r}")
    rest = text.removeprefix(_OPEN_CLIP)
    name, at, checkpoint = rest.rpartition("@")
    if not at:
        name, checkpoint = rest, ""
    name, checkpoint = name.strip(), checkpoint.strip()
    if not name:
        raise ConfigError(f"{_EXPECTED}, got {spec!r} with an empty NAME")
    if at and not checkpoint:
        raise ConfigError(f"{_EXPECTED}, got {spec!r} with an empty CHECKPOINT after '@'")
    return EmbedderSpec("open_clip", name, checkpoint or None)


def make_embedder(
    spec: str,
    *,
    device: str = "cpu",
    batch_size: int = 32,
    allow_random_weights: bool = False,
    threads: int | None = None,
    text_int8: bool = False,
    runtime: str = "onnx",
    graph_dir: Path | None = None,
) -> Embedder:
    """Build the embedder a spec names.

    Parameters
    ----------
    spec
        ``"default"`` (EfficientNet-Lite0 + all-MiniLM-L6-v2, offline, two separate spaces),
        ``"open_clip:NAME@CHECKPOINT"`` (a local checkpoint file, or a local directory for
        ``hf-hub:`` names) or ``"open_clip:NAME"`` (``hf-hub:`` names from the local Hugging
        Face cache; built-in names only with ``allow_random_weights``).
    device
        Torch device to run on.
    batch_size
        Images or texts per forward pass.
    allow_random_weights
        Let ``"open_clip:NAME"`` without a checkpoint build random weights (plumbing tests
        only; settings ``embed.allow_random_weights``). Refused otherwise.
    threads
        torch threads of the default embedder (``embed.threads``); None leaves torch's default.
    text_int8
        Run the default embedder's text tower in int8 on CPU (``embed.text_int8``).
    runtime, graph_dir
        The default embedder's runtime and ONNX graph folder (``embed.runtime``,
        ``embed.graph_dir``): see :class:`DefaultEmbedder`.

    Returns
    -------
    Embedder
        A :class:`DefaultEmbedder` or an :class:`OpenClipEmbedder`; models load on first use.

    Raises
    ------
    ConfigError
        If the spec is malformed, names an unknown model, or names a built-in model without a
        checkpoint while ``allow_random_weights`` is False.
    ModelFilesMissingError
        If the files an open_clip model needs are not on local disk.

    Examples
    --------
    >>> make_embedder("default").name
    'default:efficientnet-lite0-224px+all-MiniLM-L6-v2'
    """
    kind, name, checkpoint = parse_spec(spec)
    if kind == "default" or name is None:
        return DefaultEmbedder(
            device=device,
            batch_size=batch_size,
            threads=threads,
            text_int8=text_int8,
            runtime=runtime,
            graph_dir=graph_dir,
        )
    log.debug("building open_clip embedder %s (checkpoint %s)", name, checkpoint)
    return OpenClipEmbedder(
        name,
        checkpoint=checkpoint,
        device=device,
        batch_size=batch_size,
        allow_random_weights=allow_random_weights,
    )
