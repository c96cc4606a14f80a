"""Benchmark outputs: a Markdown table shaped like the paper's Table 1, every run as CSV, a chart, tokens.

Files written by :func:`write_outputs` into one folder:

``table1.md``   the tables (paper's figure and product's figure per slicer, validity, null runs,
                planted words among the top five tokens, most frequent tokens), with the
                configuration and the time taken;
``runs.csv``    one row per audit (:class:`agent.bench.runner.RunRecord`);
``tokens.csv``  how often each token was among the top five, per source, mode, embedding, slicer
                and slice (best, first, baseline);
``table1.png``  mean precision@10 per embedding and failure mode, the paper's and the product's figure;
``summary.json`` the configuration, timing and notes.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import platform
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent.bench.modes import MODES
from agent.bench.runner import EMBEDDINGS, INDIANA_MODELS, BenchResult, RunRecord

__all__ = ["PAPER_TABLE1", "markdown", "write_outputs"]

#: The seed paper's Table 1 (MIMIC-CXR-JPG, BiomedCLIP, 100 iterations): mean precision@10.
PAPER_TABLE1: dict[str, tuple[float, float, float]] = {
    "Image only": (0.567, 0.621, 0.667),
    "Image + Text": (0.565, 0.696, 0.649),
    "Image + Text + Metadata": (0.568, 0.742, 0.513),
    "Report Text": (0.578, 0.736, 0.687),
    "Metadata only": (0.538, 0.909, 0.364),
    "Report + Metadata": (0.551, 0.852, 0.744),
    "Image + Metadata": (0.638, 0.761, 0.687),
    "Baseline": (0.472, 0.301, 0.672),
}
_SOURCE_TITLES = {
    "simulated": "Simulated images (DICOM), simulated reports and headers; ResNet-18 trained per run",
    "indiana": "Indiana University reports and headers (real text, no pixels); rule-based black box",
}


def _mean(values: Iterable[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _select(records: Sequence[RunRecord], **where: Any) -> list[RunRecord]:
    return [r for r in records if all(getattr(r, k) == v for k, v in where.items())]


def _trials(records: Sequence[RunRecord]) -> list[RunRecord]:
    """One record per test set (the first embedding and slicer), for per-test-set figures."""
    seen: dict[tuple[str, str, str, int], RunRecord] = {}
    for r in records:
        seen.setdefault((r.source, r.mode, r.kind, r.iteration), r)
    return list(seen.values())


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def markdown(result: BenchResult, *, title: str = "Table 1, rerun") -> str:
    """The Markdown report of one benchmark run."""
    cfg = result.config
    recs = result.records
    modes = [m for m in MODES if m.key in cfg.modes]
    k = cfg.k
    out = [f"# {title}", ""]
    out += [
        f"Mean precision@{k} against the planted group of: the paper's figure (Domino's in-sample slices, "
        f"at most five, the best of them); first, the slice the product ranks first among those that pass "
        f"its held-out significance test (what a user sees first; 0 when it reports none); reported, the "
        f"best of the slices the product reports (0 when none). Valid "
        f"planted runs only (accuracy gap of at least {cfg.min_gap:.0%} between the attribute groups of the "
        f"planted class). Baseline: the paper's global TF-IDF analysis, the share of misclassified test "
        f"cases that carry the error attribute; beside it, the share that belong to the planted group.",
        "",
    ]
    for source in cfg.sources:
        planted = _select(recs, source=source, kind="planted", valid=True)
        names = [n for n, mods in EMBEDDINGS if source == "simulated" or "image" not in mods]
        out += [f"## {_SOURCE_TITLES.get(source, source)}", ""]
        for slicer in cfg.slicers:
            headers = ["Embedding"] + [f"P@{k} {m.title}: paper's / first / reported" for m in modes]
            rows = []
            for name in names:
                row = [name]
                for m in modes:
                    sel = _select(planted, mode=m.key, embedding=name, slicer=slicer)
                    figures = (
                        _mean(r.p_at_k_best for r in sel),
                        _mean(r.p_at_k_first for r in sel),
                        _mean(r.p_at_k_reported for r in sel),
                    )
                    row.append(" / ".join(_fmt(f) for f in figures) if sel else "no valid run")
                rows.append(row)
            row = ["Baseline (errors with the attribute / in the planted group)"]
            for m in modes:
                trials = _trials(_select(planted, mode=m.key))
                row.append(
                    f"{_fmt(_mean(r.baseline_attribute for r in trials))} / "
                    f"{_fmt(_mean(r.baseline_group for r in trials))}"
                    if trials
                    else "no valid run"
                )
            rows.append(row)
            label = "error-aware mixture" if slicer == "error_aware" else "errors-only mixture"
            out += [f"### {label}", "", *_table(headers, rows), ""]

        out += ["### Validity of the planted runs", ""]
        rows = []
        for m in modes:
            trials = _trials(_select(recs, source=source, kind="planted", mode=m.key))
            valid = [r for r in trials if r.valid]
            rows.append(
                [
                    m.title,
                    f"{INDIANA_MODELS[m.key] if source == 'indiana' else m.model}; {m.attribute}; "
                    + (
                        f"errors {cfg.black_box.group_error:g} in the group"
                        if source == "indiana"
                        else m.strength(cfg.strengths)
                    ),
                    f"{len(valid)}/{len(trials)}",
                    _fmt(_mean(r.accuracy_gap for r in trials), 2),
                    _fmt(_mean(r.group_error_rate for r in trials), 2),
                    _fmt(_mean(r.rest_error_rate for r in trials), 2),
                    _fmt(_mean(float(r.n_test) for r in trials), 0),
                ]
            )
        headers = ["Mode", "Classifier; attribute; strength", "Valid runs", "Mean accuracy gap"]
        headers += ["Group error rate", "Rest error rate", "Test set size"]
        out += [*_table(headers, rows), ""]

        out += [
            "### Null runs: share of audits that report at least one significant slice",
            "",
            "`unbiased`: the same test sets, classifier trained (or, for the text, simulated) without the "
            "planted bias. `shuffled`: the planted run's errors moved to random test cases.",
            "",
        ]
        kinds = [kd for kd in ("null_unbiased", "null_shuffled") if _select(recs, source=source, kind=kd)]
        headers = ["Embedding", "Slicer"] + [
            f"{m.title} {kd.removeprefix('null_')}" for m in modes for kd in kinds
        ]
        rows = []
        for name in names:
            for slicer in cfg.slicers:
                row = [name, slicer]
                for m in modes:
                    for kd in kinds:
                        sel = _select(recs, source=source, kind=kd, mode=m.key, embedding=name, slicer=slicer)
                        row.append(f"{sum(r.n_significant > 0 for r in sel)}/{len(sel)}" if sel else "-")
                rows.append(row)
        out += [*_table(headers, rows), ""]

        out += [
            "### Planted attribute words among the top five tokens (share of valid planted runs)",
            "",
            "best: tokens of the paper's best slice; first: the product's first slice; baseline: all errors.",
            "",
        ]
        headers = ["Embedding", "Slicer"] + [f"{m.title} best / first" for m in modes]
        rows = []
        for name in names:
            for slicer in cfg.slicers:
                row = [name, slicer]
                for m in modes:
                    sel = _select(planted, mode=m.key, embedding=name, slicer=slicer)
                    if not sel:
                        row.append("-")
                        continue
                    best = sum(r.planted_in_best for r in sel)
                    first = sum(r.planted_in_first for r in sel)
                    row.append(f"{best}/{len(sel)} / {first}/{len(sel)}")
                rows.append(row)
        row = ["Baseline", "-"]
        for m in modes:
            trials = _trials(_select(planted, mode=m.key))
            row.append(f"{sum(r.planted_in_baseline for r in trials)}/{len(trials)}" if trials else "-")
        rows.append(row)
        out += [*_table(headers, rows), ""]

        out += ["### Most frequent top-five tokens (error-aware mixture, best slice; baseline)", ""]
        rows = []
        for m in modes:
            for name in [*names, "Baseline"]:
                if name == "Baseline":
                    counts = Counter(
                        t for r in _trials(_select(planted, mode=m.key)) for t in r.baseline_tokens
                    )
                    n = len(_trials(_select(planted, mode=m.key)))
                else:
                    sel = _select(planted, mode=m.key, embedding=name, slicer=cfg.slicers[0])
                    counts = Counter(t for r in sel for t in r.best_tokens)
                    n = len(sel)
                if n:
                    rows.append(
                        [m.title, name, ", ".join(f"{t} ({c}/{n})" for t, c in counts.most_common(5))]
                    )
        out += [*_table(["Mode", "Embedding", "Tokens (runs in which they were in the top five)"], rows), ""]

    out += ["## Paper's Table 1, for comparison (MIMIC-CXR-JPG, BiomedCLIP, 100 iterations)", ""]
    paper_rows = [[name, *(f"{v:.3f}" for v in vals)] for name, vals in PAPER_TABLE1.items()]
    out += [*_table(["Embedding", "P@10 (Corr)", "P@10 (Rare)", "P@10 (Noisy)"], paper_rows), ""]
    out += ["## Run", "", *[f"- {line}" for line in _run_lines(result)], ""]
    return "\n".join(out)


def _run_lines(result: BenchResult) -> list[str]:
    cfg = result.config
    return [
        f"time: {result.seconds / 60:.1f} min on {platform.machine()} with {_cpus()} CPU(s)",
        f"iterations per mode: {cfg.iterations} on simulated images ({cfg.null_iterations} with an unbiased "
        f"classifier too), {cfg.text_iterations} on Indiana text",
        f"train {cfg.n_train} / test {cfg.n_test}, planted group {cfg.group_share:.0%} of each test set",
        f"classifier: ResNet-18 from scratch, input {cfg.train.input_size} px (DICOM {cfg.image.size} px), "
        f"{cfg.train.epochs} epochs, batch {cfg.train.batch_size}, flips and rotations up to "
        f"{cfg.train.max_rotation:g} degrees",
        f"seed {cfg.seed}",
        *result.notes,
    ]


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def _csv_value(value: object) -> object:
    if isinstance(value, tuple):
        return " ".join(str(v) for v in value)
    if isinstance(value, float):
        return "" if math.isnan(value) else round(value, 6)
    return value


def write_runs_csv(records: Sequence[RunRecord], path: Path) -> None:
    names = [f.name for f in dataclasses.fields(RunRecord)]
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(names)
        for r in records:
            writer.writerow([_csv_value(getattr(r, n)) for n in names])


def write_tokens_csv(records: Sequence[RunRecord], path: Path) -> None:
    counts: Counter[tuple[str, str, str, str, str, str]] = Counter()
    runs: Counter[tuple[str, str, str, str, str]] = Counter()
    for r in records:
        if r.kind != "planted" or not r.valid:
            continue
        for which, toks in (("best", r.best_tokens), ("first", r.first_tokens)):
            runs[(r.source, r.mode, r.embedding, r.slicer, which)] += 1
            for t in toks:
                counts[(r.source, r.mode, r.embedding, r.slicer, which, t)] += 1
    for r in _trials([r for r in records if r.kind == "planted" and r.valid]):
        runs[(r.source, r.mode, "-", "-", "baseline")] += 1
        for t in r.baseline_tokens:
            counts[(r.source, r.mode, "-", "-", "baseline", t)] += 1
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["source", "mode", "embedding", "slicer", "slice", "token", "runs_in_top5", "runs"])
        for key, c in sorted(counts.items(), key=lambda kv: (kv[0][:5], -kv[1], kv[0][5])):
            writer.writerow([*key, c, runs[key[:5]]])


def write_chart(result: BenchResult, path: Path) -> None:
    """Grouped bars: mean precision@k per embedding (and baseline), one panel per source."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result.config
    modes = [m for m in MODES if m.key in cfg.modes]
    sources = list(cfg.sources)
    fig, axes = plt.subplots(len(sources), 1, figsize=(13, 4.2 * len(sources)), squeeze=False)
    colours = ("#4c72b0", "#dd8452", "#55a868")
    for ax, source in zip(axes[:, 0], sources, strict=True):
        planted = _select(result.records, source=source, kind="planted", valid=True, slicer=cfg.slicers[0])
        names = [n for n, mods in EMBEDDINGS if source == "simulated" or "image" not in mods]
        x = np.arange(len(names) + 1)
        width = 0.8 / len(modes)
        for i, m in enumerate(modes):
            best = [_mean(r.p_at_k_best for r in _select(planted, mode=m.key, embedding=n)) for n in names]
            first = [_mean(r.p_at_k_first for r in _select(planted, mode=m.key, embedding=n)) for n in names]
            base = _mean(r.baseline_attribute for r in _trials(_select(planted, mode=m.key)))
            pos = x + (i - (len(modes) - 1) / 2) * width
            ax.bar(pos, [*best, base], width, color=colours[i % 3], label=f"{m.title}: paper's figure")
            ax.scatter(pos[:-1], first, marker="_", s=180, color="black", zorder=3,
                       label="product's first slice" if i == 0 else None)  # fmt: skip
        ax.set_xticks(x, [*names, "Baseline"], rotation=20, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"mean precision@{cfg.k}")
        ax.set_title(_SOURCE_TITLES.get(source, source), fontsize=9)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(result: BenchResult, out: Path) -> list[Path]:
    """Write the table, the CSVs, the chart and the summary into ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [
        out / "table1.md",
        out / "runs.csv",
        out / "tokens.csv",
        out / "table1.png",
        out / "summary.json",
    ]
    paths[0].write_text(markdown(result), encoding="utf-8")
    write_runs_csv(result.records, paths[1])
    write_tokens_csv(result.records, paths[2])
    write_chart(result, paths[3])
    summary = {
        "seconds": round(result.seconds, 1),
        "machine": platform.machine(),
        "cpus": _cpus(),
        "config": dataclasses.asdict(result.config),
        "notes": result.notes,
        "records": len(result.records),
    }
    paths[4].write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    return paths
