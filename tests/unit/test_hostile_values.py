"""Every field of an event is written by whoever sends it. A stray class does not become the
audited one; a model name or class shows in a log line only as a plain identifier; a value that
no describer foresaw leaves its case without that modality, and stops nothing."""

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


def test_a_value_that_fails_its_description_leaves_the_case_without_it(tmp_path, monkeypatch):
    """Fault injection at the describer: a metadata value that makes ``metadata_sentence`` raise
    (as an age of 10**400 did, every time) failed each batch it was in, and the arrival worker
    took the same batch again forever. Now its case is embedded without metadata, dead-lettered
    as ``unembeddable`` (the kind named, not the value), and the other cases are embedded."""
    from agent import dicom

    real = dicom.metadata_sentence

    def fragile(meta):
        if meta.get("Manufacturer") == "boom":
            raise OverflowError("a value no describer foresaw")
        return real(meta)

    monkeypatch.setattr(dicom, "metadata_sentence", fragile)
    settings = Settings(
        modalities=("metadata",),
        stream={"store_path": ":memory:", "reports_dir": tmp_path / "r"},
    )
    made = Sidecar(settings, Lengths(), clock=lambda: 1.8e9)
    try:
        events = [e for i in range(6) for e in _pair(i, "ptx", "cxr")]
        events[4]["metadata"] = {"ViewPosition": "AP", "Manufacturer": "boom"}
        _feed(made, events)
        assert made.arrival.drain() == 6
        assert made.store.sizes()["unembedded"] == 0
        letters = made.store.dead_letter_counts()
        assert letters == {"unembeddable": 1}
        (letter,) = made.store.unsent_dead_letters()
        assert "boom" not in letter.message and "metadata" in letter.message
    finally:
        made.close()


def test_a_failing_statement_names_none_of_its_parameters(sidecar, caplog):
    """An error in the store (here a table gone, as a lost connection or a full disk would fail
    a write) is logged with its traceback: its statement's parameters (study ids, the model name
    from the events) were printed in it, under a headline that withheld the name."""
    from sqlalchemy import text

    name = "DOE^JANE MRN0012345"
    _feed(sidecar, [e for i in range(60) for e in _pair(i, "ptx" if i % 4 == 0 else "normal", name)])
    with sidecar.store.engine.begin() as conn:
        conn.execute(text("ALTER TABLE refits RENAME TO refits_gone"))
    with caplog.at_level(logging.INFO, logger="agent"):
        sidecar.refit(name)
    assert "failed" in caplog.text
    assert "DOE" not in caplog.text and "1.2.826.0.1." not in caplog.text
