"""The console in a real headless Chromium (Debian's, driven by Playwright): sign in through the link
mailed to a real SMTP sink, the front page, an issue and its attachment, a filtered report with its
chart, signing out; used and expired links refused. No page may trip the Content-Security-Policy.

Screenshots of the front page and a report are written to $MAILD_SCREENSHOTS when it is set
(console-front.png, console-report.png).
"""

from __future__ import annotations

import os
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from web_helpers import SIGNIN_SUBJECT, mail_with_attachment, running_console, send, signin_link, wait_for_mail

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM) or shutil.which("chromium") is None,
                                reason="Debian's chromium is not installed (.ci/setup installs it)")


@pytest.fixture
def console(tmp_path, db_url, monkeypatch, caplog):
    yield from running_console(tmp_path, db_url, monkeypatch, caplog)


@pytest.fixture
def browser(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, args=ARGS, headless=True,
            accept_downloads=True, viewport={"width": 1280, "height": 900})
        try:
            yield context
        finally:
            context.close()


def screenshot(page, name: str) -> None:
    folder = os.environ.get("MAILD_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / name), full_page=True)


@pytest.mark.slow
def test_console_in_a_real_browser(console, browser, tmp_path):
    from maild.models import SigninLink, utcnow

    send(console.smtp_port, mail_with_attachment("Printer on fire", "It burns.\n\n> quoted from before\n"))
    console.db.wait_processed(1)
    base = f"http://127.0.0.1:{console.client.port}"
    page = browser.new_page()
    violations: list[str] = []
    page.on("console", lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None)

    page.goto(base + "/issues/1")  # no session: to the sign-in page
    assert page.url == base + "/signin"
    page.fill("input[name=address]", "alice@acme.test")
    page.click("button[type=submit]")
    assert page.locator("h1").inner_text() == "Check your mail"
    link = signin_link(wait_for_mail(console.sink, "alice@acme.test", subject=SIGNIN_SUBJECT)[-1])
    page.goto(link)
    page.click("text=Sign in to maild")
    assert page.url == base + "/"
    assert "Printer on fire" in page.locator("#waiting").inner_text()
    assert page.locator("a[href='/reports/turnaround']").count() >= 1
    screenshot(page, "console-front.png")

    page.click("#waiting a[href='/issues/1'] >> nth=1")
    assert page.url == base + "/issues/1"
    assert "It burns." in page.locator(".interaction").first.inner_text()
    assert page.locator(".interaction .direction").first.inner_text() == "inbound"
    with page.expect_download() as download:
        page.click("text=invoice 7.pdf")
    assert download.value.suggested_filename == "invoice 7.pdf"
    saved = tmp_path / "downloaded.pdf"
    download.value.save_as(saved)
    assert saved.read_bytes() == b"%PDF-1.4 invoice\n"

    page.click("header >> text=Reports")
    page.click("a[href='/reports/issue-types']")
    page.select_option("select[name=category]", "uncategorized")
    page.click("form.filters button[type=submit]")
    assert "category=uncategorized" in page.url
    assert page.locator(".chart svg").is_visible()
    assert "uncategorized" in page.locator("table.report tbody").inner_text()
    screenshot(page, "console-report.png")

    other = browser.new_page()  # the link again, in another tab: used
    other.goto(link)
    assert "does not work" in other.locator("h1").inner_text()
    other.close()

    page.click("text=Sign out")
    assert page.url == base + "/signin"
    page.goto(base + "/")
    assert page.url == base + "/signin"  # no session any more
    page.fill("input[name=address]", "alice@acme.test")
    page.click("button[type=submit]")
    fresh = signin_link(wait_for_mail(console.sink, "alice@acme.test", 2, subject=SIGNIN_SUBJECT)[-1])
    with console.db.engine.begin() as conn:
        conn.execute(update(SigninLink).values(expires_at=utcnow() - timedelta(minutes=1)))
    page.goto(fresh)
    assert "does not work" in page.locator("h1").inner_text()
    assert violations == []
