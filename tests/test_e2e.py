"""End to end through `maild run`: a customer writes over SMTP, the
acknowledgement and the rep's notification leave through the relay, the
customer answers the acknowledgement, the rep answers the notification from
a mail client, and the customer gets the rep's reply, all on one issue."""

from __future__ import annotations

import json
import time
from email.message import EmailMessage

import pytest

from conftest import run_maild, write_config
from daemon_helpers import Maild, free_port, smtp_client, wait_until
from test_outbound import SinkProcess


def wait_for_mail(sink: SinkProcess, count: int, timeout: float = 60) -> list:
    deadline = time.monotonic() + timeout
    while len(sink.messages()) < count:
        assert time.monotonic() < deadline, f"only {len(sink.messages())} of {count} mails reached the relay"
        time.sleep(0.1)
    return [m for _, m in sink.messages()]


def test_customer_rep_and_customer_again_over_smtp(tmp_path, db_url):
    sink = SinkProcess(tmp_path / "sink", free_port())
    sink.folder.mkdir()
    sink.start()
    extra = (f'[smtp]\nlisten = "127.0.0.1:{free_port()}"\n\n[daemon]\ndrain_interval = 0.5\n\n'
             f'[outbound]\nrelay = "127.0.0.1:{sink.port}"\nsend_interval = 0.3\n')
    boxes = '[[mailbox]]\nname = "support"\naddress = "support@acme.test"\n'
    reps = '[[rep]]\nname = "Alice"\nemail = "alice@acme.test"\n'
    config = write_config(tmp_path / "maild.toml", db_url, extra=extra, mailboxes=boxes, reps=reps)
    maild = Maild(config).start()
    try:
        first = EmailMessage()
        first["From"], first["To"], first["Subject"] = "Pat <pat@example.com>", "support@acme.test", "Broken kettle"
        first["Message-ID"] = "<kettle1@example.com>"
        first.set_content("The kettle leaks.")
        with smtp_client(config) as s:
            s.send_message(first)
        ack, note = sorted(wait_for_mail(sink, 2), key=lambda m: m["To"] != "pat@example.com")
        assert ack["To"] == "pat@example.com" and ack["In-Reply-To"] == "<kettle1@example.com>"
        assert note["To"] == "alice@acme.test" and "The kettle leaks." in note.get_content()

        # The customer answers the acknowledgement.
        again = EmailMessage()
        again["From"], again["To"], again["Subject"] = "pat@example.com", "support@acme.test", "Re: " + ack["Subject"]
        again["Message-ID"], again["In-Reply-To"] = "<kettle2@example.com>", ack["Message-ID"]
        again.set_content("It also smokes.")
        with smtp_client(config) as s:
            s.send_message(again)
        wait_for_mail(sink, 3)  # the rep hears of the reply

        # Alice answers her notification from her mail client.
        reply = EmailMessage()
        reply["From"], reply["To"] = "Alice <alice@acme.test>", str(note["Reply-To"])
        reply["Subject"], reply["In-Reply-To"] = "Re: " + note["Subject"], note["Message-ID"]
        reply["Message-ID"] = "<alice1@acme.test>"
        reply.set_content("A new kettle is on its way.\n\nOn Mon, Alice's notification wrote:\n> The kettle leaks.\n")
        with smtp_client(config) as s:
            s.send_message(reply)
        answer = wait_for_mail(sink, 4)[-1]
        assert answer["To"] == "pat@example.com" and answer["From"] == "support@acme.test"
        assert answer["In-Reply-To"] == "<kettle2@example.com>"
        assert answer.get_content().startswith("A new kettle is on its way.")

        (issue,) = json.loads(run_maild("issues", "list", "--json", "-c", str(config)).stdout)
        shown = json.loads(run_maild("issues", "show", str(issue["id"]), "--json", "-c", str(config)).stdout)
        recorded = {i["message_id"] for i in shown["interactions"]}
        to_customer = {m["Message-ID"].strip("<>") for env, m in sink.messages() if env["to"] == ["pat@example.com"]}
        assert to_customer <= recorded and {"kettle1@example.com", "kettle2@example.com"} <= recorded
        assert len(shown["notices"]) == len(sink.messages()) - len(to_customer)  # the notifications to reps
    finally:
        assert maild.stop() == 0
        sink.stop()


@pytest.mark.slow
def test_rep_workflow_over_smtp_forgery_commands_canned_and_hold(tmp_path, db_url):
    from test_reps import CANNED, client_reply

    sink = SinkProcess(tmp_path / "sink", free_port())
    sink.folder.mkdir()
    sink.start()
    extra = (f'[smtp]\nlisten = "127.0.0.1:{free_port()}"\n\n[daemon]\ndrain_interval = 0.5\n\n'
             f'[outbound]\nrelay = "127.0.0.1:{sink.port}"\nsend_interval = 0.3\n\n'
             f'[spelling]\nmode = "hold"\n{CANNED}')
    boxes = '[[mailbox]]\nname = "support"\naddress = "support@acme.test"\nacknowledge = false\n'
    config = write_config(tmp_path / "maild.toml", db_url, extra=extra, mailboxes=boxes)
    maild = Maild(config).start()

    def issue():
        (row,) = json.loads(run_maild("issues", "list", "--json", "-c", str(config)).stdout)
        return json.loads(run_maild("issues", "show", str(row["id"]), "--json", "-c", str(config)).stdout)

    def send(raw: bytes, to: str) -> None:
        with smtp_client(config) as s:
            s.sendmail("sender@example.com", [to], raw)

    def to(addr: str) -> list:
        return [m for _, m in sink.messages() if m["To"] == addr]

    try:
        first = EmailMessage()
        first["From"], first["To"], first["Subject"] = "Pat Customer <pat@example.com>", "support@acme.test", "Refund?"
        first["Message-ID"] = "<refund1@example.com>"
        first.set_content("Where is my refund?")
        send(first.as_bytes(), "support@acme.test")
        note = wait_until(lambda: to("alice@acme.test"), "Alice's notification")[0]

        # A forged rep From on Alice's reply address: customer mail, its commands are text.
        forged, token_addr = client_reply(note, "#close\nRefund granted!", frm="Bob <bob@acme.test>")
        send(forged, token_addr)
        wait_until(lambda: [i for i in issue()["interactions"] if i["from"] == "bob@acme.test"],
              "the forged mail to be recorded")
        assert issue()["status"] == "open"

        # Commands only: the issue changes, the customer gets nothing.
        commands, _ = client_reply(note, "#priority high\n#tag refund")
        send(commands, token_addr)
        wait_until(lambda: issue()["priority"] == "high", "the commands to apply")
        assert issue()["tags"] == ["refund"] and to("pat@example.com") == []

        # Outlook style, two canned responses and a misspelling: held, then released.
        reply, _ = client_reply(note, "Hello Pat,\n\n#canned refund\n{{canned:thanks}}\nYou will recieve it soon.",
                                outlook=True)
        send(reply, token_addr)
        notice = wait_until(lambda: [m for m in to("alice@acme.test") if "Spelling" in m["Subject"]], "the hold notice")[0]
        assert "recieve" in notice.get_content() and to("pat@example.com") == []
        release, notice_addr = client_reply(notice, "#send")
        send(release, notice_addr)
        (answer,) = wait_until(lambda: to("pat@example.com"), "the released reply")
        body = answer.get_content()
        assert answer["From"] == "support@acme.test" and answer["In-Reply-To"] == "<refund1@example.com>"
        assert "is on its way, Pat Customer." in body and "Thank you for your patience." in body
        assert "Original Message" not in body and "recieve it soon" in body
        time.sleep(1)
        assert len(to("pat@example.com")) == 1  # one reply, threaded, nothing else
    finally:
        assert maild.stop() == 0
        sink.stop()
