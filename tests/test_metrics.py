"""/metrics scraped from a running daemon and read with prometheus_client's own parser; /healthz."""

from __future__ import annotations

import smtplib
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from web_helpers import mail_with_attachment, running_console, send, wait_for_mail


@pytest.fixture
def console(tmp_path, db_url, monkeypatch, caplog):
    yield from running_console(tmp_path, db_url, monkeypatch, caplog)


def scrape(client) -> dict[str, dict[tuple, float]]:
    resp = client.get("/metrics")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_metrics_count_what_the_daemon_did_without_a_session(console):
    send(console.smtp_port, mail_with_attachment("Printer on fire", "It burns."))
    with smtplib.SMTP("127.0.0.1", console.smtp_port, timeout=30) as s:
        s.ehlo()
        s.mail("x@example.net")
        code, _ = s.rcpt("victim@example.org")
        assert code == 550
    console.db.wait_processed(1)
    m = scrape(console.client)  # no cookie: /metrics needs no session
    assert m["maild_backlog_messages"][()] == 0
    assert m["maild_quarantine_messages"][()] == 0
    assert m["maild_oldest_pending_seconds"][()] == 0
    assert m["maild_processed_messages_total"][(("outcome", "interaction"),)] == 1
    assert m["maild_smtp_sessions_total"][(("proto", "smtp"),)] >= 2
    assert m["maild_smtp_accepted_total"][(("proto", "smtp"),)] == 1
    refused = m["maild_smtp_refused_total"]
    assert refused[(("code", "550"), ("proto", "smtp"), ("reason", "unknown-recipient"))] == 1
    statuses = {dict(k)["status"] for k in m["maild_outbox_messages"]}
    assert {"queued", "sending", "sent", "failed", "held", "unknown"} <= statuses
    assert m["maild_issues_breached"][()] == 0
    assert "maild_delivery_seconds_bucket" in m and (("le", "+Inf"),) in m["maild_delivery_seconds_bucket"]


def test_delivery_latency_counts_sent_mail(console):
    send(console.smtp_port, mail_with_attachment("Printer on fire", "It burns."))
    console.db.wait_processed(1)
    wait_for_mail(console.sink, "alice@acme.test")  # the new-issue notification to the reps was sent
    deadline = time.monotonic() + 30
    while (m := scrape(console.client))["maild_outbox_messages"][(("status", "sent"),)] < 2:
        assert time.monotonic() < deadline, m["maild_outbox_messages"]
        time.sleep(0.2)
    sent = m["maild_outbox_messages"][(("status", "sent"),)]
    assert m["maild_delivery_seconds_count"][()] == sent
    assert m["maild_delivery_seconds_bucket"][(("le", "+Inf"),)] == sent


def test_healthz_reports_listeners_and_database(console):
    status, body = console.client.json("/healthz")
    assert status == 200 and body == {"status": "ok", "listeners": body["listeners"], "database": "ok"}
    assert set(body["listeners"]) == {f"smtp=127.0.0.1:{console.smtp_port}", f"web=127.0.0.1:{console.client.port}"}
