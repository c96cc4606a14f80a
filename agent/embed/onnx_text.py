"""all-MiniLM-L6-v2 run by ONNX Runtime: the weights, tokenizer and pooling of sentence-transformers,
one native call per batch.

Why beside the torch tower:

- **Start-up.** Importing sentence-transformers takes about 10 s on a 2-core sidecar (it pulls in
  much of transformers); onnxruntime and tokenizers take 0.3 s. A batch audit pays it on every run.
- **The interpreter lock.** A torch forward pass is a few hundred operator calls, each of which
  needs the lock between kernels; beside a busy event loop the embedder waits for it. ONNX Runtime
  releases it once per batch.

The arithmetic is the same float32 model: vectors differ from the torch tower's by float rounding
(about 3e-7 per component, tested), so both share a name and a cache entry.

The graph is exported once from the package's own ``model.safetensors`` and kept as
:mod:`agent.embed.graphs` describes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from agent.embed.graphs import default_graph_dir, export_module, file_digest, open_graph, session_options
from agent.errors import EmbedderError, ModelFilesMissingError

__all__ = ["GRAPH_VERSION", "OnnxTextTower", "graph_path"]

log = logging.getLogger(__name__)

#: Part of every text graph's file name: raised when the export changes (opset, inputs, attention).
GRAPH_VERSION = 1
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def graph_path(model_dir: Path, graph_dir: Path) -> Path:
    """Where the graph of the weights in ``model_dir`` is kept: named by their SHA-256."""
    digest = file_digest(model_dir / "model.safetensors")
    return graph_dir / f"minilm-{digest[:24]}-v{GRAPH_VERSION}.onnx"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelFilesMissingError(f"expected a readable JSON file at {path}, got: {err}") from err


def _check_pipeline(model_dir: Path) -> int:
    """The sentence-transformers pipeline this tower reproduces, checked; returns the maximum length.

    The tower implements Transformer -> mean pooling -> L2 normalisation only. A model folder that
    asks for anything else (CLS pooling, no normalisation, a dense head) is refused, so the torch
    tower runs it instead of a silently different one.
    """
    modules = _read_json(model_dir / "modules.json")
    pooling = _read_json(model_dir / "1_Pooling" / "config.json")
    config = _read_json(model_dir / "sentence_bert_config.json")
    if not isinstance(modules, list) or not isinstance(pooling, dict) or not isinstance(config, dict):
        raise EmbedderError(f"expected the sentence-transformers configuration files in {model_dir}")
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules if isinstance(m, dict)]
    if kinds != ["Transformer", "Pooling", "Normalize"]:
        raise EmbedderError(f"expected Transformer, Pooling, Normalize in {model_dir}, got {kinds}")
    modes = {k for k, v in pooling.items() if k.startswith("pooling_mode") and v is True}
    if modes != {"pooling_mode_mean_tokens"}:
        raise EmbedderError(f"expected mean pooling only in {model_dir}, got {sorted(modes)}")
    if config.get("do_lower_case"):  # sentence-transformers would lower-case before the tokenizer
        raise EmbedderError(f"expected do_lower_case false in {model_dir}, got true")
    max_length = config.get("max_seq_length")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise EmbedderError(f"expected an integer max_seq_length in {model_dir}, got {max_length!r}")
    return max_length


def _export(model_dir: Path) -> bytes:
    """The encoder's graph, exported from the safetensors weights in ``model_dir``."""
    try:
        import torch
        from transformers import AutoModel
    except ImportError as err:
        raise ModelFilesMissingError(
            f"expected torch and transformers to export the text graph, got ImportError ({err})"
        ) from err

    class Encoder(torch.nn.Module):
        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.last_hidden_state

    bert = AutoModel.from_pretrained(str(model_dir), local_files_only=True, attn_implementation="eager")
    # Two rows of unequal length, so the traced graph carries the padding mask's arithmetic.
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=torch.long)
    axes = {name: {0: "batch", 1: "tokens"} for name in (*_INPUTS, "last_hidden_state")}
    return export_module(
        Encoder(bert).eval(),
        (ids, (ids != 0).long(), torch.zeros_like(ids)),
        list(_INPUTS),
        ["last_hidden_state"],
        axes,
    )


class OnnxTextTower:
    """all-MiniLM-L6-v2 (the package's files) in ONNX Runtime on the CPU.

    Parameters
    ----------
    model_dir
        The sentence-transformers folder: ``model.safetensors``, ``tokenizer.json``,
        ``modules.json``, ``sentence_bert_config.json``, ``1_Pooling/config.json``.
    graph_dir
        Where the exported graph is kept; None: :func:`default_graph_dir`.
    threads
        Intra-op threads; None: one per core (and idle threads may spin, as in a batch audit).

    Raises
    ------
    ModelFilesMissingError
        If a file is missing, or onnxruntime, tokenizers (or, to export, onnx) are not installed.
    EmbedderError
        If the folder asks for a pipeline this tower does not implement, or the graph cannot be
        built or loaded.
    """

    def __init__(self, model_dir: Path, *, graph_dir: Path | None = None, threads: int | None = None) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as err:
            raise ModelFilesMissingError(
                f"expected tokenizers, got ImportError ({err}); install it with: pip install tokenizers"
            ) from err
        started = time.perf_counter()
        self.max_length = _check_pipeline(model_dir)
        try:
            tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        except Exception as err:  # tokenizers raises its own Exception subclass
            raise ModelFilesMissingError(f"expected {model_dir / 'tokenizer.json'}, got: {err}") from err
        tokenizer.enable_truncation(max_length=self.max_length)
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self._session, self.source = open_graph(
            graph_path(model_dir, graph_dir or default_graph_dir()),
            lambda: _export(model_dir),
            session_options(threads),
            "text",
        )
        names = {i.name for i in self._session.get_inputs()}
        if names != set(_INPUTS):
            raise EmbedderError(f"expected the text graph's inputs {sorted(_INPUTS)}, got {sorted(names)}")
        log.info("text graph ready (%s) in %.1f s", self.source, time.perf_counter() - started)

    def encode(self, texts: Sequence[str], batch_size: int) -> NDArray[np.float32]:
        """Unit-norm mean-pooled vectors of ``texts``, in their order.

        Texts are batched by token length (a batch is padded to its longest text), as
        sentence-transformers does.
        """
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        encodings = self._tokenizer.encode_batch(list(texts))
        order = np.argsort([-len(e.ids) for e in encodings], kind="stable")
        out: NDArray[np.float32] | None = None
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = max(len(encodings[i].ids) for i in rows)
            feed = {name: np.zeros((len(rows), width), dtype=np.int64) for name in _INPUTS}
            for r, i in enumerate(rows):
                e = encodings[i]
                n = len(e.ids)
                feed["input_ids"][r, :n] = e.ids
                feed["attention_mask"][r, :n] = e.attention_mask
                feed["token_type_ids"][r, :n] = e.type_ids
            hidden = self._session.run(None, feed)[0]  # (rows, width, dim)
            mask = feed["attention_mask"][:, :, None].astype(np.float32)
            pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            if out is None:
                out = np.empty((len(texts), pooled.shape[1]), dtype=np.float32)
            out[rows] = pooled
        assert out is not None
        return out
