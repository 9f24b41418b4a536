"""What a report is, apart from how it is computed: its columns, its rows, its totals.

Plain frozen values the CLI, the console, the charts and the digest all read;
nothing here touches the database.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from maild.reports.filters import Filters, Window

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

# text: a name; int: a count; float: a plain number; hours: a duration in hours;
# percent: 0-100; date: a day (YYYY-MM-DD).
ColumnType = Literal["text", "int", "float", "hours", "percent", "date"]


@dataclass(frozen=True)
class Column:
    name: str  # the key used in --sort, JSON, CSV and the URL
    type: ColumnType
    label: str  # the header shown to a person
    total: bool = False  # summed in the totals row


@dataclass(frozen=True)
class Targets:
    """Turnaround targets: a first response and a resolution within these many hours."""

    first_response_hours: float = 24.0
    resolution_hours: float = 72.0


@dataclass(frozen=True)
class Context:
    """What a report's query needs besides the session."""

    filters: Filters
    window: Window
    now: datetime
    targets: Targets


@dataclass(frozen=True)
class ReportSpec:
    name: str
    title: str
    description: str
    columns: tuple[Column, ...]
    default_sort: str
    default_desc: bool
    label: str  # the column naming each bar or point of the chart
    chart: tuple[str, ...]  # the value column(s) charted
    chart_kind: Literal["bar", "line"]
    query: Callable[[Session, Context], list[tuple]] = field(repr=False)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


@dataclass(frozen=True)
class Report:
    spec: ReportSpec
    filters: Filters
    window: Window
    sort: str
    desc: bool
    rows: list[tuple]
    totals: tuple | None  # aligned with the columns: a sum, or None where a sum means nothing

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def title(self) -> str:
        return self.spec.title

    @property
    def columns(self) -> tuple[Column, ...]:
        return self.spec.columns

    def as_dicts(self) -> list[dict[str, Any]]:
        names = self.spec.column_names
        return [dict(zip(names, row)) for row in self.rows]

    def as_json(self) -> dict[str, Any]:
        """The documented JSON shape of `maild report NAME --json`."""
        names = self.spec.column_names
        return {
            "report": self.name,
            "title": self.title,
            "since": self.window.start.isoformat(),
            "until": self.window.end.isoformat(),
            "filters": self.filters.as_query(),
            "sort": self.sort,
            "desc": self.desc,
            "columns": [{"name": c.name, "type": c.type, "label": c.label} for c in self.columns],
            "rows": self.as_dicts(),
            "totals": dict(zip(names, self.totals)) if self.totals is not None else None,
        }


def cell_text(value: Any, kind: str) -> str:
    """A report cell as people read it: "-" for nothing, percentages and hours rounded."""
    if value is None:
        return "-"
    if kind == "percent":
        return f"{value:.1f}%"
    if kind in ("hours", "float"):
        return f"{value:.2f}"
    return str(value)
