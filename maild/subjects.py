"""The issue tag in our subjects (`[#123]` or `[PREFIX #123]`): a leaf that the
threading stage reads and everything that writes mail uses.
"""

from __future__ import annotations

import re


def subject_tag_re(prefix: str) -> re.Pattern[str]:
    """`[#123]`, or `[PREFIX #123]` when the instance has a prefix."""
    lead = re.escape(prefix) + r"\s*" if prefix else ""
    return re.compile(r"\[" + lead + r"#(\d{1,12})\]", re.I)


def subject_tag(prefix: str, issue_id: int) -> str:
    return f"[{prefix} #{issue_id}]" if prefix else f"[#{issue_id}]"
