"""Debian's Prometheus, Alertmanager and Pushgateway on 127.0.0.1, started for a test and stopped after.

The configurations are generated from the committed ones in ``deploy/``, changed only where a
test must differ from production, and every change is listed here:

- Prometheus scrapes and evaluates every second (production: 15 s) and scrapes the given targets;
- every alert rule's ``for`` becomes ``TEST_FOR`` (production: 10 minutes to 6 hours), so a test
  sees an alert reach firing in seconds; the expressions, labels and annotations are unchanged;
- Alertmanager groups after 1 s (production: 30 s) and posts to the test's own webhook receiver.

A binary that is not installed fails the test (``make system-deps`` installs them); it never skips.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
RULES = DEPLOY / "prometheus" / "rules" / "slice-agent.rules.yml"
TEST_FOR = "2s"

T = TypeVar("T")


def require(binary: str) -> str:
    """The path of an installed binary; the test fails (never skips) when it is missing."""
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} is not installed: run `make system-deps` (Debian packages)", pytrace=False)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.25) -> T:
    """Poll ``check`` until it returns something other than None/False, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (OSError, ValueError) as err:
            last_error = err
        time.sleep(interval)
    pytest.fail(
        f"timed out after {timeout:.0f} s waiting for {what} (last error: {last_error!r})", pytrace=False
    )


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode("utf-8"))


@dataclass
class Daemon:
    """A process started by a test, its address and its log."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, n: int = 30) -> str:
        lines = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@contextmanager
def _daemon(name: str, argv: list[str], url: str, ready: str, workdir: Path) -> Iterator[Daemon]:
    log = workdir / f"{name}.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, cwd=workdir)
    daemon = Daemon(name, url, proc, log)
    try:

        def is_ready() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with {proc.returncode}:\n{daemon.log_tail()}", pytrace=False)
            with urllib.request.urlopen(url + ready, timeout=2) as resp:
                return bool(resp.status == 200)

        wait_until(is_ready, timeout=30, what=f"{name} to be ready")
        yield daemon
    finally:
        daemon.stop()


# --------------------------------------------------------------------------------- configurations


def rules_for_test(out_dir: Path, for_period: str = TEST_FOR) -> Path:
    """The committed rules with every alert's ``for`` replaced by ``for_period``."""
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = for_period
    path = out_dir / "slice-agent.rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
    return path


def prometheus_config(
    out_dir: Path, *, agent: str, pushgateway: str | None, alertmanager: str, rules: Path
) -> Path:
    """The committed prometheus.yml with 1 s intervals and the test's own addresses."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(rules)]
    config["alerting"]["alertmanagers"][0]["static_configs"] = [{"targets": [alertmanager]}]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["slice-agent"]["static_configs"] = [{"targets": [agent]}]
    if pushgateway is None:
        config["scrape_configs"] = [jobs["slice-agent"]]
    else:
        jobs["pushgateway"]["static_configs"] = [{"targets": [pushgateway]}]
    path = out_dir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def alertmanager_config(out_dir: Path, webhook_url: str) -> Path:
    """The committed alertmanager.yml, grouping after 1 s, posting to ``webhook_url``."""
    config = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text(encoding="utf-8"))
    config["route"].update(group_wait="1s", group_interval="1s")
    config["receivers"][0]["webhook_configs"][0]["url"] = webhook_url
    path = out_dir / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


# -------------------------------------------------------------------------------------- services


@contextmanager
def prometheus(workdir: Path, config: Path) -> Iterator[Daemon]:
    port = free_port()
    argv = [
        require("prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    with _daemon("prometheus", argv, f"http://127.0.0.1:{port}", "/-/ready", workdir) as d:
        yield d


@contextmanager
def alertmanager(workdir: Path, config: Path) -> Iterator[Daemon]:
    port = free_port()
    argv = [
        require("prometheus-alertmanager"),
        f"--config.file={config}",
        f"--storage.path={workdir / 'alertmanager'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        "--log.level=warn",
    ]
    with _daemon("alertmanager", argv, f"http://127.0.0.1:{port}", "/-/ready", workdir) as d:
        yield d


@contextmanager
def pushgateway(workdir: Path) -> Iterator[Daemon]:
    port = free_port()
    argv = [require("prometheus-pushgateway"), f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    with _daemon("pushgateway", argv, f"http://127.0.0.1:{port}", "/-/ready", workdir) as d:
        yield d


@dataclass
class Webhook:
    """An Alertmanager webhook receiver: every JSON payload posted to it, in order."""

    url: str
    payloads: list[dict[str, Any]] = field(default_factory=list)

    def alerts(self) -> list[dict[str, Any]]:
        return [a for p in list(self.payloads) for a in p.get("alerts", [])]


@contextmanager
def webhook() -> Iterator[Webhook]:
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.append(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Webhook(f"http://127.0.0.1:{server.server_port}/alerts", received)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
