"""The summary's plots, drawn with matplotlib's object API (no global state) as PNG bytes."""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence

import numpy as np
from matplotlib.dates import DateFormatter, DayLocator, date2num
from matplotlib.figure import Figure

from agent.exporter import safe_tokens
from agent.report import SliceReport, SliceResult
from agent.summary.data import WeeklySummary, report_key
from agent.weeks import previous_week

__all__ = [
    "figures",
    "plot_embedding_drift",
    "plot_error_rate",
    "plot_slices",
    "plot_thumbnails",
    "slices_figure",
]

#: Characters per line of a slice's label, and lines at most.
LABEL_WIDTH = 40
LABEL_LINES = 4
#: Height of one line of a label (small text at its line spacing), in inches.
_LINE_INCHES = 0.17


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def _label(model: str, target: object) -> str:
    return f"{model} / {target}"


def plot_error_rate(summary: WeeklySummary) -> bytes:
    """Window error rate of each model and class over the week, with drift events marked."""
    fig = Figure(figsize=(8, 3.6))
    ax = fig.subplots()
    keys = sorted({report_key(r.report) for r in summary.reports})
    colours = {}
    for key in keys:
        points = [
            (r.at, r.report.window.n_errors / r.report.window.n)
            for r in summary.reports
            if report_key(r.report) == key and r.report.window.n > 0
        ]
        (line,) = ax.plot(
            [date2num(p[0]) for p in points], [p[1] for p in points], marker="o", label=_label(*key)
        )
        colours[key] = line.get_color()
    for e in summary.drift_events:
        ax.axvline(
            date2num(e.at),
            color=colours.get((e.model, str(e.target_class)), "grey"),
            linestyle="--",
            alpha=0.8,
        )
    ax.set_xlim(date2num(summary.start), date2num(summary.end))
    ax.xaxis.set_major_locator(DayLocator())
    ax.xaxis.set_major_formatter(DateFormatter("%a"))
    ax.set_ylabel("window error rate")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.set_title(
        f"Error rate per model and class, {summary.week}"
        + (" (dashed: drift)" if summary.drift_events else "")
    )
    if keys:
        ax.legend(loc="best", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no slice report this week", ha="center", va="center", transform=ax.transAxes)
    return _png(fig)


def slice_label(report: SliceReport, s: SliceResult) -> str:
    """A slice's label on the chart: model, class and rank, then its top scrubbed tokens, wrapped
    to :data:`LABEL_WIDTH` characters and :data:`LABEL_LINES` lines (the last cut with an ellipsis).

    >>> from agent.report import Window
    >>> r = SliceReport("cxr", "pneumothorax", ("report",), Window(10, 1, None, None), (), ())
    >>> s = SliceResult(2, "s", 30, 0.5, 0.1, 0.01, 0.8, 30, (), ())
    >>> slice_label(r, s)
    'cxr / pneumothorax, slice 2'
    """
    lines = textwrap.wrap(f"{_label(report.model, report.target_class)}, slice {s.rank}", LABEL_WIDTH)
    words = ", ".join(safe_tokens((t.token for t in s.tokens), limit=3))
    lines += textwrap.wrap(words, LABEL_WIDTH)
    if len(lines) > LABEL_LINES:
        lines = [*lines[: LABEL_LINES - 1], textwrap.shorten(" ".join(lines[LABEL_LINES - 1 :]), LABEL_WIDTH)]
    return "\n".join(lines)


def slices_figure(summary: WeeklySummary) -> Figure:
    """Error rate inside each slice of the latest reports against the rest of its class, one row per
    slice (horizontal bars), each row tall enough for its label: labels never overlap."""
    rows = [(r, s) for r in (r.for_export() for r in summary.latest) for s in r.slices]
    labels = [slice_label(r, s) for r, s in rows]
    lines = max((label.count("\n") + 1 for label in labels), default=1)
    pitch = max(0.5, lines * _LINE_INCHES + 0.2)
    fig = Figure(figsize=(8, 1.6 + pitch * max(len(rows), 1)), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(rows))
    ax.barh(y - 0.2, [s.error_rate for _, s in rows], height=0.4, label="slice", color="#c0392b")
    ax.barh(y + 0.2, [s.rest_error_rate for _, s in rows], height=0.4, label="rest of class", color="#7f8c8d")
    ax.set_yticks(y, labels, fontsize="small")
    ax.set_ylim(max(len(rows), 1) - 0.5, -0.5)  # the first slice on top
    ax.set_xlim(0, 1)
    ax.set_xlabel("error rate")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("Slice error rate vs the rest of its class (latest refit)")
    if rows:
        ax.legend(loc="lower right", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no significant error slice", ha="center", va="center", transform=ax.transAxes)
    return fig


def plot_slices(summary: WeeklySummary) -> bytes:
    """The slice chart (:func:`slices_figure`) as PNG."""
    return _png(slices_figure(summary))


def plot_embedding_drift(summary: WeeklySummary) -> bytes:
    """Week-over-week MMD² per modality against its permutation threshold."""
    fig = Figure(figsize=(6, 3.2))
    ax = fig.subplots()
    drifts = summary.embedding_drift
    x = np.arange(len(drifts))
    ax.bar(
        x, [d.mmd2 for d in drifts], color=["#c0392b" if d.drifted else "#2e86c1" for d in drifts], width=0.5
    )
    ax.scatter(
        x, [d.threshold for d in drifts], marker="_", s=1200, color="black", label="threshold", zorder=3
    )
    ax.set_xticks(x, [d.modality for d in drifts])
    ax.set_ylabel("MMD²")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"Embedding drift, {previous_week(summary.week)} to {summary.week}")
    ax.legend(loc="best", fontsize="small")
    return _png(fig)


def plot_thumbnails(images: Sequence[np.ndarray]) -> bytes:
    """A strip of grey member images."""
    fig = Figure(figsize=(1.4 * len(images), 1.5))
    for i, axes in enumerate(np.atleast_1d(fig.subplots(1, len(images)))):
        axes.imshow(np.asarray(images[i]), cmap="gray", vmin=0.0, vmax=1.0)
        axes.set_axis_off()
    return _png(fig)


def figures(summary: WeeklySummary) -> dict[str, tuple[str, bytes]]:
    """File name to (alt text, PNG) of every plot of the summary."""
    out = {
        "error-rate.png": ("Error rate per model and class over the week", plot_error_rate(summary)),
        "slices.png": ("Slice error rate vs rest", plot_slices(summary)),
    }
    if summary.embedding_drift:
        out["embedding-drift.png"] = (
            "Week-over-week embedding drift per modality",
            plot_embedding_drift(summary),
        )
    for (model, target, rank), images in sorted(summary.thumbnails.items()):
        if images:
            out[f"members-{model}-{target}-{rank}.png"] = (
                f"Members of slice {rank} of {model} / {target}",
                plot_thumbnails(images),
            )
    return out
