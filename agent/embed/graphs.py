"""ONNX graphs of the default embedder's towers: where they are kept, and how a session opens one.

A graph is exported once from the weights a pip package ships (torch's exporter, which needs the
``onnx`` package) and kept in a private folder under a name holding the weights' SHA-256 and the
export's version, so changed weights never meet an old graph. A damaged file is exported again;
a folder that cannot be written costs the export on every load, not the service. Nothing is
downloaded.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.errors import EmbedderError, ModelFilesMissingError
from agent.paths import private_folder

__all__ = [
    "default_graph_dir",
    "export_module",
    "file_digest",
    "import_runtime",
    "open_graph",
    "session_options",
]

log = logging.getLogger(__name__)


def default_graph_dir() -> Path:
    """``$XDG_CACHE_HOME/slice-agent/graphs``, else ``~/.cache/slice-agent/graphs``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "slice-agent" / "graphs"


def file_digest(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def import_runtime() -> Any:
    """The ``onnxruntime`` module, or :class:`ModelFilesMissingError` saying what to install."""
    try:
        import onnxruntime
    except ImportError as err:
        raise ModelFilesMissingError(
            f"expected onnxruntime, got ImportError ({err}); install it with: pip install onnxruntime"
        ) from err
    return onnxruntime


def session_options(threads: int | None) -> Any:
    """Options of a CPU session: ``threads`` intra-op threads (None: one per core, and idle threads
    may spin, as in a batch audit that runs alone; a number: they sleep, since a sidecar shares the
    cores with its event loop)."""
    ort = import_runtime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _save(graph: bytes, path: Path) -> None:
    """Write ``graph`` to ``path`` atomically (a reader never sees half a file)."""
    private_folder(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".graph-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(graph)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def open_graph(path: Path, export: Callable[[], bytes], options: Any, what: str) -> tuple[Any, str]:
    """A CPU session on the graph kept at ``path``, exported (and kept) first when it is missing or
    does not load. Returns the session and ``"cached"`` or ``"exported"``."""
    ort = import_runtime()
    providers = ["CPUExecutionProvider"]
    if path.is_file():
        try:
            return ort.InferenceSession(str(path), options, providers=providers), "cached"
        except Exception as err:  # onnxruntime raises its own Exception subclasses
            log.warning("the cached %s graph could not be loaded (%s); exporting it again", what, err)
    started = time.perf_counter()
    graph = export()
    log.info("exported the %s graph in %.1f s", what, time.perf_counter() - started)
    try:
        _save(graph, path)
    except OSError as err:
        log.warning("could not keep the %s graph in %s (%s); it is exported per load", what, path.parent, err)
    try:
        return ort.InferenceSession(graph, options, providers=providers), "exported"
    except Exception as err:
        raise EmbedderError(f"expected the exported {what} graph to load, got: {err}") from err


def export_module(
    module: Any, args: tuple[Any, ...], inputs: list[str], outputs: list[str], axes: Any
) -> bytes:
    """``module`` traced on ``args`` and written as an ONNX graph (opset 17), returned as bytes."""
    import warnings

    try:
        import onnx  # noqa: F401  (torch's exporter writes with it; fail here with a clear message)
        import torch
    except ImportError as err:
        raise ModelFilesMissingError(
            f"expected onnx and torch to export a graph, got ImportError ({err}); "
            "install it with: pip install onnx"
        ) from err
    with torch.no_grad(), warnings.catch_warnings(), tempfile.TemporaryDirectory() as work:
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
        target = Path(work) / "graph.onnx"
        torch.onnx.export(
            module,
            args,
            target,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
        return target.read_bytes()
