"""Benchmark: workers sharing a PostgreSQL store, against one worker on SQLite (issue 8).

Two measurements in one run, each worker a ``slice-agent run`` process on a real Tansu broker and,
for the shared store, a throw-away PostgreSQL server (``deploy/postgres/pg-local``) on 127.0.0.1:

``throughput``
    One simulated stream is published whole to fresh topics; then 1, 2 or 3 workers of a fresh
    consumer group (on a fresh PostgreSQL database), or one worker on SQLite, consume it with
    embedding on arrival off and no refit due. Events per second = events / the time from the first
    event stored to every event stored and every labeled study in the window. The group joins and
    rebalances that fall inside that time are part of it (reported beside it).
``failover``
    Three workers on PostgreSQL with a short refit lease. Data is published until a refit of the
    model is in flight (its lease held, labels not yet covered); the worker holding the lease is
    killed (SIGKILL), and the time until another worker holds the lease (its refit starts) is taken,
    then the time until that refit is recorded. A replacement worker is started and the round is
    repeated with more data, so that a new refit is due.

    .venv/bin/python bench/shared_store.py --studies 3000 --out docs/bench/shared_store.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stream_throughput import (
    MODEL,
    ROOT,
    Broker,
    _config,
    _free_port,
    _machine,
    _start_agent,
    _store,
    _wait,
)

from agent.config import load_settings
from agent.simulate import StreamSpec, generate_stream, write_jsonl
from agent.store import Store
from agent.stream import ensure_topics, publish_file

PG_LOCAL = ROOT / "deploy" / "postgres" / "pg-local"
LEASE = f"refit:{MODEL}"


# --------------------------------------------------------------------------- PostgreSQL


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A PostgreSQL server of this run's own; yields its admin URL, stops and removes it at the end."""
    base = Path(tempfile.mkdtemp(prefix="shared-bench-pg-"))
    base.chmod(0o755)  # as root the server runs as `postgres`, which must reach its folder
    started = subprocess.run(
        [str(PG_LOCAL), "start", str(base / "pg"), str(_free_port())], capture_output=True, text=True
    )
    if started.returncode != 0:
        log = base / "pg" / "server.log"
        detail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        raise SystemExit(f"PostgreSQL did not start: {started.stderr.strip()}\n{detail}")
    try:
        yield started.stdout.strip()
    finally:
        subprocess.run([str(PG_LOCAL), "stop", str(base / "pg")], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def new_database(admin_url: str) -> str:
    """A new, empty database on the server; returns its URL."""
    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


# --------------------------------------------------------------------------- workers


class Group:
    """Workers of one consumer group on fresh topics (``prefix``), each in a folder of its own."""

    def __init__(self, work: Path, bootstrap: str, prefix: str, store_url: str | None, **stream: Any) -> None:
        self.work = work
        self.bootstrap = bootstrap
        self.store_url = store_url
        self.stream = {
            "group_id": f"{prefix}-group",
            "inference_topic": f"{prefix}-inference",
            "label_topic": f"{prefix}-label",
            "report_topic": f"{prefix}-report",
            "dead_letter_topic": f"{prefix}-dead-letter",
            **({"store_url": store_url} if store_url else {}),
            **stream,
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self.configs: list[Path] = []
        self.settings = load_settings(self._config(work / "publisher")).stream

    def _config(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        # Each worker its own folder (faust's data folder sits beside store_path) and embedding cache.
        path = _config(folder, self.bootstrap, folder / "cache.sqlite", **self.stream)
        data = yaml.safe_load(path.read_text())
        data["modalities"] = ["metadata"]
        path.write_text(yaml.safe_dump(data))
        return path

    def publish(self, path: Path) -> int:
        ensure_topics(self.settings)
        return sum(publish_file(path, self.settings, create_topics=False).sent.values())

    def start(self) -> subprocess.Popen[bytes]:
        folder = self.work / f"worker-{len(self.procs) + 1}"
        config = self._config(folder)
        proc = _start_agent(config, folder / "agent.log")
        self.procs.append(proc)
        self.configs.append(config)
        return proc

    def store(self) -> Store:
        return Store(self.store_url) if self.store_url else _store(self.configs[0])

    def check_alive(self, *, killed: Sequence[int] = ()) -> None:
        for proc in self.procs:
            if proc.pid not in killed and proc.poll() is not None:
                raise RuntimeError(f"worker {proc.pid} exited with {proc.returncode}")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def log_tails(self, chars: int = 1500) -> str:
        out = []
        for config in self.configs:
            log = config.parent / "agent.log"
            if log.exists():
                out.append(f"--- {log}\n{log.read_text(errors='replace')[-chars:]}")
        return "\n".join(out)


def _stream(n_studies: int, seed: int, path: Path) -> tuple[int, int]:
    """Write a simulated stream; returns (events, studies with an inference and a label)."""
    events, _ = generate_stream(StreamSpec(n_studies=n_studies, failure="devices", seed=seed))
    write_jsonl(events, path)
    inferred = {e["study_uid"] for e in events if e["type"] == "inference" and e.get("model") == MODEL}
    labeled = {e["study_uid"] for e in events if e["type"] == "label"}
    return len(events), len(inferred & labeled)


# --------------------------------------------------------------------------- throughput


def throughput(
    work: Path,
    bootstrap: str,
    events_path: Path,
    n_events: int,
    n_labeled: int,
    store_url: str | None,
    workers: int,
) -> dict[str, Any]:
    backend = "postgresql" if store_url else "sqlite"
    group = Group(
        work,
        bootstrap,
        f"t{workers}{backend[:2]}-{uuid.uuid4().hex[:6]}",
        store_url,
        embed_on_arrival=False,
        refit_every_labels=10**9,
        refit_every_seconds=1e9,
        window_size=max(5000, n_labeled),
    )
    store = None
    try:
        sent = group.publish(events_path)
        if sent != n_events:
            raise RuntimeError(f"published {sent} of {n_events} events")
        started = time.perf_counter()
        for _ in range(workers):
            group.start()
        store = group.store()

        def first() -> bool:
            group.check_alive()
            return store.sizes()["seen"] > 0

        _wait(first, 300, "the first event stored")
        first_at = time.perf_counter()

        def done() -> bool:
            group.check_alive()
            return store.sizes()["seen"] >= n_events and store.window_size(MODEL) >= n_labeled

        _wait(done, 1800, "every event stored and the window filled")
        seconds = time.perf_counter() - first_at
        sizes = store.sizes()
        return {
            "backend": backend,
            "workers": workers,
            "events": n_events,
            "labeled_studies": n_labeled,
            "seconds": round(seconds, 2),
            "events_per_s": round(n_events / seconds),
            "start_to_first_event_s": round(first_at - started, 2),
            "workers_assigned": len(store.assigned_workers()),
            "assignments": len(store.assignments()),
            "seen": sizes["seen"],
            "window": store.window_size(MODEL),
            "duplicates": store.counts().get("duplicate", 0),
        }
    except Exception:
        print(group.log_tails(), file=sys.stderr)
        raise
    finally:
        if store is not None:
            store.close()
        group.stop()


# --------------------------------------------------------------------------- failover


def _holder_pid(holder: str) -> int:
    return int(holder.split(":")[-2])


def failover(
    work: Path, bootstrap: str, store_url: str, n_studies: int, runs: int, lease_seconds: float
) -> dict[str, Any]:
    group = Group(
        work,
        bootstrap,
        f"f-{uuid.uuid4().hex[:6]}",
        store_url,
        embed_on_arrival=False,
        refit_lease_seconds=lease_seconds,
        refit_every_seconds=2.0,
        refit_every_labels=10**9,
        window_size=max(5000, n_studies * (runs + 1)),
    )
    store = Store(store_url)
    killed: list[int] = []
    results: list[dict[str, Any]] = []
    try:
        for _ in range(3):
            group.start()
        for run in range(runs):
            # Every live worker has joined the group before the round starts.
            live = [p.pid for p in group.procs if p.pid not in killed]

            def joined(live: Sequence[int] = live) -> bool:
                group.check_alive(killed=killed)
                workers = store.assigned_workers()
                return all(any(f":{pid}:" in w for w in workers) for pid in live)

            _wait(joined, 300, "the workers to join", interval=0.2)
            path = work / f"events-{run}.jsonl"
            _stream(n_studies, 100 + run, path)
            group.publish(path)
            before = store.latest_report(MODEL, MODEL)
            number_before = before["refit"]["number"] if before else 0

            # A refit in flight: the lease held (not given back) by a live worker, its labels not yet
            # covered, and still held by the same worker a moment later.
            def in_flight() -> tuple[str, float] | None:
                group.check_alive(killed=killed)
                lease = store.lease(LEASE)
                if lease is None or lease[1] <= time.time() or _holder_pid(lease[0]) in killed:
                    return None
                if not store.labels_since_refit(MODEL):
                    return None
                time.sleep(0.1)
                again = store.lease(LEASE)
                if again is None or again[0] != lease[0] or again[1] <= time.time():
                    return None
                return again[0], again[1]

            holder, expires_at = _wait(in_flight, 600, "a refit in flight", interval=0.02)
            pid = _holder_pid(holder)
            proc = next(p for p in group.procs if p.pid == pid)
            window = store.window_size(MODEL)
            pending_labels = store.labels_since_refit(MODEL)
            proc.send_signal(signal.SIGKILL)
            killed_wall, killed_at = time.time(), time.perf_counter()
            killed.append(pid)
            proc.wait(10)
            # A renewal may have come between the look and the kill: the lease as the kill left it.
            left = store.lease(LEASE)
            if left is not None and left[0] == holder:
                expires_at = left[1]

            def taken_over(holder: str = holder) -> str | None:
                lease = store.lease(LEASE)
                return lease[0] if lease and lease[0] != holder else None

            new_holder = _wait(taken_over, 10 * lease_seconds + 120, "another worker to take the lease", 0.02)
            failover_s = time.perf_counter() - killed_at

            def recorded(number_before: int = number_before) -> dict[str, Any] | None:
                report = store.latest_report(MODEL, MODEL)
                return report if report and report["refit"]["number"] > number_before else None

            report = _wait(recorded, 900, "the refit of the worker that took over", interval=0.1)
            results.append(
                {
                    "failover_s": round(failover_s, 2),
                    # negative: the refit ended (lease given back) before the kill landed
                    "lease_left_at_kill_s": round(expires_at - killed_wall, 2),
                    "takeover_refit_recorded_s": round(time.perf_counter() - killed_at, 2),
                    "takeover_refit_seconds": report["refit"]["seconds"],
                    "takeover_by_other_worker": _holder_pid(new_holder) != pid,
                    "window_at_kill": window,
                    "labels_since_refit_at_kill": pending_labels,
                }
            )
            print(json.dumps({"failover": results[-1]}), flush=True)
            if run + 1 < runs:
                group.start()  # back to three workers
        return {
            "workers": 3,
            "lease_seconds": lease_seconds,
            "refit_every_seconds": 2.0,
            "studies_per_round": n_studies,
            "runs": results,
        }
    except Exception:
        print(group.log_tails(), file=sys.stderr)
        raise
    finally:
        store.close()
        group.stop()


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--studies", type=int, default=3000, help="studies in the throughput stream")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3], help="PostgreSQL group sizes")
    parser.add_argument("--failover-studies", type=int, default=600, help="studies published per round")
    parser.add_argument("--failover-runs", type=int, default=3)
    parser.add_argument("--lease-seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "shared_store.json")
    args = parser.parse_args()

    results: dict[str, Any] = {"machine": _machine(), "command": " ".join(sys.argv)}
    with tempfile.TemporaryDirectory(prefix="shared-bench-") as tmp, postgres() as admin:
        root = Path(tmp)
        events_path = root / "events.jsonl"
        n_events, n_labeled = _stream(args.studies, 3, events_path)
        results["studies"] = args.studies
        broker = Broker(root / "tansu.log")
        try:
            results["throughput"] = []
            configurations = [(None, 1)] + [("postgresql", n) for n in args.workers]
            for i, (backend, workers) in enumerate(configurations):
                url = new_database(admin) if backend else None
                result = throughput(
                    root / f"t{i}", broker.bootstrap, events_path, n_events, n_labeled, url, workers
                )
                results["throughput"].append(result)
                print(json.dumps(result), flush=True)
            if args.failover_runs:
                results["failover"] = failover(
                    root / "failover",
                    broker.bootstrap,
                    new_database(admin),
                    args.failover_studies,
                    args.failover_runs,
                    args.lease_seconds,
                )
        finally:
            broker.stop()
    results["machine"]["load_average_after"] = _machine()["load_average"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
