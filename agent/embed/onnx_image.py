"""EfficientNet-Lite0's pooled features run by ONNX Runtime: the same weights, one native call per batch.

On a CPU, torch runs this network's depthwise convolutions slowly: on 32 images of 224 px at one
thread, torch took 2.97 s and ONNX Runtime 0.42 s for features within 1.2e-5 of each other (on
values up to 5.5). The resizing and normalisation stay in torch (:class:`DefaultEmbedder`); only
the network moves. The graph is exported from the torch model built from the package's weights
(built only then: a kept graph needs no torch model) and kept as :mod:`agent.embed.graphs`
describes, under the weights' SHA-256 and the input size.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from agent.embed.graphs import default_graph_dir, export_module, file_digest, open_graph, session_options
from agent.errors import EmbedderError

__all__ = ["GRAPH_VERSION", "OnnxImageTower", "image_graph_path"]

log = logging.getLogger(__name__)

#: Part of every image graph's file name: raised when the export changes.
GRAPH_VERSION = 1


def image_graph_path(weights: Path, image_size: int, graph_dir: Path) -> Path:
    """Where the graph of ``weights`` at ``image_size`` pixels is kept."""
    digest = file_digest(weights)
    return graph_dir / f"efficientnet-lite0-{digest[:24]}-{image_size}px-v{GRAPH_VERSION}.onnx"


def _export(model: Any, image_size: int) -> bytes:
    import torch

    class Features(torch.nn.Module):
        def __init__(self, net: Any) -> None:
            super().__init__()
            self.net = net

        def forward(self, pixels: Any) -> Any:
            return self.net.extract_features(pixels).mean(dim=(2, 3))

    pixels = torch.rand(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    axes = {"pixels": {0: "batch"}, "features": {0: "batch"}}
    return export_module(Features(model).eval(), (pixels,), ["pixels"], ["features"], axes)


class OnnxImageTower:
    """EfficientNet-Lite0's global-average pooled features in ONNX Runtime on the CPU.

    Parameters
    ----------
    build_model
        Builds the torch model from ``weights``; called only to export, when no kept graph loads.
    weights
        The weights file the model was built from; its digest names the graph.
    image_size
        Side of the square input in pixels.
    graph_dir
        Where the graph is kept; None: :func:`agent.embed.graphs.default_graph_dir`.
    threads
        Intra-op threads; None: one per core.
    """

    def __init__(
        self,
        build_model: Callable[[], Any],
        weights: Path,
        image_size: int,
        *,
        graph_dir: Path | None = None,
        threads: int | None = None,
    ) -> None:
        started = time.perf_counter()
        self.image_size = image_size
        self._session, self.source = open_graph(
            image_graph_path(weights, image_size, graph_dir or default_graph_dir()),
            lambda: _export(build_model(), image_size),
            session_options(threads),
            "image",
        )
        inputs = self._session.get_inputs()
        shape = list(inputs[0].shape)
        if [i.name for i in inputs] != ["pixels"] or shape[1:] != [3, image_size, image_size]:
            raise EmbedderError(
                f"expected the image graph to read (n, 3, {image_size}, {image_size}), got {shape}"
            )
        log.info("image graph ready (%s) in %.1f s", self.source, time.perf_counter() - started)

    def features(self, pixels: NDArray[np.float32]) -> NDArray[np.float32]:
        """(n, 1280) pooled features of a normalised (n, 3, S, S) batch."""
        out = self._session.run(None, {"pixels": np.ascontiguousarray(pixels, dtype=np.float32)})[0]
        return np.asarray(out, dtype=np.float32)
