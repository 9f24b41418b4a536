"""Report pages: each report of `maild.reports` as a page with its chart, its filters in the URL.

The filter form is a plain GET form, so a filtered, sorted report is a link
a lead can keep or send. The chart is the SVG `maild.reports.charts` draws
(matplotlib), inlined in the page; its style attributes are why report pages
alone allow inline styles (never scripts) in their CSP. Read only.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.orm import Session

from maild.models import Issue, utcnow
from maild.reports import REPORTS, FilterError, Filters, ReportError, Targets, key_statistics, run_report
from maild.reports.charts import chart_svg
from maild.reports.stats import STATISTIC_LABELS

CHART_CSP = ("default-src 'none'; script-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
             "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
# Where each key statistic leads: the report worth opening when the number looks odd.
STAT_LINKS = {
    "open": "/reports/backlog", "pending": "/reports/backlog", "unassigned": "/#unassigned",
    "oldest_waiting": "/#waiting", "opened_today": "/reports/issue-types", "opened_this_week": "/reports/issue-types",
    "closed_today": "/reports/backlog", "closed_this_week": "/reports/backlog", "breaches": "/reports/turnaround",
    "interactions_today": "/reports/channels", "quarantined": "/metrics", "outbox_failures": "/metrics",
}
BREACHING_LIMIT = 25
CHANNELS = ("email", "phone", "note", "web")


def _age(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours:.0f} h" if hours < 48 else f"{hours / 24:.0f} days"


def statistics(stats: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for key, label in STATISTIC_LABELS.items():
        value = stats.get(key)
        href = STAT_LINKS.get(key, "/")
        if key == "oldest_waiting":
            if not value:
                continue
            href, value = f"/issues/{value['issue_id']}", _age(value["age_seconds"])
        out.append({"key": key, "label": label, "value": value, "href": href})
    return out


def breaching(session: Session) -> list[int]:
    """Issues not closed that missed a turnaround target (desk/turnaround records when): longest first."""
    return list(session.scalars(select(Issue.id).where(Issue.status != "closed", Issue.breached_at.is_not(None))
                                .order_by(Issue.breached_at, Issue.id).limit(BREACHING_LIMIT)))


class ReportPages:
    def __init__(self, targets: Targets, options: dict[str, list[str]]) -> None:
        self.targets, self.options = targets, options

    def add_routes(self, app: web.Application, console: Any) -> None:
        self.console = console
        app.router.add_get("/reports", self.index)
        app.router.add_get("/reports/{name}", self.page)

    async def front(self, console: Any) -> dict[str, Any]:
        """The front page's part: key statistics, breaching issues, links to each report."""
        from maild.web.queries import issues_by_id

        def read(session: Session) -> dict[str, Any]:
            stats = key_statistics(session, utcnow(), self.targets)
            return {"stats": statistics(stats), "breaching": issues_by_id(session, breaching(session))}

        out = await console.query(read)
        out["report_links"] = [{"name": s.name, "title": s.title, "description": s.description}
                               for s in REPORTS.values()]
        return out

    async def index(self, request: web.Request) -> web.Response:
        links = [{"name": s.name, "title": s.title, "description": s.description} for s in REPORTS.values()]
        return self.console.render(request, "reports.html", report_links=links)

    async def page(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in REPORTS:
            return self.console.render(request, "error.html", status=404, message=f"There is no report {name!r}.")
        query = {k: v for k, v in request.query.items() if len(v) <= 200}
        sort = query.get("sort") or None
        desc = query.get("desc") == "1"
        try:
            filters = Filters.from_query(query)
            report = await self.console.query(
                lambda s: run_report(s, name, filters, sort, desc, targets=self.targets))
        except (FilterError, ReportError) as exc:
            return self.console.render(request, "error.html", status=400, message=str(exc))
        svg = await self.console.call(chart_svg, report)
        svg = svg[svg.find("<svg"):]
        current = filters.as_query()

        def sort_link(column: str) -> str:
            flip = "0" if report.sort == column and report.desc else "1"
            return "?" + urlencode({**current, "sort": column, "desc": flip})

        response = self.console.render(
            request, "report.html", report=report, chart=svg, filters=current, options=self.options,
            sort_link=sort_link, since=report.window.start.date().isoformat(),
            until=(report.window.end - timedelta(seconds=1)).date().isoformat(),
        )
        response.headers["Content-Security-Policy"] = CHART_CSP
        return response


def pages(settings: Any) -> ReportPages:
    targets = Targets(settings.reports.first_response_hours, settings.reports.resolution_hours)
    options = {
        "mailbox": [m.name for m in settings.mailbox],
        "category": sorted({"uncategorized", *(c.name for c in settings.category)}),
        "priority": ["low", "normal", "high", "urgent"],
        "rep": [r.email for r in settings.rep],
        "channel": list(CHANNELS),
    }
    return ReportPages(targets, options)

