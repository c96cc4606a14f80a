"""The weekly drift summary: one self-contained HTML page, and Markdown with PNG files.

Inputs are plain data, so the batch CLI and the streaming agent feed it the same way:

- the slice reports of the week, each with the time it was made (:class:`TimedReport`);
- optionally, drift events (:class:`DriftEvent`) found by the stream's detector;
- optionally, per modality, the embeddings of the previous and of this week, compared by a
  kernel two-sample statistic (MMD) against a permutation threshold (:func:`embedding_drift`);
- optionally, thumbnails of slice members, where images exist (:func:`member_thumbnails`); off
  unless ``SummarySettings.thumbnails`` is set, and each image is first checked on its pixels for
  burned-in text (:func:`burned_in_text`), whatever its ``BurnedInAnnotation`` tag says.

:func:`build_summary` keeps the week's reports and computes the figures' data; :func:`write_summary`
draws the plots and writes ``summary.html`` (PNG plots inlined as base64) and ``summary.md`` next to
the PNG files.

What the summary shows is aggregate: model and class names, counts, rates, p-values and scrubbed
tokens (re-checked to be lower-case words), read from each report's export form
(:meth:`~agent.report.SliceReport.for_export`). It never shows a study uid, a slice id, report text,
header values or a calendar date of a case: the week is named by its ISO week and days by their
weekday.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.dates import DateFormatter, DayLocator, date2num
from matplotlib.figure import Figure

from agent.config import SummarySettings
from agent.drift.embedding import EmbeddingDrift, embedding_drift
from agent.errors import AgentError
from agent.exporter import safe_label_value, safe_tokens
from agent.report import SliceReport, SliceResult
from agent.weeks import iso_week, previous_week

if TYPE_CHECKING:
    from agent.images import ImageAccess

__all__ = [
    "DriftEvent",
    "EmbeddingDrift",
    "SummaryFiles",
    "TimedReport",
    "WeeklySummary",
    "build_summary",
    "burned_in_text",
    "embedding_drift",
    "iso_week",
    "member_thumbnails",
    "previous_week",
    "read_report",
    "read_reports",
    "render_html",
    "render_markdown",
    "write_summary",
]

log = logging.getLogger(__name__)

SliceKey = tuple[str, str, int]
"""A slice in the summary: ``(model, target_class, rank)`` of the week's latest report."""


@dataclass(frozen=True)
class TimedReport:
    """A slice report and the time it was made (timezone-aware)."""

    at: datetime
    report: SliceReport


@dataclass(frozen=True)
class DriftEvent:
    """An error-rate drift found for one model and class, with its statistic and threshold if known."""

    at: datetime
    model: str
    target_class: str | int
    statistic: float | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class WeeklySummary:
    """What one week's summary shows, as data."""

    week: str
    start: datetime
    end: datetime
    reports: tuple[TimedReport, ...]
    latest: tuple[SliceReport, ...]
    drift_events: tuple[DriftEvent, ...] = ()
    embedding_drift: tuple[EmbeddingDrift, ...] = ()
    thumbnails: Mapping[SliceKey, tuple[np.ndarray, ...]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def seen_in(self, report: SliceReport, s: SliceResult) -> int:
        """In how many of the week's reports of the same model and class the slice was found."""
        return sum(
            any(other.id == s.id for other in r.report.slices)
            for r in self.reports
            if _key(r.report) == _key(report)
        )

    def refits(self, report: SliceReport) -> int:
        """The week's reports of the same model and class."""
        return sum(_key(r.report) == _key(report) for r in self.reports)


@dataclass(frozen=True)
class SummaryFiles:
    """Where :func:`write_summary` put the page, the Markdown and the plots."""

    html: Path
    markdown: Path
    images: tuple[Path, ...]


# ----------------------------------------------------------------------------------------- inputs


def read_report(path: str | Path) -> TimedReport:
    """Read one slice report file; its time is the window's end, else the file's modification time."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise AgentError(f"cannot read slice report {path}: {err}") from err
    report = SliceReport.from_dict(data)
    at = None
    if report.window.end:
        at = datetime.fromisoformat(report.window.end.replace("Z", "+00:00"))
    if at is None:
        at = datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
    return TimedReport(at if at.tzinfo else at.replace(tzinfo=UTC), report)


def read_reports(paths: Sequence[str | Path]) -> list[TimedReport]:
    """Read report files, and every ``*.json`` under the directories among ``paths``."""
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(p.rglob("*.json")) if p.is_dir() else [p])
    return [read_report(f) for f in files]


def _key(report: SliceReport) -> tuple[str, str]:
    return str(report.model), str(report.target_class)


def _safe(report: SliceReport) -> bool:
    return safe_label_value(report.model) is not None and safe_label_value(report.target_class) is not None


# ------------------------------------------------------------------------------------ thumbnails


def member_thumbnails(
    reports: Sequence[SliceReport],
    images: Mapping[str, str],
    *,
    per_slice: int = 3,
    size: int = 96,
    access: ImageAccess | None = None,
) -> dict[SliceKey, tuple[np.ndarray, ...]]:
    """Small grey images of each slice's most probable members, where the study has an image.

    ``images`` maps study uid to a DICOM path or URI (from the inference events). An image is
    shown only if its pixels show no burned-in text (:func:`burned_in_text`, on a 256-pixel
    rendering); a ``BurnedInAnnotation`` of ``YES`` skips it without looking, but no tag value
    lets an image through unchecked (many CR and DX devices never set it). Unreadable images are
    skipped too. Files are read only through ``access`` (the image roots and caps); without it
    no image is read.
    """
    from agent import dicom

    out: dict[SliceKey, tuple[np.ndarray, ...]] = {}
    for report in reports:
        for s in report.slices:
            found: list[np.ndarray] = []
            for m in s.members:
                if len(found) >= per_slice:
                    break
                source = images.get(m.study_uid)
                if not source or _tagged_burned_in(source, access):
                    continue
                try:
                    if burned_in_text(dicom.read_pixels(source, size=_CHECK_SIZE, access=access)):
                        log.debug("thumbnail skipped: text-like strokes at the image's edges")
                        continue
                    found.append(
                        np.asarray(dicom.read_pixels(source, size=size, access=access), dtype=np.float32)
                    )
                except (AgentError, OSError) as err:
                    log.debug("thumbnail skipped: %s", type(err).__name__)
            if found:
                out[(*_key(report), s.rank)] = tuple(found)
    return out


def _tagged_burned_in(source: str, access: ImageAccess | None) -> bool:
    """Whether the header says ``BurnedInAnnotation`` is ``YES``; read through the image boundary."""
    import pydicom

    from agent.errors import ImageRefusedError
    from agent.images import ImageAccess, check_file_meta

    path = source[len("file://") :] if source.startswith("file://") else source
    try:
        with (access or ImageAccess()).open(path) as fh:
            check_file_meta(fh)
            ds = pydicom.dcmread(fh, stop_before_pixels=True)
    except ImageRefusedError:
        return False  # read_pixels refuses it too
    except Exception:  # unreadable here means read_pixels will refuse it too
        return False
    return str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES"


_CHECK_SIZE = 256


def burned_in_text(
    pixels: np.ndarray,
    *,
    border: float = 0.2,
    tile: int = 16,
    contrast: float = 0.15,
    min_transitions: int = 4,
    min_rows: float = 0.25,
) -> bool:
    """Whether a grey image (values in [0, 1]) shows text-like strokes along its edges.

    Burned-in annotations (names, ids, dates) sit in the corners and along the edges, as thin
    strokes of high contrast. The bands within ``border`` of each edge are cut into square tiles
    of ``tile`` pixels; along each row of a tile, a *transition* is a step of more than
    ``contrast`` between neighbouring pixels. A line of characters crosses each row of its tiles
    several times (on and off every stroke), where anatomy or a body's outline crosses once and a
    wire or tube twice. A tile is text-like when at least ``min_rows`` of its rows have
    ``min_transitions`` transitions or more, and so do ``min_rows`` of its columns; one such tile
    is enough (an image wrongly held back costs a thumbnail, one wrongly shown may show a name).

    Examples
    --------
    >>> smooth = np.tile(np.linspace(0.0, 1.0, 128), (128, 1))
    >>> burned_in_text(smooth)
    False
    >>> marked = smooth.copy()
    >>> marked[4:14, 4:60:3] = 1.0  # vertical strokes of a word
    >>> marked[4:14:3, 4:60] = np.where(marked[4:14:3, 4:60] > 0.5, 0.0, 1.0)
    >>> burned_in_text(marked)
    True
    """
    img = np.asarray(pixels, dtype=np.float64)
    if img.ndim != 2:
        raise AgentError(f"expected a 2-D grey image, got shape {img.shape}")
    h, w = img.shape
    band_h, band_w = max(tile, int(h * border)), max(tile, int(w * border))
    steps_x = np.abs(np.diff(img, axis=1)) > contrast
    steps_y = np.abs(np.diff(img, axis=0)) > contrast
    for y in range(0, h - tile + 1, tile // 2):
        for x in range(0, w - tile + 1, tile // 2):
            at_edge = y < band_h or y + tile > h - band_h or x < band_w or x + tile > w - band_w
            if not at_edge:
                continue
            rows = steps_x[y : y + tile, x : x + tile - 1].sum(axis=1)
            cols = steps_y[y : y + tile - 1, x : x + tile].sum(axis=0)
            if np.mean(rows >= min_transitions) >= min_rows and np.mean(cols >= min_transitions) >= min_rows:
                return True
    return False


# --------------------------------------------------------------------------------------- summary


def build_summary(
    week: str,
    reports: Sequence[TimedReport],
    *,
    drift_events: Sequence[DriftEvent] = (),
    embeddings: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    thumbnails: Mapping[SliceKey, Sequence[np.ndarray]] | None = None,
    settings: SummarySettings | None = None,
) -> WeeklySummary:
    """Keep what falls in ``week`` and compute the summary's data.

    Parameters
    ----------
    week
        ISO week, for example ``"2026-W48"``.
    reports
        Slice reports with their times; those outside the week are ignored.
    drift_events
        Error-rate drifts; those outside the week are ignored.
    embeddings
        Per modality, ``(previous week, this week)`` embedding arrays ``(n, d)``.
    thumbnails
        Member images per ``(model, target_class, rank)`` of the week's latest reports; dropped
        unless ``settings.thumbnails`` is set.
    """
    settings = settings or SummarySettings()
    start, end = iso_week(week)
    notes: list[str] = []
    kept = sorted((r for r in reports if start <= r.at < end), key=lambda r: r.at)
    unsafe = [r for r in kept if not _safe(r.report)]
    if unsafe:
        notes.append(f"{len(unsafe)} report(s) left out: model or class name is not a short identifier")
        kept = [r for r in kept if _safe(r.report)]
    latest: dict[tuple[str, str], SliceReport] = {}
    for r in kept:
        latest[_key(r.report)] = r.report
    drifts: list[EmbeddingDrift] = []
    for modality, (prev, cur) in sorted((embeddings or {}).items()):
        try:
            drifts.append(
                embedding_drift(
                    prev,
                    cur,
                    modality=modality,
                    alpha=settings.drift_alpha,
                    n_permutations=settings.drift_permutations,
                    max_samples=settings.drift_max_samples,
                    seed=settings.seed,
                )
            )
        except AgentError as err:
            notes.append(str(err))
    events = tuple(
        sorted(
            (
                e
                for e in drift_events
                if start <= e.at < end
                and safe_label_value(e.model) is not None
                and safe_label_value(e.target_class) is not None
            ),
            key=lambda e: e.at,
        )
    )
    return WeeklySummary(
        week=week,
        start=start,
        end=end,
        reports=tuple(kept),
        latest=tuple(latest[k] for k in sorted(latest)),
        drift_events=events,
        embedding_drift=tuple(drifts),
        thumbnails={
            k: tuple(v)[: settings.examples_per_slice]
            for k, v in (thumbnails or {}).items()
            if settings.thumbnails
        },
        notes=tuple(notes),
    )


# ----------------------------------------------------------------------------------------- plots


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
    keys = sorted({_key(r.report) for r in summary.reports})
    colours = {}
    for key in keys:
        points = [
            (r.at, r.report.window.n_errors / r.report.window.n)
            for r in summary.reports
            if _key(r.report) == key and r.report.window.n > 0
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


def plot_slices(summary: WeeklySummary) -> bytes:
    """Error rate inside each slice of the latest reports against the rest of its class."""
    fig = Figure(figsize=(8, 3.6))
    ax = fig.subplots()
    rows = [(r, s) for r in summary.latest for s in r.slices]
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [s.error_rate for _, s in rows], width=0.4, label="slice", color="#c0392b")
    ax.bar(x + 0.2, [s.rest_error_rate for _, s in rows], width=0.4, label="rest of class", color="#7f8c8d")
    ax.set_xticks(x, [f"{r.model} / {r.target_class}\nslice {s.rank}" for r, s in rows], fontsize="small")
    ax.set_ylabel("error rate")
    ax.set_ylim(0, 1)
    ax.set_xlim(-0.7, max(len(rows), 3) - 0.3)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("Slice error rate vs the rest of its class (latest refit)")
    if rows:
        ax.legend(loc="upper right", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no significant error slice", ha="center", va="center", transform=ax.transAxes)
    return _png(fig)


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


def _figures(summary: WeeklySummary) -> dict[str, tuple[str, bytes]]:
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


# ---------------------------------------------------------------------------------------- render


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
    for key in sorted({_key(r.report) for r in summary.reports}):
        ratios = [
            r.report.window.n_errors / r.report.window.n
            for r in summary.reports
            if _key(r.report) == key and r.report.window.n > 0
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
    return out


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
    figures = _figures(summary) if figures is None else figures
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
    figures = _figures(summary) if figures is None else figures

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
    figures = _figures(summary)
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
