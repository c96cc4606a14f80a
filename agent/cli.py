"""The ``slice-agent`` command line: the only place that prints, configures logging and reads files."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

from agent.config import Settings, load_settings
from agent.embed.base import Embedder
from agent.errors import AgentError
from agent.events import ClassLabel
from agent.join import Problem, Sample

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


def _build_embedder(settings: Settings) -> Embedder:
    from agent.embed import CachedEmbedder, MemoryCache, SqliteCache, make_embedder

    inner = make_embedder(
        settings.embed.spec, device=settings.embed.device, batch_size=settings.embed.batch_size
    )
    path = settings.embed.cache_path
    return CachedEmbedder(inner, SqliteCache(path) if path else MemoryCache())


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


def _select_model(samples: list[Sample], model: str | None) -> list[Sample]:
    models = Counter(s.model for s in samples)
    if model is None:
        if len(models) > 1:
            raise AgentError(
                f"the stream holds several models ({', '.join(sorted(models))}); choose one with --model"
            )
        return samples
    if model not in models:
        raise AgentError(f"model {model!r} not in the stream; it holds {', '.join(sorted(models)) or 'none'}")
    return [s for s in samples if s.model == model]


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
) -> None:
    """Audit a finite event file: find, test and explain the error slices of one model."""
    from agent.audit import run_audit
    from agent.ingest import read_jsonl
    from agent.join import join_events

    overrides: dict[str, object] = {}
    if embedder:
        overrides["embed"] = {"spec": embedder}
    if slicer:
        overrides["audit"] = {"slicer": slicer}
    if modalities:
        overrides["modalities"] = _split(modalities)
    settings = load_settings(config, overrides=overrides)
    started = time.perf_counter()
    decoded, problems = read_jsonl(events, max_report_chars=settings.audit.max_report_chars)
    labels_seen = {e.label for _, e in decoded if e.type == "label"}
    target = _match_class(target_class, labels_seen) if target_class is not None else None
    class_map = None
    if classes:
        models = {e.model for _, e in decoded if e.type == "inference"}
        class_map = {m: [_match_class(c, labels_seen) for c in _split(classes) or []] for m in models}
    elif target is not None:
        models = {e.model for _, e in decoded if e.type == "inference"}
        predicted = {e.prediction for _, e in decoded if e.type == "inference"}
        class_map = {m: [*predicted, target] for m in models}
    joined = join_events(decoded, classes=class_map)
    problems += joined.problems
    samples = _select_model(joined.samples, model)
    typer.echo(
        f"read {sum(joined.counts.values())} events: {len(samples)} labeled studies, "
        f"{joined.unlabeled} still unlabeled, {len(problems)} problem(s)",
        err=True,
    )
    report, embed_problems = run_audit(
        samples,
        embedder=_build_embedder(settings),
        settings=settings,
        target_class=target,
        progress=sys.stderr.isatty(),
    )
    problems += embed_problems
    _write_problems(problems, problems_out)
    report.write_json(out)
    typer.echo(report.table())
    typer.echo(f"report written to {out} ({time.perf_counter() - started:.1f} s)")


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


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.basicConfig(
        level=os.environ.get("SLICE_AGENT_LOG_LEVEL", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        app()
    except AgentError as err:
        typer.echo(f"error: {err}", err=True)
        raise SystemExit(2) from err


if __name__ == "__main__":
    main()
