"""The summary's slice chart: one row per slice, and no two labels overlap, however long the names."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from matplotlib.backends.backend_agg import FigureCanvasAgg

from agent.report import Member, SliceReport, SliceResult, TokenResult, Window
from agent.summary import TimedReport, WeeklySummary, build_summary
from agent.summary.plots import LABEL_LINES, LABEL_WIDTH, slice_label, slices_figure

MONDAY = datetime(2026, 11, 23, tzinfo=UTC)
LONG = (
    "hydropneumothorax",
    "pneumomediastinum",
    "tracheostomy tube",
    "bronchopleural fistula",
    "thoracostomy",
    "subcutaneous emphysema",
)


def _slice(rank: int) -> SliceResult:
    tokens = tuple(TokenResult(t, 0.3 - i / 100) for i, t in enumerate(LONG[rank - 1 :] + LONG[: rank - 1]))
    return SliceResult(
        rank=rank,
        id=f"s-{rank}",
        size=40,
        error_rate=0.4 + rank / 20,
        rest_error_rate=0.1,
        p_value=1e-5,
        error_precision_at_10=0.8,
        n_tested=40,
        members=(Member("1.2.840.99.1", 0.9),),
        tokens=(*tokens, TokenResult("Whitfield", 0.5)),
    )


def _summary(n_slices: int = 5, model: str = "chest-radiograph-triage-v2.3-research") -> WeeklySummary:
    report = SliceReport(
        model,
        "tension_pneumothorax_suspected",
        ("report", "metadata"),
        Window(1000, 120, None, None),
        tuple(_slice(r) for r in range(1, n_slices + 1)),
        (),
    )
    return build_summary("2026-W48", [TimedReport(MONDAY + timedelta(days=1), report)])


def _label_boxes(summary):
    fig = slices_figure(summary)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    (ax,) = fig.axes
    labels = [t for t in ax.get_yticklabels() if t.get_text()]
    return fig, renderer, labels, [t.get_window_extent(renderer) for t in labels]


def test_five_slices_with_long_token_names_have_labels_that_do_not_overlap():
    fig, renderer, labels, boxes = _label_boxes(_summary())
    assert len(labels) == 5
    for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2):
        assert not a.overlaps(b), f"labels {i + 1} and {j + 1} overlap: {a} and {b}"
    # every label is whole inside the figure, and the bars' area is not under a label
    frame = fig.bbox
    plot = fig.axes[0].get_window_extent(renderer)
    for box in boxes:
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
        assert box.x1 <= plot.x0 + 1
    text = [t.get_text() for t in labels]
    assert text[0].startswith("chest-radiograph-triage-v2.3-research") and "hydropneumothorax" in text[0]
    assert not any("Whitfield" in t for t in text), "only scrubbed lower-case tokens are shown"


def test_labels_stay_apart_with_many_slices_and_one_slice():
    for n in (1, 5):
        summaries = [_summary(n)]
        summaries.append(
            build_summary(
                "2026-W48",
                [
                    TimedReport(MONDAY + timedelta(days=d), r.report)
                    for d, r in enumerate(
                        TimedReport(MONDAY, _summary(n, model=f"model-{k}").latest[0]) for k in range(5)
                    )
                ],
            )
        )
        for summary in summaries:
            _, _, labels, boxes = _label_boxes(summary)
            assert len(labels) == len(summary.latest) * n
            assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))


def test_a_label_is_wrapped_and_cut_to_its_lines():
    report = _summary().latest[0]
    label = slice_label(report, report.slices[0])
    lines = label.split("\n")
    assert len(lines) <= LABEL_LINES and all(len(line) <= LABEL_WIDTH for line in lines)
    assert "slice 1" in label
