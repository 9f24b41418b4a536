"""The web console over real HTTP on loopback: sign-in by mail through a real SMTP sink, sessions,
pages, attachments, "mail me this issue", report pages and the security headers."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from web_helpers import (
    SIGNIN_SUBJECT, Client, Running, csrf_of, mail_with_attachment, running_console, send, sign_in, signin_link,
    wait_for_mail,
)


@pytest.fixture
def console(tmp_path, db_url, monkeypatch, caplog):
    yield from running_console(tmp_path, db_url, monkeypatch, caplog)


def first_issue(console: Running, subject: str = "Printer on fire", body: str = "It burns.\nSend help.") -> None:
    send(console.smtp_port, mail_with_attachment(subject, body))
    console.db.wait_processed(1)


def test_pages_need_a_session_and_sign_in_is_by_a_mailed_link_used_once(console):
    c = console.client
    for path in ("/", "/issues/1", "/customers/1", "/search?q=x", "/reports/backlog"):
        resp = c.get(path)
        assert resp.status == 303 and resp.headers["Location"] == "/signin", path
    assert c.post("/issues/1/mail-me", {"csrf": "x"}).status == 403
    used = sign_in(c, console.sink)
    assert c.cookies.get("maild_session")
    front = c.get("/")
    assert front.status == 200 and "Customer service" in front.text and "Alice" in front.text
    # The link worked once: a second use, even by the same browser, is refused.
    other = Client(c.port)
    assert other.get(used).status == 403 and "does not work" in other.get(used).text
    assert other.post(used).status == 403 and "maild_session" not in other.cookies
    assert other.get("/").status == 303


def test_session_cookie_is_http_only_same_site_and_signed(console):
    c = console.client
    assert c.post("/signin", {"address": "Alice@ACME.test"}).status == 200  # any case; aliases too
    link = signin_link(wait_for_mail(console.sink, "alice@acme.test", subject=SIGNIN_SUBJECT)[-1])
    path = link.split(str(c.port), 1)[1]
    resp = c.post(path)
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie and "Max-Age=" in cookie
    assert "Secure" not in cookie  # web.secure_cookies is off in this config
    forged = Client(c.port)
    forged.cookies["maild_session"] = c.cookies["maild_session"][:-3] + "AAA"
    assert forged.get("/").status == 303


def test_unknown_address_gets_the_same_answer_and_no_mail(console):
    c = console.client
    rep = c.post("/signin", {"address": "bob@acme.test"})
    stranger = c.post("/signin", {"address": "mallory@example.com"})
    assert rep.status == stranger.status == 200 and rep.text == stranger.text
    wait_for_mail(console.sink, "bob@acme.test")
    from maild.models import OutboxMessage

    with console.db.engine.connect() as conn:
        recipients = [r for (r,) in conn.execute(select(OutboxMessage.recipients))]
    assert ["bob@acme.test"] in recipients and all("mallory@example.com" not in r for r in recipients)


def test_expired_link_is_refused(console):
    from maild.models import SigninLink, utcnow

    c = console.client
    c.post("/signin", {"address": "alice@acme.test"})
    link = signin_link(wait_for_mail(console.sink, "alice@acme.test", subject=SIGNIN_SUBJECT)[-1])
    path = link.split(str(c.port), 1)[1]
    with console.db.engine.begin() as conn:  # the link's 15 minutes are over
        conn.execute(update(SigninLink).values(expires_at=utcnow() - timedelta(minutes=1)))
    assert c.get(path).status == 403
    assert c.post(path).status == 403 and "maild_session" not in c.cookies
    assert c.get("/signin/not-a-link").status == 403


def test_issue_page_attachment_and_security_headers(console):
    first_issue(console)
    c = console.client
    sign_in(c, console.sink)
    page = c.get("/issues/1")
    assert page.status == 200
    for text in ("Printer on fire", "inbound", "email", "Pat Doe", "It burns.", "invoice 7.pdf", "Mail me this issue",
                 "<details>"):
        assert text in page.text, text
    h = page.headers
    assert "script-src 'none'" in h["Content-Security-Policy"] and "default-src 'none'" in h["Content-Security-Policy"]
    assert h["X-Content-Type-Options"] == "nosniff" and h["Referrer-Policy"] == "same-origin"
    assert h["Cache-Control"] == "no-store"
    href = re.search(r'href="(/issues/1/attachments/\d+)"', page.text).group(1)
    att = c.get(href)
    assert att.status == 200 and att.body == b"%PDF-1.4 invoice\n"
    assert att.headers["Content-Type"] == "application/pdf"
    assert att.headers["Content-Disposition"].startswith('attachment; filename="invoice 7.pdf"')
    assert att.headers["X-Content-Type-Options"] == "nosniff"
    assert c.get("/issues/1/attachments/999999").status == 404
    assert c.get("/issues/424242").status == 404
    customer = c.get("/customers/1")
    assert customer.status == 200 and "pat@example.com" in customer.text and "Printer on fire" in customer.text
    found = c.get("/search?q=printer")
    assert found.status == 200 and "/issues/1" in found.text
    assert "/issues/1" in c.get("/search?q=pat%40example").text  # by the customer's address
    assert "/issues/1" in c.get("/search?q=burns").text  # by the text of its mail (the full-text index)
    assert "/issues/1" not in c.get("/search?q=toaster").text


def test_mail_me_this_issue_needs_the_form_token_and_sends_reply_and_note_addresses(console):
    first_issue(console)
    c = console.client
    sign_in(c, console.sink)
    page = c.get("/issues/1")
    assert c.post("/issues/1/mail-me", {"csrf": "wrong"}).status == 403
    assert c.post("/issues/1/mail-me", {"csrf": csrf_of(page.text)},
                  headers={"Origin": "http://evil.example"}).status == 403
    resp = c.post("/issues/1/mail-me", {"csrf": csrf_of(page.text)})
    assert resp.status == 303 and resp.headers["Location"] == "/issues/1?sent=1"
    history = wait_for_mail(console.sink, "alice@acme.test", text="To answer the customer, reply to this mail")
    assert len(history) == 1
    mail = history[0]
    body = mail.get_body(("plain",)).get_content()
    assert "It burns." in body and "Printer on fire" in mail["Subject"]
    assert mail["Reply-To"].addresses[0].addr_spec.startswith("support+i1-r")
    assert "-r-" in mail["Reply-To"].addresses[0].addr_spec  # a reply token issued to this rep
    assert "support+i1-r" in body and "-n-" in body  # and the note address


def test_report_page_has_its_chart_and_filters_in_the_url(console):
    first_issue(console)
    c = console.client
    sign_in(c, console.sink)
    front = c.get("/")
    for name in ("issue-types", "reps", "resources", "turnaround", "backlog", "channels"):
        assert f'href="/reports/{name}"' in front.text, name
    page = c.get("/reports/issue-types?category=uncategorized&sort=category&desc=0")
    assert page.status == 200 and "<svg" in page.text and "uncategorized" in page.text
    assert "script-src 'none'" in page.headers["Content-Security-Policy"]
    assert '<option value="uncategorized" selected>' in page.text
    assert c.get("/reports/issue-types?category=billing").text.count("<td") < page.text.count("<td")
    bad = c.get("/reports/backlog?since=yesterday-ish")
    assert bad.status == 400 and "since" in bad.text
    assert c.get("/reports/no-such-report").status == 404




def test_console_without_the_signing_secret_is_a_config_error(tmp_path, db_url):
    from conftest import run_maild
    from web_helpers import console_config

    path, _, _ = console_config(tmp_path, db_url, 25)
    result = run_maild("run", "-c", str(path), env={"MAILD_SECRET": ""})
    assert result.returncode == 78, result.stderr
    assert b"MAILD_SECRET" in result.stderr and b"Traceback" not in result.stderr
