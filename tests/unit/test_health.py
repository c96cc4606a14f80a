"""`/healthz` and `/readyz` next to `/metrics`: the agent's liveness and readiness, as a probe sees them."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np

from agent.config import Settings
from agent.exporter import Exporter, Health
from agent.stream.sidecar import Sidecar


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


class Still:
    name, image_dim, text_dim, shared_space = "still", 2, 2, False

    def embed_images(self, images):
        return np.zeros((len(images), 2), dtype=np.float32)

    def embed_texts(self, texts):
        return np.zeros((len(texts), 2), dtype=np.float32)


def test_probes_follow_the_agents_health_and_metrics_still_serve():
    exporter = Exporter(process=False)
    server = exporter.serve("127.0.0.1", 0)
    try:
        assert _get(server.port, "/healthz")[0] == 200  # nothing attached: up
        exporter.health = lambda: Health(True, False, {"partitions_assigned": False})
        assert _get(server.port, "/healthz")[0] == 200
        status, body = _get(server.port, "/readyz")
        assert status == 503 and json.loads(body) == {"status": "unavailable", "partitions_assigned": False}
        exporter.health = lambda: Health(False, False, {})
        assert _get(server.port, "/healthz")[0] == 503
        status, body = _get(server.port, "/metrics")
        assert status == 200 and "slice_agent_events_consumed_total" in body
    finally:
        server.close()


def test_the_sidecar_is_ready_once_assigned_and_dead_when_its_loop_stops(tmp_path):
    now = [1000.0]
    settings = Settings(stream={"store_path": tmp_path / "state.sqlite", "reports_dir": tmp_path / "r"})
    exporter = Exporter(process=False)
    sidecar = Sidecar(settings, Still(), exporter=exporter, clock=lambda: now[0])
    try:
        assert exporter.health is not None
        first = exporter.health()
        assert first.live and not first.ready and first.detail["store"] == "ok"
        sidecar.assigned_at = now[0]
        assert exporter.health().ready
        now[0] += 61  # the event loop has not ticked for a minute
        late = exporter.health()
        assert not late.live and not late.ready and late.detail["heartbeat_age_seconds"] == 61.0
    finally:
        sidecar.close()
