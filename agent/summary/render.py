"""The summary as an HTML page (plots inlined) and as Markdown beside its PNG files."""

from __future__ import annotations

import base64
import html
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.exporter import safe_tokens
from agent.summary.data import WeeklySummary, report_key
from agent.summary.early import BeforeLabels
from agent.summary.plots import figures as draw_figures
from agent.weeks import previous_week

__all__ = ["SummaryFiles", "render_html", "render_markdown", "write_summary"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SummaryFiles:
    """Where :func:`write_summary` put the page, the Markdown and the plots."""

    html: Path
    markdown: Path
    images: tuple[Path, ...]


def _fmt_rate(x: float) -> str:
    return "-" if not np.isfinite(x) else f"{100 * x:.1f} %"


def _fmt_p(x: float) -> str:
    return "-" if not np.isfinite(x) else f"{x:.1e}"


@dataclass(frozen=True)
class _Section:
    title: str
    header: list[str]
    rows: list[list[str]]
    images: tuple[str, ...] = ()


def _sections(summary: WeeklySummary) -> list[_Section]:
    """The summary's sections: a title, a table, and the plots shown after it."""
    out: list[_Section] = []
    rates = []
    for key in sorted({report_key(r.report) for r in summary.reports}):
        ratios = [
            r.report.window.n_errors / r.report.window.n
            for r in summary.reports
            if report_key(r.report) == key and r.report.window.n > 0
        ]
        if ratios:
            rates.append(
                [
                    *key,
                    str(len(ratios)),
                    _fmt_rate(ratios[0]),
                    _fmt_rate(ratios[-1]),
                    _fmt_rate(float(np.mean(ratios))),
                ]
            )
    out.append(
        _Section(
            "Error rate per model and class",
            ["model", "target class", "refits", "first", "last", "mean"],
            rates,
            ("error-rate.png",),
        )
    )
    for report in (r.for_export() for r in summary.latest):  # what is shown is the export form
        rows = []
        for s in report.slices:
            top = [m.probability for m in s.members[:10]]
            rows.append(
                [
                    str(s.rank),
                    str(s.size),
                    _fmt_rate(s.error_rate),
                    _fmt_rate(s.rest_error_rate),
                    _fmt_p(s.p_value),
                    _fmt_rate(s.error_precision_at_10),
                    f"{summary.seen_in(report, s)} of {summary.refits(report)}",
                    f"{min(top):.2f} to {max(top):.2f}" if top else "-",
                    ", ".join(safe_tokens((t.token for t in s.tokens), limit=10)) or "-",
                ]
            )
        baseline = ", ".join(safe_tokens(t.token for t in report.baseline_tokens)) or "-"
        out.append(
            _Section(
                f"Slices of {report.model} / {report.target_class} (latest refit: {report.window.n} labeled "
                f"studies, {'+'.join(report.modalities)}; all errors: {baseline})",
                [
                    "rank",
                    "studies",
                    "error rate",
                    "rest",
                    "p-value",
                    "error precision@10",
                    "found in refits",
                    "top-10 membership",
                    "tokens",
                ],
                rows,
                tuple(f"members-{report.model}-{report.target_class}-{s.rank}.png" for s in report.slices),
            )
        )
    out.append(_Section("", [], [], ("slices.png",)))
    events = [
        [
            e.at.strftime("%a %H:%M"),
            e.model,
            str(e.target_class),
            "-" if e.statistic is None else f"{e.statistic:.3g}",
            "-" if e.threshold is None else f"{e.threshold:.3g}",
        ]
        for e in summary.drift_events
    ]
    out.append(_Section("Drift events", ["when", "model", "target class", "statistic", "threshold"], events))
    drift_rows = [
        [
            d.modality,
            f"{d.mmd2:.4f}",
            f"{d.threshold:.4f}",
            "yes" if d.drifted else "no",
            f"{d.centroid_shift:.4f}",
            f"{d.n_previous} / {d.n_current}",
        ]
        for d in summary.embedding_drift
    ]
    out.append(
        _Section(
            f"Embedding drift per modality ({previous_week(summary.week)} to {summary.week})",
            ["modality", "MMD²", "threshold", "drifted", "centroid shift (cosine)", "embeddings"],
            drift_rows,
            ("embedding-drift.png",),
        )
    )
    if summary.before is not None:
        out += _before_sections(summary.before)
    return out


def _fmt_days(days: float | None) -> str:
    return "not confirmed yet" if days is None else f"{days:.1f} days"


def _before_sections(before: BeforeLabels) -> list[_Section]:
    """Warnings raised from unlabeled traffic, their lead over the labeled path, and how good the
    label-free estimates were once labels came."""
    warnings = [
        [
            w.model,
            w.target,
            str(w.rank),
            w.bucket.strftime("%a %H:%M"),
            str(w.n),
            _fmt_rate(w.share),
            _fmt_rate(w.window_share),
            _fmt_p(w.p_value),
        ]
        for w in before.warnings
    ]
    leads = [
        [lead.model, lead.target, lead.warned_at.strftime("%a %H:%M"), _fmt_days(lead.days)]
        for lead in before.leads
    ]
    checks = [
        [
            c.model,
            c.target,
            "all" if c.rank is None else str(c.rank),
            str(c.n_labeled),
            "-" if c.estimated is None else _fmt_rate(c.estimated),
            "-" if c.realised is None else _fmt_rate(c.realised),
            "-" if c.abs_error is None else _fmt_rate(c.abs_error),
        ]
        for c in before.estimates
    ]
    return [
        _Section(
            f"Before the labels: warnings raised ({before.watched} model and class pair(s) watched)",
            [
                "model",
                "target class",
                "slice rank",
                "bucket from",
                "inferences",
                "share in slice",
                "labeled window share",
                "adjusted p-value",
            ],
            warnings,
        ),
        _Section(
            "Before the labels: lead over the labeled path (first warning to error-rate drift on labels)",
            ["model", "target class", "first warning", "labels confirmed it after"],
            leads,
        ),
        _Section(
            "Before the labels: estimated against realised error of the week's inferences labeled so far",
            ["model", "target class", "slice rank", "labeled", "estimated", "realised", "absolute error"],
            checks,
        ),
    ]


_CSS = """
body { font-family: sans-serif; max-width: 60em; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f2f2f2; }
img { max-width: 100%; display: block; margin: 0.5em 0 1.5em; }
.note { color: #666; font-size: 0.9em; }
"""


def render_html(summary: WeeklySummary, figures: Mapping[str, tuple[str, bytes]] | None = None) -> str:
    """The summary as one HTML page; every plot is inlined as a base64 PNG."""
    figures = draw_figures(summary) if figures is None else figures
    esc = html.escape

    def img(name: str) -> str:
        alt, png = figures[name]
        data = base64.b64encode(png).decode("ascii")
        return f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}">'

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>slice-agent drift summary {esc(summary.week)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>slice-agent drift summary, {esc(summary.week)}</h1>",
        f'<p class="note">{len(summary.reports)} slice report(s), {len(summary.latest)} model and class '
        f"pair(s), {len(summary.drift_events)} drift event(s).</p>",
    ]
    for sec in _sections(summary):
        if sec.title:
            parts.append(f"<h2>{esc(sec.title)}</h2>")
        if sec.header:
            if sec.rows:
                parts.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in sec.header) + "</tr>")
                parts.extend(
                    "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in sec.rows
                )
                parts.append("</table>")
            else:
                parts.append('<p class="note">none</p>')
        for name in sec.images:
            if name in figures:
                parts.append(img(name))
    parts.extend(f'<p class="note">{esc(n)}</p>' for n in summary.notes)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def render_markdown(summary: WeeklySummary, figures: Mapping[str, tuple[str, bytes]] | None = None) -> str:
    """The summary as Markdown that links the PNG files by name (written next to it)."""
    figures = draw_figures(summary) if figures is None else figures

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [
        f"# slice-agent drift summary, {summary.week}",
        "",
        f"{len(summary.reports)} slice report(s), {len(summary.latest)} model and class pair(s), "
        f"{len(summary.drift_events)} drift event(s).",
        "",
    ]
    for sec in _sections(summary):
        if sec.title:
            lines += [f"## {sec.title}", ""]
        if sec.header:
            if sec.rows:
                lines.append("| " + " | ".join(cell(h) for h in sec.header) + " |")
                lines.append("|" + "---|" * len(sec.header))
                lines.extend("| " + " | ".join(cell(c) for c in row) + " |" for row in sec.rows)
            else:
                lines.append("none")
            lines.append("")
        for name in sec.images:
            if name in figures:
                lines += [f"![{figures[name][0]}]({name})", ""]
    lines.extend(f"_{n}_" for n in summary.notes)
    return "\n".join(lines).rstrip() + "\n"


def write_summary(summary: WeeklySummary, out_dir: str | Path) -> SummaryFiles:
    """Write ``OUT/WEEK/summary.html``, ``summary.md`` and the PNG plots; return their paths."""
    folder = Path(out_dir) / summary.week
    folder.mkdir(parents=True, exist_ok=True)
    figures = draw_figures(summary)
    images = []
    for name, (_, png) in figures.items():
        (folder / name).write_bytes(png)
        images.append(folder / name)
    page = folder / "summary.html"
    page.write_text(render_html(summary, figures), encoding="utf-8")
    markdown = folder / "summary.md"
    markdown.write_text(render_markdown(summary, figures), encoding="utf-8")
    log.info(
        "weekly summary %s written: %d report(s), %d plot(s)", summary.week, len(summary.reports), len(images)
    )
    return SummaryFiles(page, markdown, tuple(images))
