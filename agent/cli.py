"""The ``slice-agent`` command line: the only place that prints, configures logging and reads files."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from agent.config import Settings, load_settings
from agent.embed.base import Embedder
from agent.errors import AgentError
from agent.events import ClassLabel
from agent.report import SliceReport
from agent.sample import Problem, Sample

if TYPE_CHECKING:
    from agent.store import Store

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
log = logging.getLogger("agent")


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _match_class(given: str, seen: set[ClassLabel]) -> ClassLabel:
    """Command-line classes are text; match them to the stream's labels, which may be integers."""
    for label in seen:
        if str(label) == given:
            return label
    try:
        return int(given)
    except ValueError:
        return given


def _build_embedder(settings: Settings, store: Store | None = None, *, batch: bool = False) -> Embedder:
    """The configured model behind a cache: ``embed.cache_path``, else the store's own vectors (the
    streaming agent's default: bounded by ``keep_vectors``, shared by the workers of a group), else
    memory. A ``batch`` audit runs alone, on ``embed.batch_threads``; the streaming agent's embedder
    keeps ``embed.threads`` and leaves the other cores to the refit and the event loop."""
    from agent.embed import CachedEmbedder, MemoryCache, SqliteCache, make_embedder
    from agent.embed.cache import EmbeddingCache
    from agent.store import VectorCache

    inner = make_embedder(
        settings.embed.spec,
        device=settings.embed.device,
        batch_size=settings.embed.batch_size,
        allow_random_weights=settings.embed.allow_random_weights,
        threads=settings.embed.batch_threads if batch else settings.embed.threads,
        text_int8=settings.embed.text_int8,
        runtime=settings.embed.runtime,
        graph_dir=settings.embed.graph_dir,
    )
    path = settings.embed.cache_path
    cache: EmbeddingCache
    if path:
        cache = SqliteCache(path)
    elif store is not None:
        cache = VectorCache(store, keep=store.policy.keep_vectors)
    else:
        cache = MemoryCache()
    return CachedEmbedder(inner, cache)


def _write_problems(problems: list[Problem], path: Path | None) -> None:
    if not problems:
        return
    by_reason = Counter(p.reason for p in problems)
    typer.echo(
        f"{len(problems)} input problem(s): " + ", ".join(f"{r}={n}" for r, n in sorted(by_reason.items())),
        err=True,
    )
    for p in problems[:20]:
        typer.echo(f"  {p.where}: {p.reason}: {p.message}", err=True)
    if len(problems) > 20:
        typer.echo(f"  ... {len(problems) - 20} more", err=True)
    if path is not None:
        with path.open("w", encoding="utf-8") as fh:
            for p in problems:
                fh.write(json.dumps({"where": p.where, "reason": p.reason, "message": p.message}) + "\n")


def _class_forms(given: str) -> tuple[ClassLabel, ...]:
    """A command-line class as the stream may carry it: text, and an integer when it reads as one."""
    try:
        return (given, int(given))
    except ValueError:
        return (given,)


def _select_model(windows: dict[str, list[Sample]], model: str | None) -> list[Sample]:
    models = sorted(m for m, samples in windows.items() if samples)
    if model is None:
        if len(models) > 1:
            raise AgentError(
                f"the stream holds several models ({', '.join(models)}); choose one with --model"
            )
        return windows[models[0]] if models else []
    if model not in models:
        raise AgentError(f"model {model!r} not in the stream; it holds {', '.join(models) or 'none'}")
    return windows[model]


def _dead_letter_problems(store: Store) -> list[Problem]:
    """The store's dead letters as numbered problems (``line N``), in input order."""
    problems: list[tuple[int, Problem]] = []
    while letters := store.unsent_dead_letters():
        for letter in letters:
            line = letter.source.rsplit(":", 1)[-1]
            number = int(line) if line.isdigit() else 0
            problems.append((number, Problem(f"line {number}", letter.reason, letter.message)))
        store.mark_dead_letters_sent([letter.id for letter in letters])
    return [p for _, p in sorted(problems, key=lambda item: item[0])]


@app.command()
def audit(
    events: Annotated[Path, typer.Argument(help="JSONL file of v1 events", exists=True, dir_okay=False)],
    out: Annotated[Path, typer.Option("--out", help="where to write the JSON slice report")],
    target_class: Annotated[str | None, typer.Option(help="audit this class against the rest")] = None,
    modalities: Annotated[str | None, typer.Option(help="comma list of image,report,metadata")] = None,
    embedder: Annotated[str | None, typer.Option(help="default | open_clip:NAME[@CHECKPOINT]")] = None,
    model: Annotated[str | None, typer.Option(help="the model to audit, when the file holds several")] = None,
    classes: Annotated[str | None, typer.Option(help="comma list of the model's classes")] = None,
    slicer: Annotated[str | None, typer.Option(help="error_aware | errors_only")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML settings file")] = None,
    problems_out: Annotated[
        Path | None, typer.Option("--problems", help="write bad inputs here (JSONL)")
    ] = None,
    pushgateway: Annotated[
        str | None, typer.Option(help="push the audit's metrics to this Pushgateway (host:port or URL)")
    ] = None,
    label_delay: Annotated[
        float | None,
        typer.Option(help="seconds an inference waits for its label, in event time (default: no limit)"),
    ] = None,
    allow_random_weights: Annotated[
        bool,
        typer.Option(
            help="let open_clip:NAME build random weights (plumbing tests only; slices meaningless)"
        ),
    ] = False,
) -> None:
    """Audit a finite event file: find, test and explain the error slices of one model.

    The file is replayed into a temporary store, through the same join as ``slice-agent run``
    (no label delay unless ``--label-delay`` is given), and the model's window is audited by the
    same pipeline a refit runs.
    """
    import tempfile

    # Before torch loads: the audit's torch threads sleep when idle instead of spinning, so that on
    # a small shared machine they do not take the cores from each other and from other processes.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from agent.audit import run_audit
    from agent.store import Store, StorePolicy
    from agent.stream.replay import load_file

    overrides: dict[str, object] = {}
    if embedder or allow_random_weights:
        overrides["embed"] = {
            **({"spec": embedder} if embedder else {}),
            **({"allow_random_weights": True} if allow_random_weights else {}),
        }
    if slicer:
        overrides["audit"] = {"slicer": slicer}
    if modalities:
        overrides["modalities"] = _split(modalities)
    settings = load_settings(config, overrides=overrides)
    started = time.perf_counter()
    policy = StorePolicy(
        label_delay_seconds=label_delay if label_delay is not None else math.inf,
        window_size=2**62,
        window_max_age_seconds=math.inf,
        max_future_seconds=math.inf,  # a file has no "now": its times are compared with each other
        default_classes=tuple(c for given in _split(classes) or [] for c in _class_forms(given)),
        extra_classes=_class_forms(target_class) if target_class is not None else (),
    )
    with tempfile.TemporaryDirectory(prefix="slice-agent-audit-") as work:
        store = Store(Path(work) / "state.sqlite", policy)
        try:
            loaded = load_file(
                events,
                store,
                max_report_chars=settings.audit.max_report_chars,
                naive=settings.stream.naive_timestamps,
                limits=settings.events,
            )
            problems = _dead_letter_problems(store)
            unlabeled = store.sizes()["pending"]
            samples = _select_model({m: store.window(m) for m in store.models()}, model)
            labels_seen = {s.label for s in samples}
            target = _match_class(target_class, labels_seen) if target_class is not None else None
            typer.echo(
                f"read {loaded.lines} events: {len(samples)} labeled studies, "
                f"{unlabeled} still unlabeled, {len(problems)} problem(s)",
                err=True,
            )
            report, embed_problems = run_audit(
                samples,
                embedder=_build_embedder(settings, batch=True),
                settings=settings,
                target_class=target,
                progress=sys.stderr.isatty(),
                known_names=store.known_names,
            )
        finally:
            store.close()
    problems += embed_problems
    _write_problems(problems, problems_out)
    report.write_json(out)
    typer.echo(report.table())
    typer.echo(f"report written to {out} ({time.perf_counter() - started:.1f} s)")
    if pushgateway:
        _push_audit(pushgateway, settings, report, problems, loaded.accepted, time.perf_counter() - started)
        typer.echo(f"metrics pushed to {pushgateway} (job {settings.exporter.push_job})")


def _push_audit(
    gateway: str,
    settings: Settings,
    report: SliceReport,
    problems: list[Problem],
    counts: Counter[str],
    seconds: float,
) -> None:
    """Push one batch audit's slices, input counts and duration to a Pushgateway."""
    from agent.events import REASONS
    from agent.exporter import EVENT_TYPES, Exporter

    exporter = Exporter(settings.exporter, process=False)
    for event_type, n in counts.items():
        if event_type in EVENT_TYPES:
            exporter.agent.consumed(event_type, n)
    for reason, n in Counter(p.reason for p in problems).items():
        if reason in REASONS:
            exporter.agent.dead_lettered(reason, n)
    exporter.agent.refit_done(report.model, report.target_class, seconds)
    exporter.publish(report)
    try:
        exporter.push(gateway)
    except OSError as err:
        raise AgentError(f"cannot push metrics to the Pushgateway at {gateway}: {err}") from err


@app.command()
def prepare(
    config: Annotated[Path | None, typer.Option(help="YAML settings file")] = None,
) -> None:
    """Load the configured embedder's models once, exporting their ONNX graphs where missing.

    Run it after installing (``make install`` does) or when building an image, so that the first
    audit or agent start does not pay for the exports (4 to 11 s on two cores). Offline:
    everything comes from the installed packages.
    """
    settings = load_settings(config)
    embedder = _build_embedder(settings, batch=True)
    started = time.perf_counter()
    load = getattr(getattr(embedder, "inner", embedder), "load", None)
    if callable(load):
        load()
    typer.echo(f"models of {embedder.name} ready in {time.perf_counter() - started:.1f} s")


@app.command()
def simulate(
    out: Annotated[Path, typer.Argument(help="JSONL file to write")],
    n_studies: Annotated[int, typer.Option("--n", help="number of studies")] = 2000,
    failure: Annotated[str, typer.Option(help="devices | lateral | portable | none")] = "devices",
    seed: Annotated[int, typer.Option()] = 0,
    bad_lines: Annotated[bool, typer.Option(help="append one of each kind of bad input")] = False,
    truth: Annotated[Path | None, typer.Option(help="write the planted group per study here (JSON)")] = None,
) -> None:
    """Write a simulated inference stream with a planted failure."""
    from agent.simulate import StreamSpec, generate_stream, write_jsonl

    spec = StreamSpec(
        n_studies=n_studies, failure=None if failure == "none" else failure, seed=seed, bad_lines=bad_lines
    )
    events, planted = generate_stream(spec)
    write_jsonl(events, out, garbage=bad_lines)
    if truth is not None:
        truth.write_text(json.dumps(planted), encoding="utf-8")
    typer.echo(
        f"wrote {len(events)} events for {n_studies} studies to {out} "
        f"(planted: {failure}, {sum(planted.values())} studies in the group)"
    )


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option(help="where to write the stream and the report")] = Path(
        "out/demo"
    ),
    n_studies: Annotated[int, typer.Option("--n")] = 1500,
) -> None:
    """Simulate a stream with a planted failure (support devices) and audit it end to end."""
    out_dir.mkdir(parents=True, exist_ok=True)
    events = out_dir / "events.jsonl"
    simulate(
        events, n_studies=n_studies, failure="devices", seed=0, bad_lines=True, truth=out_dir / "truth.json"
    )
    audit(
        events,
        out=out_dir / "report.json",
        target_class=None,
        modalities="report,metadata",
        embedder=None,
        model=None,
        classes=None,
        slicer=None,
        config=None,
        problems_out=out_dir / "problems.jsonl",
    )


@app.command()
def bench(
    out: Annotated[Path, typer.Option("--out", help="folder for the table, CSVs, chart and summary")],
    quick: Annotated[bool, typer.Option("--quick", help="the 2-core CPU preset: fewer iterations")] = False,
    iterations: Annotated[int | None, typer.Option(help="simulated-image iterations per mode")] = None,
    text_iterations: Annotated[int | None, typer.Option(help="Indiana-text iterations per mode")] = None,
    null_iterations: Annotated[int | None, typer.Option(help="image iterations with a null run")] = None,
    sources: Annotated[str | None, typer.Option(help="comma list of simulated,indiana")] = None,
    modes: Annotated[str | None, typer.Option(help="comma list of correlation,rare,noisy")] = None,
    n_train: Annotated[int | None, typer.Option(help="training set size")] = None,
    n_test: Annotated[int | None, typer.Option(help="test set size")] = None,
    epochs: Annotated[int | None, typer.Option(help="ResNet-18 training epochs")] = None,
    input_size: Annotated[int | None, typer.Option(help="side of the network's input, pixels")] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads for training")] = None,
    device: Annotated[str | None, typer.Option(help="torch device for training: cpu, cuda")] = None,
    indiana_dir: Annotated[
        Path | None, typer.Option(help="folder with the Indiana files (default: torchxrayvision's data)")
    ] = None,
    seed: Annotated[int, typer.Option()] = 0,
    config: Annotated[Path | None, typer.Option(help="YAML settings file (audit and embedder)")] = None,
) -> None:
    """Rerun the seed paper's evaluation (its Table 1): planted failures, audits with every embedding."""
    import tempfile

    # Before torch loads: idle OpenMP threads sleep instead of spinning, which keeps training
    # from slowing down tenfold when another process holds one of a small machine's cores.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from agent.bench import BenchConfig, run_bench, write_outputs

    settings = load_settings(config)
    cfg = (BenchConfig.quick() if quick else BenchConfig()).with_changes(
        iterations=iterations,
        text_iterations=text_iterations,
        null_iterations=null_iterations,
        n_train=n_train,
        n_test=n_test,
        sources=tuple(_split(sources) or []) or None,
        modes=tuple(_split(modes) or []) or None,
        seed=seed,
        indiana_dir=str(indiana_dir) if indiana_dir else None,
        train={"epochs": epochs, "input_size": input_size, "threads": threads, "device": device},
    )
    typer.echo(
        f"bench: {cfg.iterations} image and {cfg.text_iterations} text iteration(s) per mode, "
        f"sources {','.join(cfg.sources)}, modes {','.join(cfg.modes)}",
        err=True,
    )
    with tempfile.TemporaryDirectory(prefix="slice-agent-bench-") as work:
        result = run_bench(
            cfg,
            embedder=_build_embedder(settings),
            settings=settings,
            workdir=Path(work),
            progress=lambda line: typer.echo(line, err=True),
        )
    paths = write_outputs(result, out)
    typer.echo(f"bench done in {result.seconds / 60:.1f} min; wrote {', '.join(str(p) for p in paths)}")


def _read_tracking(path: Path | None) -> dict[str, tuple[bool, int]]:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {str(k): (bool(v["emerging"]), int(v["age_refits"])) for k, v in data.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise AgentError(
            f"cannot read tracking file {path}: {err!r}; expected "
            '{"SLICE_ID": {"emerging": true, "age_refits": 3}, ...}'
        ) from err


@app.command("serve-metrics")
def serve_metrics(
    reports: Annotated[list[Path], typer.Argument(help="slice report JSON files, or directories of them")],
    tracking: Annotated[
        Path | None, typer.Option(help='JSON: {"SLICE_ID": {"emerging": true, "age_refits": 3}}')
    ] = None,
    host: Annotated[str | None, typer.Option(help="bind address (default: exporter.host)")] = None,
    port: Annotated[
        int | None, typer.Option(help="port (default: exporter.port; 0 picks a free one)")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="YAML settings file")] = None,
    duration: Annotated[
        float | None, typer.Option(help="stop after this many seconds (default: until SIGINT or SIGTERM)")
    ] = None,
) -> None:
    """Serve Prometheus metrics over finished slice reports (the exporter without the stream)."""
    import signal
    import threading

    from agent.exporter import Exporter
    from agent.summary import read_reports

    settings = load_settings(config)
    exporter = Exporter(settings.exporter)
    timed = sorted(read_reports(reports), key=lambda r: r.at)
    exporter.slices.update((t.report for t in timed), _read_tracking(tracking))
    server = exporter.serve(host, port)
    typer.echo(
        f"serving {len(exporter.slices.reports)} report(s) on http://{server.host}:{server.port}/metrics"
    )
    sys.stdout.flush()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait(duration)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


@app.command()
def summary(
    reports: Annotated[
        list[Path], typer.Option("--reports", help="slice report files or directories (repeatable)")
    ],
    week: Annotated[
        str | None, typer.Option(help="ISO week such as 2026-W48 (default: the last complete week)")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="output directory (default: summary.out_dir)")
    ] = None,
    drift_events: Annotated[
        Path | None, typer.Option(help="JSONL of drift events: at, model, target_class, statistic, threshold")
    ] = None,
    embeddings: Annotated[
        Path | None, typer.Option(help="directory holding WEEK/MODALITY.npy for this and the previous week")
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            help="the agent's store (SQLite path or PostgreSQL URL): its weekly embedding samples and"
            " its early warnings; default: the configured store, when it exists"
        ),
    ] = None,
    events: Annotated[
        Path | None, typer.Option(help="event file whose image paths give slice members' thumbnails")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="YAML settings file")] = None,
) -> None:
    """Write the weekly drift summary: one HTML page and Markdown with PNG plots."""
    from datetime import UTC, datetime, timedelta

    import numpy as np

    from agent.summary import (
        DriftEvent,
        build_summary,
        member_thumbnails,
        previous_week,
        read_reports,
        write_summary,
    )

    settings = load_settings(config)
    if week is None:
        year, number, _ = (datetime.now(UTC) - timedelta(days=7)).isocalendar()
        week = f"{year}-W{number:02d}"
    timed = read_reports(reports)
    drifts: list[DriftEvent] = []
    if drift_events is not None:
        for number, line in enumerate(drift_events.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                at = datetime.fromisoformat(str(d["at"]).replace("Z", "+00:00"))
                drifts.append(
                    DriftEvent(
                        at if at.tzinfo else at.replace(tzinfo=UTC),
                        str(d["model"]),
                        d["target_class"],
                        _number_or_none(d.get("statistic")),
                        _number_or_none(d.get("threshold")),
                    )
                )
            except (ValueError, KeyError, TypeError) as err:
                raise AgentError(f"{drift_events} line {number}: not a drift event ({err!r})") from err
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if embeddings is not None:
        last_week = embeddings / previous_week(week)
        for current in sorted((embeddings / week).glob("*.npy")):
            if (last_week / current.name).exists():
                arrays[current.stem] = (np.load(last_week / current.name), np.load(current))
    before = None
    if (location := _summary_store(store, settings)) is not None:
        from agent.drift.weekly import weekly_samples
        from agent.store import Store
        from agent.summary.early import before_labels

        opened = Store(location)
        try:
            if embeddings is None:
                arrays = weekly_samples(opened, week, settings.summary.drift_max_samples)
            before = before_labels(opened, week)
        finally:
            opened.close()
    built = build_summary(
        week, timed, drift_events=drifts, embeddings=arrays, before=before, settings=settings.summary
    )
    if events is not None and settings.summary.examples_per_slice > 0:
        from agent.images import ImageAccess
        from agent.ingest import read_jsonl

        decoded, _ = read_jsonl(events, limits=settings.events)
        images = {e.study_uid: e.image for _, e in decoded if e.type == "inference" and e.image}
        thumbs = member_thumbnails(
            built.latest,
            images,
            per_slice=settings.summary.examples_per_slice,
            size=settings.summary.thumbnail_size,
            access=ImageAccess.from_settings(settings.images),
        )
        built = build_summary(
            week,
            timed,
            drift_events=drifts,
            embeddings=arrays,
            thumbnails=thumbs,
            before=before,
            settings=settings.summary,
        )
    files = write_summary(built, out or settings.summary.out_dir)
    typer.echo(
        f"{week}: {len(built.reports)} report(s), {len(built.latest)} model and class pair(s); "
        f"wrote {files.html} and {files.markdown}"
    )


def _summary_store(given: str | None, settings: Settings) -> str | None:
    """The store the summary reads: the one given, else the configured one if it exists."""
    if given is not None:
        return given
    s = settings.stream
    if s.store_url:
        return s.store_url
    return str(s.store_path) if s.store_path.is_file() else None


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


@app.command()
def run(
    config: Annotated[Path | None, typer.Option(help="YAML settings file")] = None,
    source: Annotated[
        str, typer.Option(help="'kafka' (the settings' brokers and topics) or 'replay:EVENTS.jsonl'")
    ] = "kafka",
) -> None:
    """Run the streaming agent: consume the event topics (or replay a file), refit, write slice reports."""
    import signal

    # SIGTERM while starting (models loading, the store opening) is a clean stop too; the worker
    # installs its own graceful shutdown once it runs.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    from agent.store import Store
    from agent.stream import Sidecar, replay_file, run_worker

    settings = load_settings(config)
    store = Store.from_settings(settings.stream)
    if source.startswith("replay:"):
        path = Path(source.removeprefix("replay:"))
        if not path.is_file():
            raise AgentError(f"expected --source replay:FILE with an existing file, got {str(path)!r}")
        sidecar = Sidecar(settings, _build_embedder(settings, store), store=store)
        sidecar.start()
        started = time.perf_counter()
        try:
            summary = replay_file(path, sidecar)
            counts = sidecar.counts()
        finally:
            sidecar.close()
        dead = ", ".join(f"{r}={n}" for r, n in sorted(summary.dead_lettered.items())) or "none"
        typer.echo(
            f"replayed {summary.lines} line(s) of {path}"
            + (f" (resumed after line {summary.skipped})" if summary.skipped else "")
            + f": {summary.joined} labeled sample(s) joined, {summary.duplicates} duplicate(s), "
            f"dead-lettered: {dead} (to {settings.stream.dead_letter_path}); "
            f"early warnings: {summary.warnings}"
        )
        for outcome in summary.refits:
            emerging = [s["id"] for s in outcome.document["slices"] if s["status"] == "emerging"]
            typer.echo(
                f"refit {outcome.number} of {outcome.model} target={outcome.target!r}: "
                f"{len(outcome.report.slices)} slice(s)"
                + (f", emerging: {', '.join(emerging)}" if emerging else "")
                + f" -> {outcome.path}"
            )
        joined = {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("joined:")}
        typer.echo(
            f"windows: {', '.join(f'{m}={n}' for m, n in sorted(joined.items())) or 'empty'} "
            f"({time.perf_counter() - started:.1f} s)"
        )
        return
    if source != "kafka":
        raise AgentError(f"expected --source kafka or replay:FILE, got {source!r}")
    exporter = None
    if settings.exporter.enabled:
        from agent.exporter import Exporter

        exporter = Exporter(settings.exporter)
        exporter.serve()
    sidecar = Sidecar(settings, _build_embedder(settings, store), exporter=exporter, store=store)
    run_worker(settings, sidecar, loglevel=os.environ.get("SLICE_AGENT_LOG_LEVEL", "WARNING"))


@app.command()
def publish(
    events: Annotated[Path, typer.Argument(help="JSONL file of v1 events", exists=True, dir_okay=False)],
    config: Annotated[Path | None, typer.Option(help="YAML settings file")] = None,
    bootstrap_servers: Annotated[
        str | None, typer.Option(help="host:port[,host:port] (default: stream.bootstrap_servers)")
    ] = None,
    create_topics: Annotated[bool, typer.Option(help="create the topics first if missing")] = True,
) -> None:
    """Produce an event file to the inference, label and report topics, keyed by model."""
    from agent.stream import publish_file

    overrides: dict[str, object] = {}
    if bootstrap_servers:
        overrides["stream"] = {"bootstrap_servers": bootstrap_servers}
    settings = load_settings(config, overrides=overrides)
    summary = publish_file(
        events,
        settings.stream,
        create_topics=create_topics,
        max_message_bytes=settings.events.max_message_bytes,
    )
    per_topic = ", ".join(f"{t}={n}" for t, n in sorted(summary.sent.items()))
    typer.echo(
        f"published {sum(summary.sent.values())} message(s) from {summary.lines} line(s) to "
        f"{settings.stream.bootstrap_servers} ({per_topic}; {summary.unroutable} unroutable, "
        f"{summary.oversized} too long, not sent) in {summary.seconds:.1f} s"
    )


@app.command()
def messages(
    folder: Annotated[Path, typer.Argument(help="folder of .hl7 (ORU^R01), .json (FHIR) and .csv files")],
    out: Annotated[Path, typer.Option("--out", help="append the v1 events here (JSONL)")],
    dead_letters: Annotated[Path, typer.Option(help="append messages that cannot be converted here")] = Path(
        "messages-dead-letter.jsonl"
    ),
    labels: Annotated[Path | None, typer.Option(help="YAML mapping of result codes to class labels")] = None,
    accessions: Annotated[
        Path | None,
        typer.Option(help="CSV of accession_number,study_instance_uid (reports keyed by accession)"),
    ] = None,
    acks: Annotated[Path | None, typer.Option(help="write an HL7 ACK (AA/AE/AR) per message here")] = None,
) -> None:
    """Turn the hospital's own messages (HL7 v2 reports, FHIR DiagnosticReport and Observation, CSV
    label exports) into report and label events keyed by study, ready for `publish`."""
    import csv

    from agent.messages.drop import convert_folder
    from agent.messages.labels import LabelMapping

    if not folder.is_dir():
        raise AgentError(f"expected a folder of messages, got {str(folder)!r}")
    mapping = None
    if accessions is not None:
        with accessions.open(encoding="utf-8", newline="") as fh:
            mapping = {row[0].strip(): row[1].strip() for row in csv.reader(fh) if len(row) >= 2}
    result = convert_folder(
        folder,
        out,
        dead_letters,
        labels=LabelMapping.load(labels) if labels is not None else None,
        accessions=mapping,
        acks=acks,
    )
    dead = ", ".join(f"{r}={n}" for r, n in sorted(result.dead_letters.items())) or "none"
    typer.echo(f"{result.files} file(s): {result.events} event(s) to {out}; dead-lettered: {dead}")


@app.command()
def mllp(
    config: Annotated[Path | None, typer.Option(help="YAML settings file")] = None,
    port: Annotated[int | None, typer.Option(help="port to listen on (default: mllp.port)")] = None,
) -> None:
    """Listen for HL7 v2 ORU^R01 reports over MLLP (on mllp.host, loopback by default) and produce
    their report events to the report topic; each message is answered AA, AE or AR."""
    import csv
    import signal
    import threading

    from agent.messages.mllp import MllpListener
    from agent.stream import ensure_topics

    overrides: dict[str, object] = {"mllp": {"port": port}} if port is not None else {}
    settings = load_settings(config, overrides=overrides)
    accessions = None
    if settings.mllp.accessions_path is not None:
        with settings.mllp.accessions_path.open(encoding="utf-8", newline="") as fh:
            accessions = {row[0].strip(): row[1].strip() for row in csv.reader(fh) if len(row) >= 2}
    if settings.stream.create_topics:
        ensure_topics(settings.stream)
    listener = MllpListener(settings.mllp, settings.stream, accessions=accessions)
    # shutdown() waits for serve_forever() to return: it cannot run in the signal handler's thread.
    stop = threading.Thread(target=listener.shutdown, daemon=True)

    def on_signal(*_: object) -> None:
        if stop.ident is None:
            stop.start()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    host, bound = listener.address
    typer.echo(f"listening for MLLP on {host}:{bound}", err=True)
    listener.serve_forever()
    stop.join()


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from agent.logs import configure_logging

    configure_logging(os.environ.get("SLICE_AGENT_LOG_LEVEL", "WARNING"))
    try:
        app()
    except AgentError as err:
        typer.echo(f"error: {err}", err=True)
        raise SystemExit(2) from err


if __name__ == "__main__":
    main()


def _number_or_none(value: object) -> float | None:
    """A drift event's statistic or threshold: a number or nothing (TypeError otherwise)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)
