"""Model names and class labels are written by whoever sends events: a stray class does not become
the audited one, and neither shows in a log line unless it is a plain identifier."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from agent.config import Settings
from agent.stream import Message
from agent.stream.sidecar import Sidecar

T = "2026-11-29T10:00:00Z"


class Lengths:
    """Texts as (1, their length): enough for a refit to run."""

    name, image_dim, text_dim, shared_space = "lengths", 2, 2, False

    def embed_images(self, images):
        return np.ones((len(images), 2), dtype=np.float32)

    def embed_texts(self, texts):
        return np.array([[1.0, len(t)] for t in texts], dtype=np.float32).reshape(-1, 2)


def _pair(i: int, cls: str, model: str) -> list[dict]:
    study = f"1.2.826.0.1.{i}"
    return [
        {"type": "inference", "event_id": f"i{i}", "study_uid": study, "model": model, "prediction": cls}
        | {"timestamp": T, "metadata": {"ViewPosition": "AP" if i % 2 else "PA"}},
        {"type": "label", "event_id": f"l{i}", "study_uid": study, "label": cls, "timestamp": T},
    ]


@pytest.fixture
def sidecar(tmp_path):
    settings = Settings(
        stream={"store_path": ":memory:", "reports_dir": tmp_path / "r", "embed_on_arrival": False}
    )
    made = Sidecar(settings, Lengths(), clock=lambda: 1.8e9)
    yield made
    made.close()


def _feed(sidecar: Sidecar, events: list[dict]) -> None:
    sidecar.ingest([Message(f"t:0:{n}", json.dumps(e).encode()) for n, e in enumerate(events)])


def test_one_stray_class_does_not_become_the_audited_one(sidecar, caplog):
    """With no target configured the audit takes the rarest class; one inference and its label
    carrying an identifier as their class were that rarest class, and the finding's audit became
    an audit of one case (its class in every refit line and metric)."""
    events = [e for i in range(60) for e in _pair(i, "ptx" if i % 4 == 0 else "normal", "cxr")]
    _feed(sidecar, [*events, *_pair(99, "MRN0012345", "cxr")])
    with caplog.at_level(logging.INFO):
        sidecar.refit("cxr")
    assert "target=ptx" in caplog.text
    assert "MRN0012345" not in caplog.text


def test_a_model_name_that_is_not_an_identifier_never_reaches_a_log_line(sidecar, caplog):
    name = "DOE^JANE MRN0012345"
    _feed(sidecar, _pair(1, "ptx", name))
    with caplog.at_level(logging.DEBUG, logger="agent"):
        sidecar.refit(name)
    assert "refit of withheld-" in caplog.text  # the skipped refit is still told, by a digest
    assert "DOE" not in caplog.text and "MRN" not in caplog.text
