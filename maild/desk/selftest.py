"""The self-test of every support address (seed 004): a signed probe out, back in.

Each round queues one probe per mailbox address and alias through the one
outbox, so it leaves by the configured relay and has to find its way back
through whatever intake the deployment uses (SMTP, LMTP, IMAP). The pipeline
recognises the signed header and hands the probe to `record_return`, which
notes when and by which path it came back; it never becomes an issue,
acknowledgement or notification. `evaluate` then decides per address: a
probe not back within `selftest.alert_after` seconds alerts
`selftest.alert_to` once (a SelftestAlert row, inserted with the mail), and a
later probe back in time clears it with one "recovered" mail.

Probes and alerts are outbox rows without an interaction: they concern no
issue and must not appear in any case's history.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from maild.config import Settings
from maild.desk.once import insert_once
from maild.ingest.stages.records import Stored
from maild.models import OutboxMessage, SelftestAlert, SelftestProbe, table_of, utcnow
from maild.outbound.compose import Outgoing, compose, new_message_id
from maild.outbound.outbox import OutboxPolicy
from maild.outbound.templates import Templates
from maild.probes import HEADER, ProbeSigner, new_token
from maild.timefmt import aware

log = logging.getLogger("maild.selftest")


@dataclass(frozen=True)
class ProbeView:
    """A probe as the CLI shows it."""

    token: str
    mailbox: str
    address: str
    trigger: str
    queued_at: datetime
    returned_at: datetime | None
    returned_via: str | None
    round_trip: float | None
    state: str  # ok, late (back after alert_after), missing (not back, past it), waiting

    def as_json(self) -> dict:
        return {"address": self.address, "mailbox": self.mailbox, "state": self.state, "trigger": self.trigger,
                "queued": self.queued_at.isoformat(), "returned": self.returned_at.isoformat() if self.returned_at
                else None, "via": self.returned_via, "round_trip": self.round_trip}


def _view(p: SelftestProbe, alert_after: float, now: datetime) -> ProbeView:
    if p.returned_at is not None:
        state = "ok" if (p.round_trip or 0.0) <= alert_after else "late"
    else:
        state = "missing" if aware(p.deadline_at) <= now else "waiting"
    return ProbeView(p.token, p.mailbox, p.address, p.trigger, aware(p.queued_at),
                     aware(p.returned_at) if p.returned_at else None, p.returned_via, p.round_trip, state)


def record_return(session: Session, stored: Stored) -> None:
    """The pipeline's hook: a probe came back; note when and how (a copy seen again changes nothing)."""
    if stored.outcome != "probe" or not stored.probe:
        return
    probe = session.scalar(select(SelftestProbe).where(SelftestProbe.token == stored.probe))
    if probe is None:
        log.warning("probe token=%s came back but was never sent from this database", stored.probe)
        return
    if probe.returned_at is None:
        now = utcnow()
        probe.returned_at, probe.returned_via = now, stored.source
        probe.round_trip = round((now - aware(probe.queued_at)).total_seconds(), 3)
        log.info("probe back address=%s via=%s mailbox=%s round_trip=%ss", probe.address, stored.source,
                 stored.mailbox, probe.round_trip)


class Selftest:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session], signer: ProbeSigner | None,
                 templates: Templates) -> None:
        self.settings, self.sessions, self.signer, self.templates = settings, sessions, signer, templates
        self.policy = OutboxPolicy.from_settings(settings)
        self.alert_after = settings.selftest.alert_after

    def addresses(self, mailbox: str | None = None) -> list[tuple[str, str]]:
        """(mailbox, address) for every address and alias, of one mailbox or all."""
        boxes = [self.settings.mailbox_named(mailbox)] if mailbox else self.settings.mailbox
        return [(m.name, a) for m in boxes for a in (m.address, *m.aliases)]

    def run(self) -> None:
        """The scheduled round: judge the probes so far, then send the next ones."""
        self.evaluate()
        self.send("schedule")

    # -- sending -----------------------------------------------------------------------

    def send(self, trigger: str, mailbox: str | None = None, now: datetime | None = None) -> list[str]:
        """Queue a probe to each address; their tokens. Needs the signing secret."""
        if self.signer is None:
            raise RuntimeError("the self-test needs the signing secret (security.secret_env)")
        now = now or utcnow()
        tokens = []
        with self.sessions() as session, session.begin():
            for name, address in self.addresses(mailbox):
                token = new_token()
                row = self._queue(session, name, address, f"maild self-test probe {token}",
                                  f"A self-test probe from maild to {address}. It is never an issue.\n",
                                  now, probe=token)
                session.add(SelftestProbe(token=token, mailbox=name, address=address, trigger=trigger,
                                          outbox_id=row.id, queued_at=now,
                                          deadline_at=now + timedelta(seconds=self.alert_after)))
                tokens.append(token)
        log.info("probes queued trigger=%s addresses=%d", trigger, len(tokens))
        return tokens

    def _queue(self, session: Session, mailbox: str, to: str, subject: str, body: str, now: datetime,
               probe: str | None = None) -> OutboxMessage:
        """An outbox row recorded on no issue (so no interaction); a probe carries its signed header."""
        out = Outgoing(kind="probe" if probe else "selftest", mailbox=mailbox, to=(to,), subject=subject, body=body)
        from_addr, display = self.policy.mailboxes[mailbox]
        message_id = new_message_id(self.policy.message_id_domain)
        data = compose(out, from_addr, display, message_id, now, self.policy.message_id_domain)
        if probe is not None and self.signer is not None:
            data = f"{HEADER}: {self.signer.sign(probe)}\r\n".encode() + data
        # A probe that cannot leave in time is late anyway: it is not sent later.
        deadline = timedelta(seconds=self.alert_after) if probe else self.policy.deadline
        row = OutboxMessage(
            kind=out.kind, mailbox=mailbox, issue_id=None, interaction_id=None, rep_id=None,
            envelope_from=from_addr, recipients=[to], recipient_key=self.policy.rules.key(to),
            message_id=message_id, data=data, auto=True, to_customer=False, status="queued", attempts=0,
            next_attempt_at=now, deadline_at=now + deadline, created_at=now,
        )
        session.add(row)
        session.flush()
        session.info["outbox_queued"] = True  # the daemon's sender is woken at commit
        return row

    # -- judging -----------------------------------------------------------------------

    def probes(self, tokens: list[str], now: datetime | None = None) -> list[ProbeView]:
        now = now or utcnow()
        with self.sessions() as session:
            rows = session.scalars(select(SelftestProbe).where(SelftestProbe.token.in_(tokens))
                                   .order_by(SelftestProbe.id))
            return [_view(p, self.alert_after, now) for p in rows]

    def history(self, limit: int = 50, mailbox: str | None = None, now: datetime | None = None) -> list[ProbeView]:
        now = now or utcnow()
        query = select(SelftestProbe).order_by(SelftestProbe.id.desc()).limit(limit)
        if mailbox:
            query = query.where(SelftestProbe.mailbox == mailbox)
        with self.sessions() as session:
            return [_view(p, self.alert_after, now) for p in session.scalars(query)]

    def _latest(self, session: Session, address: str, now: datetime) -> ProbeView | None:
        """The newest probe to this address whose fate is known (back, or past its deadline)."""
        rows = session.scalars(select(SelftestProbe).where(SelftestProbe.address == address)
                               .order_by(SelftestProbe.queued_at.desc(), SelftestProbe.id.desc()).limit(50))
        return next((v for v in (_view(p, self.alert_after, now) for p in rows) if v.state != "waiting"), None)

    def evaluate(self, now: datetime | None = None) -> Counter:
        """Alert once per failing address; tell once when it recovers."""
        now = now or utcnow()
        counts: Counter = Counter()
        for mailbox, address in self.addresses():
            with self.sessions() as session, session.begin():
                latest = self._latest(session, address, now)
                if latest is None:
                    continue
                if latest.state == "ok":
                    since = session.scalar(select(SelftestAlert.since).where(SelftestAlert.address == address))
                    gone = session.execute(delete(SelftestAlert).where(SelftestAlert.address == address)
                                           .returning(SelftestAlert.address)).first()
                    if gone and since is not None:
                        self._tell(session, "selftest_recovered", mailbox, address, now, since=aware(since).isoformat(),
                                   via=latest.returned_via or "", round_trip=f"{latest.round_trip or 0:.1f}")
                        counts["recovered"] += 1
                        log.warning("self-test recovered address=%s", address)
                elif insert_once(session, table_of(SelftestAlert),
                                 {"address": address, "mailbox": mailbox, "since": latest.queued_at}, ["address"]):
                    self._tell(session, "selftest_alert", mailbox, address, now, queued=latest.queued_at.isoformat(),
                               state=latest.state, alert_after=f"{self.alert_after:g}")
                    counts["alert"] += 1
                    log.warning("self-test failing address=%s state=%s", address, latest.state)
        return counts

    def _tell(self, session: Session, template: str, mailbox: str, address: str, now: datetime, **values: str) -> None:
        r = self.templates.render(template, address=address, mailbox=mailbox, **values)
        for to in self.settings.selftest.alert_to:
            self._queue(session, mailbox, to, r.subject, r.body, now)
        if not self.settings.selftest.alert_to:
            log.warning("selftest.alert_to is empty: nobody is told: %s", r.subject)
