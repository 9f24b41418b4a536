"""The mailed digest: queued once per period (by hand or by the daemon's job, across
restarts), delivered through the outbox to a real SMTP sink, and parsed there: a
text part, an HTML part with the key statistics and report rows, and inline PNG
charts referenced by cid:."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, UTC

import pytest
from sqlalchemy import select

from maild.app import build
from maild.config import DigestConfig, load
from maild.models import DigestRun, Interaction, OutboxMessage
from maild.reports.digest import Digests, latest_period
from conftest import Cli, SECRET, write_config
from test_outbound import outbound, relay  # noqa: F401  (the sink fixture)
from test_reports import MAR4, _history

NOW = MAR4 + timedelta(days=7, hours=8)  # Monday March 11, 08:00 UTC: last week and yesterday are due
DIGEST = """
[[digest]]
name = "lead"
recipients = ["lead@acme.test", "boss@acme.test"]
every = "weekly"
at = "07:00"
reports = ["issue-types", "turnaround", "backlog"]
top = 5
console_url = "https://desk.acme.test/console"
"""


@pytest.fixture
def digest_app(tmp_path, db_url, relay, monkeypatch):  # noqa: F811
    monkeypatch.setenv("MAILD_SECRET", SECRET)
    path = write_config(tmp_path / "maild.toml", db_url, extra=outbound(f"127.0.0.1:{relay.port}") + DIGEST)
    app = build(load(path))
    with app.sessions() as session, session.begin():
        _history(session)
    app.cli = Cli(path)
    yield app
    app.close()


def _digest_rows(app) -> list[OutboxMessage]:
    with app.sessions() as s:
        return list(s.scalars(select(OutboxMessage).where(OutboxMessage.kind == "digest")))


def test_digest_mail_at_the_sink_has_html_statistics_and_inline_png_charts(digest_app, relay):  # noqa: F811
    relay.start()
    result = digest_app.cli("digest", "send", "lead", "--now", NOW.isoformat())
    assert result.exit_code == 0, result.output
    assert "digest lead for 2024-W10 queued" in result.output
    assert digest_app.sender.run_once()["sent"] == 1
    [(envelope, msg)] = relay.messages()
    assert sorted(envelope["to"]) == ["boss@acme.test", "lead@acme.test"]
    assert msg["Subject"] == "Helpdesk digest lead: 2024-W10" and msg["Auto-Submitted"] == "auto-generated"
    assert msg.get_content_type() == "multipart/alternative"
    text, related = msg.get_payload()
    assert text.get_content_type() == "text/plain" and related.get_content_type() == "multipart/related"
    html_part, *images = related.get_payload()
    html = re.sub(r' style="[^"]*"', "", html_part.get_content())
    assert html_part.get_content_type() == "text/html"
    # Three charts, each a PNG the HTML shows by its Content-ID.
    assert [i.get_content_type() for i in images] == ["image/png"] * 3
    for image in images:
        assert image.get_content().startswith(b"\x89PNG\r\n\x1a\n")
        assert f'src="cid:{image["Content-ID"].strip("<>")}"' in html
    # The key statistics and the reports' top rows, in both parts.
    assert "Open issues</th><td>5</td>" in html and "Unassigned (open or pending)</th><td>3</td>" in html
    assert "<td>billing</td><td>6</td><td>2</td><td>4</td><td>200.0%</td>" in html
    assert "https://desk.acme.test/console/reports/turnaround?since=2024-03-04" in html
    plain = text.get_content()
    assert "Open issues: 5" in plain and "billing" in plain and "Backlog over time" in plain
    # The digest is about no issue: no interaction records it.
    with digest_app.sessions() as s:
        assert s.scalar(select(Interaction.id).where(Interaction.message_id == msg["Message-ID"].strip("<>"))) is None


def test_digest_goes_once_per_period_across_restarts_and_daemons(digest_app):
    first = digest_app.cli("digest", "send", "lead", "--now", NOW.isoformat())
    assert "queued" in first.output
    again = digest_app.cli("digest", "send", "lead", "--now", (NOW + timedelta(days=2)).isoformat())
    assert "2024-W10 was sent already" in again.output
    # The daemon's job, as two daemons (or a restarted one) would run it: nothing new this week.
    job = Digests(digest_app.sessions, digest_app.settings)
    assert job.run(NOW + timedelta(hours=1)) == []
    assert Digests(digest_app.sessions, digest_app.settings).run(NOW + timedelta(days=6)) == []
    assert len(_digest_rows(digest_app)) == 1
    # The next Monday after 07:00 the next week goes, once.
    monday = NOW + timedelta(days=7)
    assert len(job.run(monday)) == 1 and job.run(monday) == []
    # By hand, --again sends a copy; the period stays recorded once.
    assert "queued" in digest_app.cli("digest", "send", "lead", "--again", "--now", monday.isoformat()).output
    with digest_app.sessions() as s:
        runs = s.execute(select(DigestRun.period).order_by(DigestRun.id)).scalars().all()
    assert runs == ["2024-W10", "2024-W11"] and len(_digest_rows(digest_app)) == 3


def test_digest_unknown_name_and_bad_time(digest_app):
    bad = digest_app.cli("digest", "send", "nope")
    assert bad.exit_code == 65 and "no digest named 'nope' (lead)" in bad.output
    bad = digest_app.cli("digest", "send", "lead", "--now", "soon")
    assert bad.exit_code == 65 and "not an ISO 8601 time" in bad.output


def test_periods_daily_and_weekly():
    daily = DigestConfig(name="d", recipients=("a@acme.test",), every="daily", at="07:00")
    before, after = datetime(2024, 3, 11, 6, 59, tzinfo=UTC), datetime(2024, 3, 11, 7, 0, tzinfo=UTC)
    assert latest_period(daily, before).key == "2024-03-09" and latest_period(daily, after).key == "2024-03-10"
    assert latest_period(daily, after).window.end == datetime(2024, 3, 11, tzinfo=UTC)
    weekly = DigestConfig(name="w", recipients=("a@acme.test",), every="weekly", at="07:00")
    assert latest_period(weekly, before).key == "2024-W09" and latest_period(weekly, after).key == "2024-W10"
    assert latest_period(weekly, datetime(2024, 3, 17, 23, tzinfo=UTC)).window.start == MAR4


def test_config_rejects_a_bad_digest(tmp_path, db_url):
    from maild.config import ConfigError

    for extra, message in (
        ('[[digest]]\nname = "x"\nrecipients = ["a@acme.test"]\nreports = ["nope"]\n', r"digest\[0\]\.reports\[0\]: Input should be 'issue-types'"),
        ('[[digest]]\nname = "x"\nrecipients = ["a@acme.test"]\nat = "7am"\n', "is not a time of day"),
        ('[[digest]]\nname = "x"\nrecipients = ["a@acme.test"]\nmailbox = "sales"\n', "names mailbox 'sales'"),
    ):
        with pytest.raises(ConfigError, match=message):
            load(write_config(tmp_path / "bad.toml", db_url, extra=extra))
