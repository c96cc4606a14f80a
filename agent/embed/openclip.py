"""Any open_clip model, loaded from local files only.

A CLIP-style model puts images and texts in one space, which the explainer's CLIP-score check
needs. The recommended model is BiomedCLIP
(``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``). Nothing here downloads:
a model is built from a built-in open_clip config plus a local checkpoint file, from a local
directory in the Hugging Face repository layout, or from a pre-filled Hugging Face cache.
Every file is checked before open_clip is called, so a missing file is a clear
:class:`~agent.errors.ModelFilesMissingError` rather than an attempted download.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from agent.embed.default import as_image_array, check_batch_size, check_texts
from agent.errors import ConfigError, EmbedderError, ModelFilesMissingError

if TYPE_CHECKING:
    import torch

__all__ = ["BIOMEDCLIP", "OpenClipEmbedder"]

log = logging.getLogger(__name__)

BIOMEDCLIP = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
"""The recommended model: BiomedCLIP, trained on PubMed figure-caption pairs."""

_BIOMEDCLIP_TEXT_TOWER = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
_HF_HUB = "hf-hub:"
_LOCAL_DIR = "local-dir:"
_CONFIG_FILE = "open_clip_config.json"
# The order open_clip itself prefers when a directory holds several weight files.
_WEIGHT_FILES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.pth",
    "model.pth",
)
# open_clip looks for these in a local directory; a checkpoint file passed by path may also be .pt.
_DIR_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth")
_FILE_WEIGHT_SUFFIXES = (*_DIR_WEIGHT_SUFFIXES, ".pt")
_TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)
# Seed for the random initialisation of a model built without weights, so that two runs (and
# a cache shared between them) see the same meaningless vectors.
_RANDOM_INIT_SEED = 0


@dataclass(frozen=True)
class _Source:
    """Where every part of a model comes from, all on local disk."""

    open_clip_name: str
    """Name handed to open_clip: a built-in config name or ``local-dir:PATH``."""
    model_cfg: dict[str, Any]
    checkpoint: Path | None
    """Weights file for a built-in config; None for a local directory (open_clip finds it) or random."""
    local_dir: Path | None
    text_tower_dir: Path | None
    """Directory with the config.json of a Hugging Face text tower, when the model has one."""
    tokenizer_dir: Path | None
    """Directory with Hugging Face tokenizer files, when the model uses one."""
    random_weights: bool
    label: str = field(default="")
    """What follows the '@' in the embedder's name."""


def _missing_files_help(model_name: str) -> str:
    """Say exactly what to put on disk for a model named ``model_name`` and how to pass it."""
    repo = model_name.removeprefix(_HF_HUB).removeprefix(_LOCAL_DIR)
    if model_name == BIOMEDCLIP:
        tower = _BIOMEDCLIP_TEXT_TOWER
        tokenizer = f"those of {_BIOMEDCLIP_TEXT_TOWER}, which the BiomedCLIP repository carries"
    else:
        tower = "the text tower named by text_cfg.hf_model_name in open_clip_config.json"
        tokenizer = "those of the text tower, if it is a Hugging Face model"
    if model_name.startswith(_LOCAL_DIR):
        usage = "--embedder open_clip:local-dir:/path/to/dir"
    else:
        usage = f"--embedder open_clip:{model_name}@/path/to/dir"
    return (
        f"Nothing is downloaded at run time. Provide a local directory holding the files of the "
        f"Hugging Face repository {repo}: {_CONFIG_FILE}, open_clip_pytorch_model.bin (or "
        f"open_clip_model.safetensors) and the text tower's tokenizer files (tokenizer.json or vocab.txt, "
        f"tokenizer_config.json, special_tokens_map.json: {tokenizer}), plus the config.json of {tower} "
        f"unless that is in the Hugging Face cache. Pass it as {usage}. Alternatively, on a machine "
        f"with network, pre-fill the Hugging Face cache (huggingface-cli download {repo}, and the "
        f"text tower's config.json), copy the cache here and run with HF_HUB_OFFLINE=1."
    )


def _hf_cached_dir(repo_id: str, filename: str) -> Path | None:
    """Return the snapshot directory of ``repo_id`` in the local HF cache if it holds ``filename``.

    Reads the cache only; never contacts the Hub.
    """
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id=repo_id, filename=filename)
    except ValueError:  # not a valid repo id
        return None
    if isinstance(found, str) and Path(found).is_file():
        return Path(found).parent
    return None


def _find_weights(directory: Path, suffixes: tuple[str, ...] = _DIR_WEIGHT_SUFFIXES) -> Path | None:
    """The weights file open_clip would pick in ``directory``, or None."""
    for name in _WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    candidates = sorted(p for p in directory.iterdir() if p.suffix in suffixes and p.is_file())
    candidates.sort(key=lambda p: p.suffix != ".safetensors")
    return candidates[0] if candidates else None


def _has_tokenizer_files(directory: Path) -> bool:
    return any((directory / name).is_file() for name in _TOKENIZER_FILES)


def _read_local_config(directory: Path, model_name: str) -> dict[str, Any]:
    path = directory / _CONFIG_FILE
    if not path.is_file():
        raise ModelFilesMissingError(
            f"expected {path} for open_clip model {model_name!r}, got no such file. "
            + _missing_files_help(model_name)
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise EmbedderError(f"expected {path} to be readable JSON, got: {err}") from err
    cfg = raw.get("model_cfg") if isinstance(raw, dict) else None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("embed_dim"), int):
        raise EmbedderError(
            f"expected {path} to hold an open_clip config with a 'model_cfg' object and an integer "
            f"'embed_dim', got keys {sorted(raw) if isinstance(raw, dict) else type(raw).__name__}"
        )
    return cfg


def _hf_parts(
    model_name: str, model_cfg: dict[str, Any], local_dir: Path | None
) -> tuple[Path | None, Path | None]:
    """Locate the Hugging Face text-tower config and tokenizer a model needs, on local disk.

    Looks in ``local_dir`` first, then in the local HF cache. Returns (text_tower_dir,
    tokenizer_dir); each is None when the model does not use that part.
    """
    text_cfg = model_cfg.get("text_cfg", {})
    tower = text_cfg.get("hf_model_name")
    tokenizer = text_cfg.get("hf_tokenizer_name")
    tower_dir: Path | None = None
    tokenizer_dir: Path | None = None
    if tower:
        if local_dir is not None and (local_dir / "config.json").is_file():
            tower_dir = local_dir
        else:
            tower_dir = _hf_cached_dir(str(tower), "config.json")
        if tower_dir is None:
            where = f"{local_dir / 'config.json'} nor " if local_dir is not None else ""
            raise ModelFilesMissingError(
                f"expected the config.json of text tower {tower!r} of open_clip model {model_name!r}, "
                f"found it neither in {where}the Hugging Face cache. " + _missing_files_help(model_name)
            )
    if tokenizer:
        if local_dir is not None:
            # open_clip reads the tokenizer of a local-dir model from that directory only.
            if not _has_tokenizer_files(local_dir):
                raise ModelFilesMissingError(
                    f"expected tokenizer files ({' or '.join(_TOKENIZER_FILES[:2])}) of {tokenizer!r} in "
                    f"{local_dir} for open_clip model {model_name!r}, got none. "
                    + _missing_files_help(model_name)
                )
            tokenizer_dir = local_dir
        else:
            tokenizer_dir = _hf_cached_dir(str(tokenizer), "tokenizer_config.json")
            if tokenizer_dir is None or not _has_tokenizer_files(tokenizer_dir):
                raise ModelFilesMissingError(
                    f"expected the tokenizer {tokenizer!r} of open_clip model {model_name!r} in the Hugging "
                    "Face cache, got none; put the model in a local directory instead. "
                    + _missing_files_help(model_name)
                )
    return tower_dir, tokenizer_dir


def _from_local_dir(model_name: str, directory: Path) -> _Source:
    if not directory.is_dir():
        raise ModelFilesMissingError(
            f"expected a directory at {directory} for open_clip model {model_name!r}, got "
            f"{'a file' if directory.exists() else 'nothing'}. " + _missing_files_help(model_name)
        )
    cfg = _read_local_config(directory, model_name)
    weights = _find_weights(directory)
    if weights is None:
        raise ModelFilesMissingError(
            f"expected a weights file ({', '.join(_WEIGHT_FILES[:3])}, ...) in {directory} for open_clip "
            f"model {model_name!r}, got none. " + _missing_files_help(model_name)
        )
    tower_dir, tokenizer_dir = _hf_parts(model_name, cfg, directory)
    return _Source(
        open_clip_name=_LOCAL_DIR + str(directory),
        model_cfg=cfg,
        checkpoint=None,
        local_dir=directory,
        text_tower_dir=tower_dir,
        tokenizer_dir=tokenizer_dir,
        random_weights=False,
        label=str(directory),
    )


def _resolve(model_name: str, checkpoint: str | None) -> _Source:
    """Find every file a model needs on local disk, or raise saying what is missing."""
    if not model_name or not model_name.strip():
        raise ConfigError("expected an open_clip model name, got an empty string")
    if model_name.startswith(_LOCAL_DIR):
        if checkpoint is not None:
            raise ConfigError(
                f"expected no checkpoint with a 'local-dir:' model (the directory holds the weights), "
                f"got {checkpoint!r}"
            )
        return _from_local_dir(model_name, Path(model_name.removeprefix(_LOCAL_DIR)).expanduser().resolve())

    if model_name.startswith(_HF_HUB):
        repo = model_name.removeprefix(_HF_HUB)
        if checkpoint is not None:
            path = Path(checkpoint).expanduser().resolve()
            if path.is_file():
                raise ModelFilesMissingError(
                    f"expected a directory for Hugging Face model {model_name!r} (the weights need "
                    f"{_CONFIG_FILE} and tokenizer files beside them), got the file {path}. "
                    + _missing_files_help(model_name)
                )
            return _from_local_dir(model_name, path)
        cached = _hf_cached_dir(repo, _CONFIG_FILE)
        if cached is None:
            raise ModelFilesMissingError(
                f"expected local files for open_clip model {model_name!r}, got no checkpoint directory and "
                f"no {_CONFIG_FILE} for {repo} in the Hugging Face cache. " + _missing_files_help(model_name)
            )
        return _from_local_dir(model_name, cached)

    import open_clip

    cfg = open_clip.get_model_config(model_name.replace("/", "-"))
    if cfg is None:
        raise ConfigError(
            f"expected a built-in open_clip config name (see open_clip.list_models()), "
            f"'hf-hub:ORG/NAME' or 'local-dir:PATH', got {model_name!r}"
        )
    if checkpoint is None:
        tower_dir, tokenizer_dir = _hf_parts(model_name, cfg, None)
        return _Source(
            open_clip_name=model_name,
            model_cfg=cfg,
            checkpoint=None,
            local_dir=None,
            text_tower_dir=tower_dir,
            tokenizer_dir=tokenizer_dir,
            random_weights=True,
            label="random-weights",
        )
    path = Path(checkpoint).expanduser().resolve()
    if path.is_dir():
        if (path / _CONFIG_FILE).is_file():
            return _from_local_dir(model_name, path)
        found = _find_weights(path, _FILE_WEIGHT_SUFFIXES)
        if found is None:
            raise ModelFilesMissingError(
                f"expected a weights file (*.safetensors, *.bin, *.pth, *.pt) in {path} for open_clip "
                f"model {model_name!r}, got none"
            )
        path = found
    if not path.is_file():
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        hint = (
            f"{checkpoint!r} is an open_clip download tag; download that checkpoint on a machine with "
            "network and pass the file's path instead"
            if checkpoint in tags
            else "pass the path of a local checkpoint file"
        )
        raise ModelFilesMissingError(
            f"expected a local checkpoint file for open_clip model {model_name!r}, got {checkpoint!r}, "
            f"which is not a file; nothing is downloaded at run time: {hint}"
        )
    tower_dir, tokenizer_dir = _hf_parts(model_name, cfg, None)
    return _Source(
        open_clip_name=model_name,
        model_cfg=cfg,
        checkpoint=path,
        local_dir=None,
        text_tower_dir=tower_dir,
        tokenizer_dir=tokenizer_dir,
        random_weights=False,
        label=str(path),
    )


class OpenClipEmbedder:
    """Embed images and texts into one space with an open_clip model read from local files.

    Parameters
    ----------
    model_name
        A built-in open_clip config name (``"ViT-B-32"``; see ``open_clip.list_models()``), a
        Hugging Face name such as :data:`BIOMEDCLIP` (``"hf-hub:ORG/NAME"``), or
        ``"local-dir:PATH"``.
    checkpoint
        Where the weights are. For a built-in name: a local checkpoint file (or a directory
        holding one). For an ``hf-hub:`` name: a directory in the Hugging Face repository
        layout, holding ``open_clip_config.json``, ``open_clip_pytorch_model.bin`` (or
        ``.safetensors``) and the text tower's tokenizer files, plus the text tower's
        ``config.json`` when that is not in the Hugging Face cache; None reads the same files
        from the Hugging Face cache. For a built-in name, None is refused unless
        ``allow_random_weights`` is set.
    allow_random_weights
        Build a built-in model without a checkpoint, with random weights. For plumbing tests
        only: its slices are meaningless. It logs a warning and sets :attr:`random_weights`.
    device
        Torch device to run on.
    batch_size
        Images or texts per forward pass.

    Raises
    ------
    ModelFilesMissingError
        If a file the model needs is not on local disk; the message lists what to provide.
    ConfigError
        If the model name is not a known config, or no checkpoint is given for a built-in name
        and ``allow_random_weights`` is not set.

    Notes
    -----
    Files are located and checked when the object is built; the model itself loads on first
    use (or on :meth:`load`). Grey images are replicated to three channels and quantised to
    8 bits before the model's own preprocessing (resize, centre crop, normalisation). Texts
    longer than the model's context (77 tokens for OpenAI-style CLIP, 256 for BiomedCLIP) are
    truncated. Both kinds of vector are L2-normalised float32.

    Examples
    --------
    >>> emb = OpenClipEmbedder("ViT-S-32-alt", allow_random_weights=True)  # plumbing only
    >>> emb.random_weights, emb.shared_space, emb.image_dim
    (True, True, 256)
    """

    def __init__(
        self,
        model_name: str,
        *,
        checkpoint: str | None = None,
        device: str = "cpu",
        batch_size: int = 32,
        allow_random_weights: bool = False,
    ) -> None:
        self.model_name = model_name
        self.checkpoint = checkpoint
        self.device = device
        self.batch_size = check_batch_size(batch_size)
        self._source = _resolve(model_name, checkpoint)
        if self._source.random_weights and not allow_random_weights:
            raise ConfigError(
                f"expected a checkpoint for open_clip model {model_name!r}, got none: give a local "
                f"weights file as 'open_clip:{model_name}@/path/to/checkpoint.pt' (settings "
                "embed.spec), or set embed.allow_random_weights (--allow-random-weights) to run with "
                "random weights, for plumbing tests only: their slices are meaningless"
            )
        self._lock = threading.Lock()
        self._model: Any = None
        self._preprocess: Any = None
        self._tokenizer: Any = None
        if self._source.random_weights:
            log.warning(
                "open_clip model %s has random weights (no checkpoint given): plumbing only, "
                "results are meaningless",
                model_name,
            )

    def __repr__(self) -> str:
        return (
            f"OpenClipEmbedder({self.model_name!r}, checkpoint={self.checkpoint!r}, "
            f"device={self.device!r}, batch_size={self.batch_size})"
        )

    @property
    def name(self) -> str:
        """``open_clip:NAME@WHERE``; WHERE is the weights' path, or ``random-weights``."""
        return f"open_clip:{self.model_name}@{self._source.label}"

    @property
    def random_weights(self) -> bool:
        """True when the model was built without weights: its vectors mean nothing."""
        return self._source.random_weights

    @property
    def image_dim(self) -> int:
        """Width of an image vector: the model's ``embed_dim``."""
        return int(self._source.model_cfg["embed_dim"])

    @property
    def text_dim(self) -> int:
        """Width of a text vector: the model's ``embed_dim``."""
        return int(self._source.model_cfg["embed_dim"])

    @property
    def shared_space(self) -> bool:
        """True: image and text vectors are comparable (a CLIP score)."""
        return True

    def load(self) -> None:
        """Load the model, its preprocessing and its tokenizer now instead of on first use."""
        self._get()

    def embed_images(self, images: Sequence[np.ndarray]) -> NDArray[np.float32]:
        """Embed grey-level images as unit-norm vectors.

        Parameters
        ----------
        images
            2-D float arrays in [0, 1] of any size (RGB (H, W, 3) arrays are accepted too).

        Returns
        -------
        numpy.ndarray
            float32 array of shape (len(images), image_dim), each row of unit L2 norm.
        """
        arrays = [as_image_array(image, i) for i, image in enumerate(images)]
        if not arrays:
            return np.zeros((0, self.image_dim), dtype=np.float32)
        import torch
        from PIL import Image

        model, preprocess, _ = self._get()
        out = np.empty((len(arrays), self.image_dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(arrays), self.batch_size):
                chunk = arrays[start : start + self.batch_size]
                pixels = [Image.fromarray(np.rint(a * 255.0).astype(np.uint8)).convert("RGB") for a in chunk]
                batch = torch.stack([preprocess(p) for p in pixels]).to(self.device)
                vectors = model.encode_image(batch, normalize=True)
                out[start : start + len(chunk)] = self._check_width(vectors, "image")
        return out

    def embed_texts(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Embed texts as unit-norm vectors.

        Parameters
        ----------
        texts
            Strings; longer ones are truncated to the model's context length.

        Returns
        -------
        numpy.ndarray
            float32 array of shape (len(texts), text_dim), each row of unit L2 norm.
        """
        items = check_texts(texts)
        if not items:
            return np.zeros((0, self.text_dim), dtype=np.float32)
        import torch

        model, _, tokenizer = self._get()
        out = np.empty((len(items), self.text_dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(items), self.batch_size):
                chunk = items[start : start + self.batch_size]
                tokens = tokenizer(chunk).to(self.device)
                vectors = model.encode_text(tokens, normalize=True)
                out[start : start + len(chunk)] = self._check_width(vectors, "text")
        return out

    def _check_width(self, vectors: torch.Tensor, kind: str) -> NDArray[np.float32]:
        array = vectors.float().cpu().numpy()
        expected = self.image_dim if kind == "image" else self.text_dim
        if array.ndim != 2 or array.shape[1] != expected:
            raise EmbedderError(
                f"expected {kind} vectors of width {expected} (embed_dim) from {self.name}, "
                f"got shape {array.shape}"
            )
        return array

    def _get(self) -> tuple[Any, Any, Any]:
        with self._lock:
            if self._model is None:
                self._model, self._preprocess, self._tokenizer = self._load()
            return self._model, self._preprocess, self._tokenizer

    def _load(self) -> tuple[Any, Any, Any]:
        import open_clip
        import torch

        source = self._source
        started = time.perf_counter()
        kwargs: dict[str, Any] = {
            "precision": "fp32",
            "device": self.device,
            "pretrained_image": False,
            "pretrained_text": False,
        }
        if source.text_tower_dir is not None:
            # Point the Hugging Face text tower at its local config and build it without
            # weights of its own (the CLIP checkpoint carries them), so nothing asks the Hub.
            text_cfg = dict(source.model_cfg["text_cfg"])
            text_cfg["hf_model_name"] = str(source.text_tower_dir)
            text_cfg["hf_model_pretrained"] = False
            kwargs["text_cfg"] = text_cfg
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_RANDOM_INIT_SEED)
                model, _, preprocess = open_clip.create_model_and_transforms(
                    source.open_clip_name,
                    pretrained=str(source.checkpoint) if source.checkpoint is not None else None,
                    **kwargs,
                )
            tokenizer = self._load_tokenizer()
        except (RuntimeError, OSError, ValueError, KeyError) as err:
            raise EmbedderError(f"expected to build open_clip model {self.name}, got: {err}") from err
        model.eval()
        log.info("loaded open_clip model %s in %.1f s", self.name, time.perf_counter() - started)
        return model, preprocess, tokenizer

    def _load_tokenizer(self) -> Any:
        import open_clip
        from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH, HFTokenizer

        source = self._source
        if source.tokenizer_dir is None:
            # open_clip's own BPE tokenizer; its vocabulary ships inside the package.
            return open_clip.get_tokenizer(source.open_clip_name)
        text_cfg = source.model_cfg.get("text_cfg", {})
        return HFTokenizer(
            str(source.tokenizer_dir),
            context_length=text_cfg.get("context_length", DEFAULT_CONTEXT_LENGTH),
            tokenizer_mode=text_cfg.get("tokenizer_mode"),
            **text_cfg.get("tokenizer_kwargs", {}),
        )
