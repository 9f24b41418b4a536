"""Reports and statistics over the helpdesk: the read side.

What types of issues occur most, which reps handle the most interactions, which
resources they use, how fast issues are answered and resolved, the backlog
over time and the channels mail arrives by; plus the key statistics of the
front page. Everything here only reads (the digest's one outbox row aside,
see digest.py); every number comes from aggregate SQL, never from Python loops
over issues or interactions.
"""

from maild.reports.filters import Filters, FilterError, Window
from maild.reports.model import Column, Report, ReportSpec, Targets
from maild.reports.registry import REPORTS, ReportError, run_report
from maild.reports.stats import key_statistics

__all__ = [
    "REPORTS", "Column", "FilterError", "Filters", "Report", "ReportError", "ReportSpec", "Targets", "Window",
    "key_statistics", "run_report",
]
