"""maild behind a real Postfix, configured as the README's "Behind Postfix" says.

Postfix takes the mail for acme.test, refuses unknown recipients itself, hands
the mailbox addresses (and their +TOKEN subaddresses) to `maild run` over
LMTP, relays maild's outgoing mail, returns bounces to the mailbox address,
and holds mail while maild is down. "The internet" and the reps' own mail
server are a real SMTP sink process.
"""

from __future__ import annotations

import email
import json
import os
import smtplib
import time
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from conftest import run_maild, write_config
from daemon_helpers import Db, Maild, free_port
from postfix import Postfix
from test_outbound import SinkProcess
from test_reps import client_reply

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="a private Postfix instance is started as root"),
]

# What an admin adds to main.cf (README "Behind Postfix"), plus where the test's
# "internet" is: the sink, as relayhost.
MAIN_CF = """\
relay_domains = acme.test
relay_recipient_maps = hash:{{config}}/maild_recipients
transport_maps = hash:{{config}}/maild_transport
recipient_delimiter = +
mynetworks = 127.0.0.0/8
message_size_limit = 26214400
relayhost = [127.0.0.1]:{sink}
"""

TRANSPORT = """\
support@acme.test   lmtp:inet:127.0.0.1:{lmtp}
help@acme.test      lmtp:inet:127.0.0.1:{lmtp}
billing@acme.test   lmtp:inet:127.0.0.1:{lmtp}
acme.test           smtp:[127.0.0.1]:{sink}
"""

# maild's mailbox addresses and aliases, and the reps' own mailboxes.
RECIPIENTS = "".join(f"{a}@acme.test OK\n" for a in ("support", "help", "billing", "alice", "bob"))


@dataclass
class Deployment:
    postfix: Postfix
    sink: SinkProcess
    config: Path

    def send(self, msg: EmailMessage | bytes, to: list[str], frm: str = "pat@example.com") -> dict:
        """Hand a message to Postfix over SMTP, as the customer's mail server would."""
        raw = msg if isinstance(msg, bytes) else msg.as_bytes()
        with smtplib.SMTP("127.0.0.1", self.postfix.port, timeout=30) as s:
            return s.sendmail(frm, to, raw)

    def mail_to(self, address: str) -> list[EmailMessage]:
        """What the sink took for an envelope recipient, in arrival order (a message
        counts once its envelope file, written after it, is complete)."""
        out = []
        for path in sorted(self.sink.folder.glob("*.env")):
            try:
                envelope = json.loads(path.read_text())
            except ValueError:
                continue
            if address in envelope["to"]:
                raw = path.with_suffix(".eml").read_bytes()
                out.append(email.message_from_bytes(raw, policy=policy.default))
        return out

    def maild_json(self, *args: str):
        result = run_maild(*args, "--json", "-c", str(self.config))
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        return json.loads(result.stdout)

    def issues(self) -> list[dict]:
        return self.maild_json("issues", "list")

    def issue(self, number: int) -> dict:
        return self.maild_json("issues", "show", str(number))

    def wait(self, predicate, what: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while not (result := predicate()):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; Postfix log:\n{self.postfix.log()}")
            time.sleep(0.1)
        return result


@pytest.fixture
def deployment(tmp_path, db_url):
    sink = SinkProcess(tmp_path / "sink", free_port())
    sink.folder.mkdir()
    lmtp = free_port()
    postfix = None
    try:
        sink.start("--reject", "gone@example.com")
        postfix = Postfix(main=MAIN_CF.format(sink=sink.port),
                          maps={"maild_transport": TRANSPORT.format(lmtp=lmtp, sink=sink.port),
                                "maild_recipients": RECIPIENTS})
        postfix.start()
        extra = (f'[smtp]\nlisten = "127.0.0.1:{free_port()}"\nlmtp_listen = "127.0.0.1:{lmtp}"\n\n'
                 '[daemon]\ndrain_interval = 0.5\n\n'
                 f'[outbound]\nrelay = "127.0.0.1:{postfix.port}"\nsend_interval = 0.3\n')
        yield Deployment(postfix, sink, write_config(tmp_path / "maild.toml", db_url, extra=extra))
    finally:
        if postfix is not None:
            print(f"Postfix log:\n{postfix.log()}")  # shown when the test failed
            postfix.close()
        sink.stop()


def customer_mail(subject: str, msgid: str, body: str, frm: str = "Pat <pat@example.com>") -> EmailMessage:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"], m["Message-ID"] = frm, "support@acme.test", subject, msgid
    m.set_content(body)
    return m


def test_customer_rep_and_bounce_through_postfix(deployment):
    d = deployment
    maild = Maild(d.config)
    try:
        maild.start()
        # Postfix refuses an address that is no mailbox itself, before maild sees it.
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            d.send(customer_mail("Hello?", "<nobody1@example.com>", "Anyone?"), ["nobody@acme.test"])
        (code, text), = refused.value.recipients.values()
        assert code == 550 and b"5.1.1" in text

        # The customer writes; Postfix hands the mail to maild over LMTP and an issue opens.
        assert d.send(customer_mail("Broken kettle", "<kettle1@example.com>", "The kettle leaks."),
                      ["support@acme.test"]) == {}
        ack = d.wait(lambda: d.mail_to("pat@example.com"), "the acknowledgement")[0]
        (issue,) = d.issues()
        assert issue["subject"] == "Broken kettle" and issue["customer"] == "pat@example.com"
        assert "accepted proto=lmtp" in maild.log
        # maild relayed its acknowledgement through Postfix.
        assert ack["In-Reply-To"] == "<kettle1@example.com>" and ack["From"] == "support@acme.test"
        assert f"[#{issue['id']}]" in ack["Subject"]

        # Alice answers her notification; it goes to support+TOKEN@acme.test through Postfix.
        note = d.wait(lambda: d.mail_to("alice@acme.test"), "Alice's notification")[0]
        reply, token_address = client_reply(note, "A new kettle is on its way.")
        assert token_address.startswith("support+")
        assert d.send(reply, [token_address], frm="alice@acme.test") == {}
        answer = d.wait(lambda: d.mail_to("pat@example.com")[1:], "the rep's reply to the customer")[0]
        assert answer["From"] == "support@acme.test" and answer["In-Reply-To"] == "<kettle1@example.com>"
        assert answer.get_content().startswith("A new kettle is on its way.")
        assert "alice@acme.test" not in answer.as_string()

        # A customer whose address is gone: the acknowledgement bounces at their
        # server, Postfix returns the bounce to support@acme.test, maild records it.
        d.send(customer_mail("Gone soon", "<gone1@example.com>", "Bye.", frm="gone@example.com"),
               ["support@acme.test"], frm="gone@example.com")
        gone = d.wait(lambda: [i for i in d.issues() if i["customer"] == "gone@example.com"], "the second issue")[0]
        bounces = d.wait(lambda: [i for i in d.issue(gone["id"])["interactions"] if i["bounce"]], "the bounce")
        assert "gone@example.com" in bounces[0]["bounce"]["recipients"]
        assert len(d.issues()) == 2  # the bounce opened nothing
    finally:
        status = maild.stop()
    assert status == 0


def test_postfix_holds_mail_while_maild_is_down(deployment, db_url):
    d = deployment
    # maild is not running: Postfix accepts the mail, LMTP is refused, the mail waits.
    assert d.send(customer_mail("While you were out", "<down1@example.com>", "Are you there?"),
                  ["support@acme.test"]) == {}

    def deferred():
        return [q for q in d.postfix.queue() if q["sender"] == "pat@example.com" and q["queue_name"] == "deferred"]

    (held,) = d.wait(deferred, "the mail to be deferred")
    (rcpt,) = held["recipients"]
    assert rcpt["address"] == "support@acme.test" and "Connection refused" in rcpt["delay_reason"]

    maild, db = Maild(d.config), Db(db_url)
    try:
        maild.start()
        d.postfix.flush()  # as an admin would; otherwise Postfix retries on its own schedule
        db.wait_processed(1)
        assert db.inbound_subjects() == {"While you were out": 1}
        d.wait(lambda: not [q for q in d.postfix.queue() if q["sender"] == "pat@example.com"], "an empty queue")
    finally:
        db.close()
        status = maild.stop()
    assert status == 0
