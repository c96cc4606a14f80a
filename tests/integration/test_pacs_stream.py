"""The stream fetches images from a real Orthanc (DICOMweb) by UID, on the real broker.

- Inferences that carry only UIDs are audited on the image modality with the same vectors and the
  same slices as the same files read from disk, and both find the planted slice: a third of the
  studies show a bright block, and the classifier calls a finding on most of them though none has one.
- Orthanc stopped for 30 s and started again loses no sample: every image is embedded in the end.
- An event that carries a URL is never followed: nothing but the configured PACS is asked for
  anything, and each such event is dead-lettered and counted.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from harness import Orthanc, stream_settings, wait_for, write_config
from hostile_files import dataset, write
from pydicom.uid import generate_uid

from agent.embed import SqliteCache
from agent.stream import publish_file

#: A window of this size holds 40 planted studies, about 20 per fold: enough for the held-out test
#: (``audit.min_slice_size`` members of the class in the held-out fold) to see the slice.
N_STUDIES = 120
#: Error rates inside the planted group (false positives) and outside it.
GROUP_ERROR, BASE_ERROR = 0.7, 0.05
#: Backoff of the tests: the first retry after 1 s, none more than 4 s apart.
RETRY = {"retry_initial_seconds": 1.0, "retry_multiplier": 2.0, "retry_max_seconds": 4.0}


def _images(folder: Path, n: int, seed: int) -> list[tuple[Path, bool]]:
    """``n`` small CR images of their own study and series; a third carry a bright block (the slice).

    The UIDs are derived from ``seed``: a stream's folds are drawn from a hash of the study UIDs,
    so the same images give the same audit on every run.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        pixels = rng.integers(0, 1500, (64, 64), dtype=np.uint16)
        bright = i % 3 == 0
        if bright:
            pixels[8:56, 8:56] = rng.integers(3500, 4095, (48, 48), dtype=np.uint16)
        ds = dataset(64, 64)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = (
            generate_uid(entropy_srcs=[str(seed), str(i), level]) for level in ("study", "series")
        )
        ds.PatientID = f"P{i:04d}"
        out.append((write(ds, folder / f"{i:03d}.dcm", pixels), bright))
    return out


def _config(tmp_path: Path, tansu: Any, embed_cache: Path, name: str, root: Path, pacs: str) -> Path:
    config = write_config(
        tmp_path / name,
        bootstrap=tansu.bootstrap,
        name=name,
        embed_cache=embed_cache,
        refit_every_labels=N_STUDIES,
        refit_every_seconds=10**6,
        refit_min_samples=20,
    )
    data = yaml.safe_load(config.read_text())
    data["modalities"] = ["image"]
    data["images"] = {"roots": [str(root)], "time_limit_seconds": 120}
    data["pacs"] = {"base_url": pacs, "connect_timeout_seconds": 2.0, **RETRY}
    config.write_text(yaml.safe_dump(data))
    return config


def _inference(model: str, study: str, at: datetime, prediction: str, **image: str) -> dict[str, Any]:
    return {
        "type": "inference",
        "event_id": f"{model}-{study}",
        "study_uid": study,
        "model": model,
        "prediction": prediction,
        "timestamp": at.isoformat(),
        **image,
    }


def _label(study: str, at: datetime, label: str) -> dict[str, Any]:
    return {
        "type": "label",
        "event_id": f"l-{study}",
        "study_uid": study,
        "label": label,
        "timestamp": at.isoformat(),
    }


def _publish(events: list[dict[str, Any]], path: Path, config: Path, *, create: bool = True) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    publish_file(path, stream_settings(config), create_topics=create)


def _rows(config: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of the agent's store, read beside it; none before the agent has created its tables."""
    path = stream_settings(config).store_path
    if not path.exists():
        return []
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60) as conn:
        try:
            return conn.execute(sql).fetchall()
        except sqlite3.OperationalError as err:
            if "no such table" in str(err):
                return []
            raise


def _report(config: Path, model: str) -> dict[str, Any] | None:
    files = sorted((stream_settings(config).reports_dir / model).glob("*/refit-*.json"))
    return json.loads(files[-1].read_text()) if files else None


class Trap:
    """A listener on 127.0.0.1 that records every connection made to it (none should be)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.connections = 0
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def _slices(report: dict[str, Any]) -> list[tuple[Any, ...]]:
    """What two audits of the same window must share: each slice's figures, its members in rank
    order, and its names (those that passed the held-out check and those that did not)."""
    return [
        (
            s["size"],
            s["error_rate"],
            s["rest_error_rate"],
            s["p_value"],
            s["error_precision_at_10"],
            s["slice_class"],
            tuple(m["study_uid"] for m in s["members"]),
            tuple(t["token"] for t in s["tokens"]),
            tuple(t["token"] for t in s["rejected_tokens"]),
        )
        for s in report["slices"]
    ]


def _assert_finds_the_planted_group(report: dict[str, Any], planted: set[str]) -> None:
    """The rank-1 slice is the planted group: its first ten members and most of the rest."""
    assert report["slices"], f"no significant slice in {report['window']}"
    top = report["slices"][0]
    members = [m["study_uid"] for m in top["members"]]
    assert sum(m in planted for m in members[:10]) >= 9, top
    assert sum(m in planted for m in members) >= 0.8 * len(members), top
    assert top["p_value"] <= 0.05 and top["error_rate"] > top["rest_error_rate"], top


def test_uid_only_inferences_are_audited_like_files_and_urls_are_never_followed(
    tansu, orthanc: Orthanc, agents, embed_cache, tmp_path
):
    root = tmp_path / "images"
    images = _images(root, N_STUDIES, seed=5)
    uids = [orthanc.upload(path) for path, _ in images]
    config = _config(tmp_path, tansu, embed_cache, "pacs", root, orthanc.base_url)
    trap = Trap()
    rng = np.random.default_rng(7)
    start = datetime.now(UTC) - timedelta(hours=2)
    inferences, labels = [], []
    for i, ((path, bright), (study, series, instance)) in enumerate(zip(images, uids, strict=True)):
        at = start + timedelta(minutes=i)
        # The bright block is no finding, but the classifier mostly calls one: false positives.
        label = "pos" if rng.random() < 0.3 and not bright else "neg"
        wrong = rng.random() < (GROUP_ERROR if bright else BASE_ERROR)
        prediction = ("neg" if label == "pos" else "pos") if wrong else label
        inferences.append(_inference("disk", study, at, prediction, image=str(path)))
        inferences.append(_inference("pacs", study, at, prediction, series_uid=series, image_uid=instance))
        labels.append(_label(study, at + timedelta(minutes=5), label))
    url = f"http://127.0.0.1:{trap.port}"
    study0, series0, instance0 = uids[0]
    hostile = [
        _inference("url", "h1", start, "pos", image=f"{url}/wado?requestType=WADO"),
        _inference("url", "h2", start, "pos", series_uid=series0, image_uid=f"{url}/instances/1"),
        _inference("url", f"{url}/studies/1", start, "pos", series_uid=series0, image_uid=instance0),
        {
            **_inference("url", study0, start, "pos", series_uid=series0, image_uid=instance0),
            "retrieve_url": f"{url}/studies/{study0}",
            "metadata": {"RetrieveURL": url, "Modality": "CR"},
        },
    ]
    agent = agents(config, tmp_path / "agent.log")
    agent.start()
    try:
        _publish(inferences + hostile, tmp_path / "inferences.jsonl", config)
        # Every image embedded before the labels come: the one refit sees every vector.
        wait_for(
            lambda: (
                _rows(config, "SELECT COUNT(*) FROM inferences WHERE embedded = 1") == [(2 * N_STUDIES + 3,)]
            ),
            timeout=300,
            what="every image embedded",
            diagnose=agent.tail,
        )
        _publish(labels, tmp_path / "labels.jsonl", config, create=False)
        reports = wait_for(
            lambda: (a, b) if (a := _report(config, "disk")) and (b := _report(config, "pacs")) else None,
            timeout=300,
            what="a refit of both models",
            diagnose=agent.tail,
        )
        dead = dict(_rows(config, "SELECT reason, COUNT(*) FROM dead_letters GROUP BY reason"))
        keys = dict(
            ((model, study), key)
            for model, study, key in _rows(config, "SELECT model, study_uid, image_key FROM inferences")
        )
    finally:
        assert agent.stop() == 0, agent.tail()
        trap.close()

    # The same pixels (a vector's key is a digest of them), so the same vector, whether read from
    # disk or fetched by UID; the vector is in the embedding cache, and no pixels are kept.
    for study, _, _ in uids:
        assert keys[("pacs", study)] is not None and keys[("pacs", study)] == keys[("disk", study)]
    cache = SqliteCache(embed_cache)
    assert all(v is not None for v in cache.get_many([keys[("pacs", s)] for s, _, _ in uids]))
    disk, pacs = reports
    assert pacs["modalities"] == disk["modalities"] == ["image"]
    assert pacs["window"]["n"] == disk["window"]["n"] == N_STUDIES
    assert pacs["window"]["n_errors"] == disk["window"]["n_errors"]
    # Both find the planted group, and the same inputs give the same audit.
    planted = {study for (_, bright), (study, _, _) in zip(images, uids, strict=True) if bright}
    _assert_finds_the_planted_group(disk, planted)
    _assert_finds_the_planted_group(pacs, planted)
    assert _slices(pacs) == _slices(disk)
    # Never followed: the trap saw no connection; each URL is dead-lettered (or ignored, where the
    # event names its image by UIDs and the URL sits in a field the agent does not read).
    assert trap.connections == 0
    assert dead == {"image_refused": 2, "wrong_type": 1}
    assert keys[("url", study0)] == keys[("pacs", study0)]
    assert "Traceback" not in agent.log.read_text(errors="replace")


def test_a_pacs_away_for_30_s_loses_no_sample(tansu, orthanc: Orthanc, agents, embed_cache, tmp_path):
    n = 20
    root = tmp_path / "images"
    images = _images(root, n, seed=11)
    uids = [orthanc.upload(path) for path, _ in images]
    config = _config(tmp_path, tansu, embed_cache, "away", root, orthanc.base_url)
    start = datetime.now(UTC) - timedelta(hours=1)
    events = []
    for i, (study, series, instance) in enumerate(uids):
        at = start + timedelta(minutes=i)
        label = "pos" if i % 2 else "neg"
        events.append(_inference("m", study, at, label, series_uid=series, image_uid=instance))
        events.append(_label(study, at + timedelta(minutes=1), label))
    agent = agents(config, tmp_path / "agent.log")
    agent.start()
    try:
        orthanc.stop()
        stopped = time.monotonic()
        _publish(events, tmp_path / "events.jsonl", config)
        # Ingest goes on while the PACS is away: every event is stored and joined.
        wait_for(
            lambda: _rows(config, "SELECT COUNT(*) FROM samples") == [(n,)],
            timeout=120,
            what="every sample joined while the PACS is away",
            diagnose=agent.tail,
        )
        wait_for(
            lambda: _rows(config, "SELECT COUNT(*) FROM inferences WHERE fetch_failures >= 2") == [(n,)],
            timeout=120,
            what="every fetch failed and retried while the PACS is away",
            diagnose=agent.tail,
        )
        assert _rows(config, "SELECT COUNT(*) FROM inferences WHERE embedded = 1") == [(0,)]
        time.sleep(max(0.0, 30.0 - (time.monotonic() - stopped)))
        orthanc.start()
        wait_for(
            lambda: _rows(config, "SELECT COUNT(*) FROM inferences WHERE image_key IS NOT NULL") == [(n,)],
            timeout=180,
            what="every image embedded once the PACS is back",
            diagnose=agent.tail,
        )
        dead = _rows(config, "SELECT reason, COUNT(*) FROM dead_letters GROUP BY reason")
        waiting = _rows(config, "SELECT COUNT(*) FROM inferences WHERE next_fetch_at IS NOT NULL")
    finally:
        assert agent.stop() == 0, agent.tail()
    assert dead == [] and waiting == [(0,)]
    assert "Traceback" not in agent.log.read_text(errors="replace")
