"""IMAP intake never strands stored mail: what a pass stored but could not process is
processed by the next pass, against a real Dovecot."""

from __future__ import annotations

from sqlalchemy import func, select

import test_imap
from dovecot import Dovecot
from maild.ingest.imap.poller import ImapService
from maild.models import Interaction, RawMessage
from test_imap import mail

# The IMAP tests' fixtures: a Dovecot of the test's own, and apps with an IMAP mailbox on it.
dovecot_server = test_imap.dovecot
imap_app = test_imap.make_app


def _count(app, query) -> int:
    with app.sessions() as s:
        return s.scalar(query)


def test_mail_stored_but_not_processed_is_processed_by_the_next_pass(imap_app, dovecot_server: Dovecot):
    dovecot_server.append("INBOX", mail(1), mail(2))
    app = imap_app(dovecot_server)

    def locked(accepted):
        raise RuntimeError("database is locked")

    # First pass: committed, then processing fails; the mail is moved on all the same.
    report = ImapService(app, app.settings.mailbox_named("support"), on_stored=locked).poll_once()
    assert report.stored == 2 and dovecot_server.messages("INBOX") == {}
    pending = select(func.count()).select_from(RawMessage).where(RawMessage.state == "pending")
    assert _count(app, pending) == 2
    # The next pass finds nothing new in the folder, and processes what waits.
    dovecot_server.append("INBOX", mail(3))
    assert ImapService(app, app.settings.mailbox_named("support")).poll_once().stored == 1
    assert _count(app, pending) == 0
    assert _count(app, select(func.count()).select_from(Interaction)) == 3


def test_a_copy_met_again_while_still_pending_is_processed(imap_app, dovecot_server: Dovecot):
    from maild.ingest.intake import Incoming, accept

    app = imap_app(dovecot_server)
    stored = accept(app.sessions, Incoming(mail(7), "support", "pipe"))  # stored, processing deferred
    dovecot_server.append("INBOX", mail(7))
    report = ImapService(app, app.settings.mailbox_named("support")).poll_once()
    assert (report.stored, report.duplicates) == (0, 1)
    with app.sessions() as s:
        assert s.get(RawMessage, stored.raw_id).state == "done"
