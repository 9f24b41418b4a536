"""Customer text in our mail stays text: a name or subject a customer chose can never
add a line to what maild sends. Through `maild run` over SMTP, out through a real relay."""

from __future__ import annotations

import time

from conftest import write_config
from daemon_helpers import Maild, free_port, smtp_client
from maild.outbound.templates import Templates
from test_outbound import SinkProcess

EVE = (b"From: =?utf-8?q?Eve=0D=0ABcc=3A_x=40evil=2Etest?= <eve@example.org>\r\n"
       b"To: support@acme.test\r\n"
       b"Subject: =?utf-8?q?Help=0D=0A=0D=0ABcc=3A_y=40evil=2Etest?=\r\n"
       b"Message-ID: <eve1@example.org>\r\n"
       b"\r\n"
       b"My kettle leaks.\r\n")


def test_a_display_name_with_line_breaks_cannot_add_lines_to_the_acknowledgement(tmp_path, db_url):
    sink = SinkProcess(tmp_path / "sink", free_port())
    sink.folder.mkdir()
    sink.start()
    extra = (f'[smtp]\nlisten = "127.0.0.1:{free_port()}"\n\n[daemon]\ndrain_interval = 0.5\n\n'
             f'[outbound]\nrelay = "127.0.0.1:{sink.port}"\nsend_interval = 0.3\n')
    boxes = '[[mailbox]]\nname = "support"\naddress = "support@acme.test"\nacknowledge = true\n'
    config = write_config(tmp_path / "maild.toml", db_url, extra=extra, mailboxes=boxes,
                          reps='[[rep]]\nname = "Alice"\nemail = "alice@acme.test"\n')
    maild = Maild(config).start()
    try:
        with smtp_client(config) as s:
            s.sendmail("eve@example.org", ["support@acme.test"], EVE)
        deadline = time.monotonic() + 60
        while not (acks := [p for p in sorted(sink.folder.glob("*.eml")) if b"eve@example.org" in
                            p.with_suffix(".env").read_bytes()]):
            assert time.monotonic() < deadline, "no acknowledgement reached the relay"
            time.sleep(0.1)
        raw = acks[0].read_bytes()
    finally:
        maild.stop()
        maild.kill()
        sink.stop()
    lines = raw.split(b"\r\n")
    assert not [line for line in lines if line.lower().startswith(b"bcc:")], raw.decode()
    assert b"Hello Eve Bcc: x@evil.test," in lines, raw.decode()


def test_values_are_one_line_and_multi_line_ones_keep_only_their_breaks():
    t = Templates()
    r = t.render("rep_new_issue", subject="Help\r\n\r\nBcc: y@evil.test", issue_id=7, mailbox="support",
                 category="billing", customer="eve@example.org\nX-Injected: 1", rep_name="Alice",
                 text="First line\r\nsecond line\x00\x1b[2J\n\tindented", mailbox_address="support@acme.test",
                 note_address="note@acme.test", status="open", priority="normal", assignee="", customer_name="",
                 open_issues=1, attached=[], listed=[],
                 history=[{"when": "2026-11-02 09:30", "who": "Eve\r\nBcc: z@evil.test", "what": "inbound", "text": "x"}])
    assert r.subject == "Help Bcc: y@evil.test"
    assert "Customer: eve@example.org X-Injected: 1 ·" in r.body
    assert "Eve Bcc: z@evil.test (inbound): x" in r.body
    assert "First line\nsecond line[2J\n\tindented\n" in r.body
