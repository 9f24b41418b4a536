"""A desk under test: the daemon in a thread, listening on loopback SMTP, sending
through a real SMTP sink process; customers and reps write to it with smtplib.

What a rep or a customer receives is read back from the sink and parsed the
way a mail client would (email.policy.default).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from email.message import EmailMessage
from email.policy import SMTP
from itertools import count

from maild.config import load
from maild.daemon import build_daemon
from daemon_helpers import InProcess, daemon_config, smtp_client
from test_outbound import SinkProcess, free_port, outbound

_ids = count(1)
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"  # binary, as a real PDF is
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(reversed(range(256))) * 30 + b"\xff\xd9"


def mail(frm: str, to: str, subject: str, body: str, files: tuple[tuple[str, str, bytes], ...] = (),
         in_reply_to: str | None = None) -> EmailMessage:
    """A mail as a mail client writes it: text, then each (name, type, bytes) attached."""
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = frm, to, subject
    m["Message-ID"] = f"<desk{next(_ids)}.{time.monotonic_ns()}@example.com>"
    if in_reply_to:
        m["In-Reply-To"] = m["References"] = in_reply_to
    m.set_content(body)
    for name, ctype, data in files:
        maintype, subtype = ctype.split("/")
        m.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return m


def files_of(m: EmailMessage) -> dict[str, bytes]:
    return {p.get_filename(): p.get_content() for p in m.iter_attachments()}


def text_of(m: EmailMessage) -> str:
    body = m.get_body(("plain",))
    assert body is not None, m
    return body.get_content()


class Desk:
    """The daemon, its SMTP port and the sink every mail it sends lands in."""

    def __init__(self, tmp_path, db_url, **outbound_keys) -> None:
        self.sink = SinkProcess(tmp_path / "sink", free_port())
        self.sink.folder.mkdir()
        self.sink.start()
        keys = {"send_interval": 0.5} | outbound_keys
        self.config = daemon_config(tmp_path, db_url, daemon="\n" + outbound(f"127.0.0.1:{self.sink.port}", **keys))
        self.running = InProcess(build_daemon(load(self.config)))

    def __enter__(self) -> Desk:
        self.running.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.running.__exit__(*exc)
        finally:
            self.sink.stop()

    def send(self, m: EmailMessage, to: str | None = None) -> None:
        with smtp_client(self.config) as c:
            c.sendmail(m["From"].addresses[0].addr_spec, [to or str(m["To"])], m.as_bytes(policy=SMTP))

    def received(self) -> list[tuple[list[str], EmailMessage]]:
        return [(env["to"], msg) for env, msg in self.sink.messages()]

    def wait_for(self, what: Callable[[list[str], EmailMessage], bool], n: int = 1,
                 timeout: float = 60) -> list[EmailMessage]:
        """The first `n` mails the sink got that satisfy `what` (envelope recipients, message)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [m for to, m in self.received() if what(to, m)]
            if len(found) >= n:
                return found[:n]
            if time.monotonic() > deadline:
                got = [(to, m["Subject"]) for to, m in self.received()]
                raise AssertionError(f"after {timeout}s, {len(found)} of {n} expected mails; the sink has {got}")
            time.sleep(0.1)

    def to(self, address: str, n: int = 1, subject: str = "") -> list[EmailMessage]:
        return self.wait_for(lambda rcpts, m: address in rcpts and subject in str(m["Subject"]), n)
