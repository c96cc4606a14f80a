"""Images named by UIDs: the event contract, the store's retry schedule, and the arrival embedder
that waits for a PACS that is down and gives up after the configured time.

The PACS here is a stand-in that fails a set number of times and then serves a real DICOM file
through the image access boundary; tests/integration/test_pacs_stream.py runs a real Orthanc.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from hostile_files import dataset, write
from sqlalchemy import create_engine, inspect

from agent.dicom import read_header, read_pixels
from agent.embed import CachedEmbedder, MemoryCache
from agent.errors import EventError
from agent.events import decode_event
from agent.images import ImageAccess
from agent.pacs import FetchedImage, PacsError, RetryPolicy
from agent.store import Incoming
from agent.store.schema import _v2_to_v3
from agent.stream.embedding import ArrivalEmbedder

T = "2026-11-20T08:00:00Z"
STUDY, SERIES, INSTANCE = "1.2.826.0.1.1", "1.2.826.0.1.2", "1.2.826.0.1.3"


def inference(**fields: object) -> dict[str, object]:
    return {
        "type": "inference",
        "event_id": "i1",
        "study_uid": STUDY,
        "model": "m",
        "prediction": "pos",
        "timestamp": T,
        "series_uid": SERIES,
        "image_uid": INSTANCE,
        **fields,
    }


def test_an_inference_may_name_its_image_by_uids():
    event = decode_event(json.dumps(inference()))
    assert (event.series_uid, event.image_uid) == (SERIES, INSTANCE)


@pytest.mark.parametrize("field", ["series_uid", "image_uid"])
@pytest.mark.parametrize(
    "value", ["http://127.0.0.1:9/wado", "../../etc/passwd", "1.2.3/../4", "1." * 40 + "1", ""]
)
def test_an_image_uid_that_is_not_a_uid_is_refused_naming_the_field(field, value):
    with pytest.raises(EventError, match=f"'{field}'.*DICOM UID") as caught:
        decode_event(json.dumps(inference(**{field: value})))
    assert caught.value.reason == "wrong_type"


def test_the_v2_to_v3_migration_adds_the_columns_once(tmp_path):
    path = tmp_path / "v2.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE inferences (model TEXT, study_uid TEXT, image_key TEXT)")
    engine = create_engine(f"sqlite:///{path}")
    for _ in range(2):  # idempotent: a second run finds the columns and adds nothing
        with engine.begin() as conn:
            _v2_to_v3(conn)
    with engine.connect() as conn:
        columns = [c["name"] for c in inspect(conn).get_columns("inferences")]
    engine.dispose()
    assert columns == [
        "model",
        "study_uid",
        "image_key",
        "series_uid",
        "image_uid",
        "fetch_failures",
        "first_failure_at",
        "next_fetch_at",
    ]


class PixelMean:
    """A stand-in model: a vector from the pixels' moments (what matters is which pixels)."""

    name = "pixel-mean"
    image_dim = 2
    text_dim = 2
    shared_space = False

    def embed_images(self, images):
        return np.array([[float(i.mean()), float(i.std())] for i in images], dtype=np.float32)

    def embed_texts(self, texts):
        return np.ones((len(texts), 2), dtype=np.float32)


class FlakyPacs:
    """Down for the first ``failures`` fetches, then serves ``path`` through the image boundary."""

    def __init__(self, path: Path, failures: int, *, retryable: bool = True) -> None:
        self.data = path.read_bytes()
        self.failures = failures
        self.retryable = retryable
        self.calls: list[tuple[str, str, str]] = []

    def fetch(self, study: str, series: str, sop: str) -> FetchedImage:
        self.calls.append((study, series, sop))
        if len(self.calls) <= self.failures:
            reason = "pacs_unavailable" if self.retryable else "pacs_unauthorized"
            raise PacsError("the PACS is down", reason=reason, retryable=self.retryable)
        access = ImageAccess(time_limit_seconds=120)
        pixels = read_pixels(self.data, 32, access=access)
        return FetchedImage(pixels, read_header(self.data, access=access), len(self.data))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def arrival(store, pacs, clock, failures):
    return ArrivalEmbedder(
        store,
        CachedEmbedder(PixelMean(), MemoryCache()),
        modalities=("image", "metadata"),
        image_size=32,
        pacs=pacs,  # type: ignore[arg-type]
        retry=RetryPolicy(initial_seconds=10, multiplier=2, max_seconds=40, give_up_after_seconds=100),
        on_fetch_failure=failures.append,
        clock=clock,
    )


@pytest.fixture
def dicom_file(tmp_path):
    rng = np.random.default_rng(0)
    return write(dataset(32, 32), tmp_path / "a.dcm", rng.integers(0, 4096, (32, 32), dtype=np.uint16))


def test_a_pacs_that_is_down_makes_the_image_wait_and_nothing_is_lost(make_store, dicom_file):
    clock = Clock(1.8e9)
    store = make_store(clock=clock)
    store.apply([Incoming("t:0:0", b"", decode_event(json.dumps(inference())))])
    pacs, failures = FlakyPacs(dicom_file, failures=2), []
    worker = arrival(store, pacs, clock, failures)

    assert worker.drain() == 0  # the PACS is down: the row waits, the drain does not spin
    assert store.waiting_fetches() == 1 and failures == ["pacs_unavailable"]
    clock.now += 5
    assert worker.drain() == 0 and len(pacs.calls) == 1  # not due yet: no request
    clock.now += 5
    assert worker.drain() == 0 and len(pacs.calls) == 2  # due, down again: next try 20 s later
    clock.now += 20
    assert worker.drain() == 1 and pacs.calls == [(STUDY, SERIES, INSTANCE)] * 3

    assert store.waiting_fetches() == 0 and store.unembedded() == []
    [row] = store._run(lambda c: c.exec_driver_sql("SELECT image_key, metadata FROM inferences").fetchall())
    assert row[0] is not None and json.loads(row[1])["Modality"] == "CR"  # the vector's key, the header
    assert store.dead_letter_counts() == {}


def test_the_image_is_given_up_after_the_configured_time_with_a_counted_reason(make_store, dicom_file):
    clock = Clock(1.8e9)
    store = make_store(clock=clock)
    store.apply([Incoming("t:0:0", b"", decode_event(json.dumps(inference())))])
    pacs, failures = FlakyPacs(dicom_file, failures=1000), []
    worker = arrival(store, pacs, clock, failures)

    tries = 0
    while worker.drain() == 0:
        tries += 1
        assert tries < 20, "never gave up"
        clock.now += 40
    assert store.dead_letter_counts() == {"pacs_gave_up": 1}
    assert len(failures) == len(pacs.calls) == tries + 1
    [row] = store._run(lambda c: c.exec_driver_sql("SELECT image_key, embedded FROM inferences").fetchall())
    assert row == (None, 1)  # embedded without its image: the sample stays in the audit


def test_an_error_that_retrying_cannot_help_is_dead_lettered_at_once(make_store, dicom_file):
    clock = Clock(1.8e9)
    store = make_store(clock=clock)
    store.apply([Incoming("t:0:0", b"", decode_event(json.dumps(inference())))])
    pacs, failures = FlakyPacs(dicom_file, failures=1, retryable=False), []

    assert arrival(store, pacs, clock, failures).drain() == 1
    assert store.dead_letter_counts() == {"pacs_unauthorized": 1}


def test_a_study_uid_that_is_not_a_uid_never_reaches_the_pacs(make_store, dicom_file):
    from agent.config import PacsSettings
    from agent.pacs import PacsClient

    clock = Clock(1.8e9)
    store = make_store(clock=clock)
    event = inference(study_uid="http://169.254.169.254/latest/meta-data")
    store.apply([Incoming("t:0:0", b"", decode_event(json.dumps(event)))])
    # A real client whose root accepts no connection: a request would fail as pacs_unavailable.
    client = PacsClient(PacsSettings(base_url="http://127.0.0.1:9/dicom-web"), ImageAccess())
    failures: list[str] = []

    assert arrival(store, client, clock, failures).drain() == 1
    assert store.dead_letter_counts() == {"image_refused": 1} and failures == []
