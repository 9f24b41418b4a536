"""Charts of a report, drawn by matplotlib: PNG for mail, SVG for the console.

matplotlib is imported inside the functions (Agg backend, no display), so the
CLI and the daemon start without it. A chart shows the report's label column
against its chart columns: bars for categories, reps and channels, lines for
days. Bounded: at most MAX_BARS bars (the rows as sorted), any number of days.
"""

from __future__ import annotations

import io
from typing import Any

from maild.reports.model import Report

MAX_BARS = 25
WIDTH, HEIGHT, DPI = 8.0, 4.0, 100


def _figure(report: Report) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure  # no pyplot: no global state, safe in threads

    spec = report.spec
    names = spec.column_names
    label_index = names.index(spec.label)
    rows = report.rows if spec.chart_kind == "line" else report.rows[:MAX_BARS]
    labels = [str(r[label_index]) if r[label_index] is not None else "-" for r in rows]
    if spec.name == "turnaround":  # by category and by rep: tell them apart
        labels = [f"{r[0]}: {lab}" for r, lab in zip(rows, labels)]
    fig = Figure(figsize=(WIDTH, HEIGHT), dpi=DPI)
    ax = fig.add_subplot()
    series = [(report.spec.column(c).label, [r[names.index(c)] or 0 for r in rows]) for c in spec.chart]
    if spec.chart_kind == "line":
        xs = list(range(len(labels)))
        for label, values in series:
            ax.plot(xs, values, label=label, marker="." if len(xs) <= 60 else None)
        step = max(1, len(xs) // 10)
        ax.set_xticks(xs[::step], labels[::step], rotation=30, ha="right", fontsize=8)
    else:
        width = 0.8 / max(1, len(series))
        xs = list(range(len(labels)))
        for i, (label, values) in enumerate(series):
            ax.bar([x + (i - (len(series) - 1) / 2) * width for x in xs], values, width, label=label)
        ax.set_xticks(xs, labels, rotation=30 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center",
                      fontsize=8)
    if not rows:
        ax.text(0.5, 0.5, "no data in this period", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(f"{report.title}: {report.window.start.date()} to {report.window.end.date()}", fontsize=10)
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _render(report: Report, fmt: str) -> bytes:
    buffer = io.BytesIO()
    # Fixed metadata: the same report gives the same bytes (no creation date in the file).
    metadata: dict[str, Any] = {"Software": None} if fmt == "png" else {"Date": None, "Creator": None}
    _figure(report).savefig(buffer, format=fmt, metadata=metadata)
    return buffer.getvalue()


def chart_png(report: Report) -> bytes:
    return _render(report, "png")


def chart_svg(report: Report) -> str:
    return _render(report, "svg").decode("utf-8")
