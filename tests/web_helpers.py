"""The web console under test: `maild run`'s daemon in the test process with [web] listen, a real
SMTP sink as its relay, and a small cookie-keeping HTTP client over loopback."""

from __future__ import annotations

import http.client
import logging
import json
import re
import smtplib
import time
from email.message import EmailMessage
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from conftest import SECRET, write_config
from daemon_helpers import ACK_OFF_MAILBOXES, Db, InProcess, free_port
from test_outbound import SinkProcess

LINK_RE = re.compile(r"(http://127\.0\.0\.1:\d+/signin/\S+)")


def console_config(tmp_path: Path, db_url: str, relay_port: int, web: str = "") -> tuple[Path, int, int]:
    """A config with SMTP and web on free loopback ports and the sink as relay; (path, smtp port, web port)."""
    smtp_port, web_port = free_port(), free_port()
    extra = (
        f'[smtp]\nlisten = "127.0.0.1:{smtp_port}"\nstore_timeout = 2.0\n\n'
        "[daemon]\ndrain_interval = 0.5\n\n"
        f'[outbound]\nrelay = "127.0.0.1:{relay_port}"\nsend_interval = 0.5\nretry_base = 1.0\ntimeout = 10.0\n\n'
        f'[web]\nlisten = "127.0.0.1:{web_port}"\n{web}\n'
    )
    return write_config(tmp_path / "maild.toml", db_url, extra=extra, mailboxes=ACK_OFF_MAILBOXES), smtp_port, web_port


def mail_with_attachment(subject: str, body: str, frm: str = "Pat Doe <pat@example.com>",
                         attachment: bytes = b"%PDF-1.4 invoice\n", filename: str = "invoice 7.pdf") -> bytes:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = frm, "support@acme.test", subject
    m["Message-ID"] = f"<{subject.replace(' ', '.')}@example.com>"
    m.set_content(body)
    m.add_attachment(attachment, maintype="application", subtype="pdf", filename=filename)
    return m.as_bytes()


def send(smtp_port: int, data: bytes, to: str = "support@acme.test", frm: str = "pat@example.com") -> None:
    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as s:
        s.sendmail(frm, [to], data)


SIGNIN_SUBJECT = "Your maild sign-in link"


def wait_for_mail(sink, to: str, count: int = 1, timeout: float = 60, subject: str | None = None,
                  text: str | None = None) -> list:
    """The messages the sink got for `to` (with `subject` in their Subject, `text` in their body), once
    there are `count` of them."""
    deadline = time.monotonic() + timeout
    while True:
        got = [msg for env, msg in sink.messages()
               if to in env["to"] and (subject is None or subject in str(msg["Subject"]))
               and (text is None or text in msg.get_body(("plain",)).get_content())]
        if len(got) >= count:
            return got
        assert time.monotonic() < deadline, f"no {count} mail(s) to {to} at the sink after {timeout}s"
        time.sleep(0.1)


def signin_link(message) -> str:
    body = message.get_body(("plain",)).get_content()
    m = LINK_RE.search(body)
    assert m, body
    return m.group(1)


class Client:
    """A browser-like HTTP client: keeps cookies, does not follow redirects, speaks real HTTP/1.1."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, form: dict | None = None, headers: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        hdrs = dict(headers or {})
        body = None
        if form is not None:
            body = urlencode(form)
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        if self.cookies:
            hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        for header in resp.headers.get_all("Set-Cookie") or []:
            name, _, rest = header.partition("=")
            value = rest.split(";", 1)[0].strip('"')
            if value and "max-age=0" not in header.lower():
                self.cookies[name] = value
            else:
                self.cookies.pop(name, None)
        resp.body = data  # type: ignore[attr-defined]
        resp.text = data.decode("utf-8", "replace")  # type: ignore[attr-defined]
        return resp

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def post(self, path: str, form: dict | None = None, **kw):
        return self.request("POST", path, form=form or {}, **kw)

    def json(self, path: str):
        resp = self.get(path)
        return resp.status, json.loads(resp.body)


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no CSRF token on the page"
    return m.group(1)


def sign_in(client: Client, sink, address: str = "alice@acme.test", count: int = 1) -> str:
    """The whole sign-in by mail: ask, take the link from the sink, confirm; returns the link used."""
    assert client.post("/signin", {"address": address}).status == 200
    link = signin_link(wait_for_mail(sink, address, count, subject=SIGNIN_SUBJECT)[-1])
    path = link.split(str(client.port), 1)[1]
    assert client.get(path).status == 200
    resp = client.post(path)
    assert resp.status == 303 and resp.headers["Location"] == "/", resp.text
    return path


@dataclass
class Running:
    client: Client
    smtp_port: int
    sink: SinkProcess
    db: Db
    config: object


def running_console(tmp_path, db_url, monkeypatch, caplog, web: str = ""):
    """The body of each test module's `console` fixture: yields a Running console, stops it after.
    `web`: more keys for the [web] table."""
    from maild.config import load
    from maild.daemon import build_daemon
    monkeypatch.setenv("MAILD_SECRET", SECRET)
    caplog.set_level(logging.INFO)  # as `maild run` logs: /metrics counts the SMTP edge's lines
    sink = SinkProcess(tmp_path / "sink", free_port())
    sink.folder.mkdir()
    sink.start()
    path, smtp_port, web_port = console_config(tmp_path, db_url, sink.port, web)
    db = Db(db_url)
    try:
        with InProcess(build_daemon(load(path))):
            yield Running(Client(web_port), smtp_port, sink, db, path)
    finally:
        db.close()
        sink.stop()
