"""Sign-in by mail: one-time links, and the signed session cookie they lead to.

A link carries a random nonce signed with itsdangerous (a forged, altered or
stale link is refused before the database is asked); the database keeps only
the nonce's SHA-256 with its rep, expiry and use, so a link works once and
until it expires. Only configured, active reps get a link; any other address
is answered the same way and gets no mail, so the form tells nobody who is a
rep. The session is a signed, timestamped cookie naming the rep and holding
the CSRF token of its forms. This module never renders a page.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from maild.config import Settings
from maild.models import Rep, SigninLink, utcnow
from maild.outbound.compose import Outgoing
from maild.outbound.outbox import OutboxPolicy, enqueue
from maild.timefmt import aware

log = logging.getLogger("maild.web")

LINK_SALT = "maild.web.signin-link"
SESSION_SALT = "maild.web.session"
MAX_OPEN_LINKS = 5  # links a rep may hold unused at once: the form cannot be used to flood a rep's inbox
MAX_ADDRESS = 320


@dataclass(frozen=True)
class SignedIn:
    rep_id: int
    csrf: str


@dataclass(frozen=True)
class RepView:
    id: int
    name: str
    email: str


def _hash(nonce: str) -> str:
    return hashlib.sha256(nonce.encode()).hexdigest()


class Signin:
    """Issues and checks sign-in links and session cookies; `sessions` is the writing session factory."""

    def __init__(self, settings: Settings, secret: bytes, sessions: sessionmaker[Session], policy: OutboxPolicy,
                 base_url: str) -> None:
        self.sessions, self.policy, self.base_url = sessions, policy, base_url
        self.link_ttl = timedelta(minutes=settings.web.signin_minutes)
        self.session_ttl = timedelta(hours=settings.web.session_hours)
        self.mailbox = settings.web.mailbox or settings.mailbox[0].name
        self._links = URLSafeTimedSerializer(secret, salt=LINK_SALT)
        self._cookies = URLSafeTimedSerializer(secret, salt=SESSION_SALT)

    # -- links -------------------------------------------------------------------------

    def request_link(self, address: str) -> bool:
        """Mail a sign-in link if `address` is an active rep's; True when one was queued.

        The caller answers the same way either way.
        """
        address = address.strip().lower()[:MAX_ADDRESS]
        if "@" not in address:
            return False
        now = utcnow()
        with self.sessions() as session, session.begin():
            rep = rep_by_address(session, address)
            if rep is None:
                log.info("signin refused: not a rep's address")
                return False
            open_links = session.scalar(select(func.count(SigninLink.id)).where(
                SigninLink.rep_id == rep.id, SigninLink.used_at.is_(None), SigninLink.expires_at > now))
            if (open_links or 0) >= MAX_OPEN_LINKS:
                log.info("signin link not sent: rep=%s holds %d unused links", rep.id, open_links)
                return False
            nonce = secrets.token_urlsafe(24)
            session.add(SigninLink(token_hash=_hash(nonce), rep_id=rep.id, created_at=now,
                                   expires_at=now + self.link_ttl))
            link = f"{self.base_url}/signin/{self._links.dumps(nonce)}"
            minutes = round(self.link_ttl.total_seconds() / 60)
            body = (f"Hello {rep.name},\n\nsomeone (you, we hope) asked to sign in to the maild console.\n"
                    f"This link signs you in once, within {minutes} minutes:\n\n{link}\n\n"
                    "If you did not ask for it, ignore this mail: nobody can use the link but the reader of this mail.\n")
            enqueue(session, Outgoing(kind="signin", mailbox=self.mailbox, to=(rep.email,),
                                      subject="Your maild sign-in link", body=body), self.policy)
        log.info("signin link queued rep=%s", rep.id)
        return True

    def _nonce(self, token: str) -> str | None:
        """The link's nonce when its signature holds and it is within its lifetime."""
        try:
            nonce = self._links.loads(token, max_age=int(self.link_ttl.total_seconds()))
        except (BadSignature, SignatureExpired):
            return None
        return nonce if isinstance(nonce, str) else None

    def usable(self, session: Session, token: str) -> bool:
        """Whether a link would sign in now (read only: the confirmation page)."""
        nonce = self._nonce(token)
        if nonce is None:
            return False
        row = session.scalar(select(SigninLink).where(SigninLink.token_hash == _hash(nonce)))
        return row is not None and row.used_at is None and aware(row.expires_at) > utcnow()

    def consume(self, token: str) -> int | None:
        """Use the link: the rep's id, once; None for a bad, expired or used link, or a rep gone since."""
        nonce = self._nonce(token)
        if nonce is None:
            return None
        now = utcnow()
        with self.sessions() as session, session.begin():
            used = session.execute(
                update(SigninLink)
                .where(SigninLink.token_hash == _hash(nonce), SigninLink.used_at.is_(None),
                       SigninLink.expires_at > now)
                .values(used_at=now)
            )
            if used.rowcount != 1:  # type: ignore[attr-defined]
                return None
            rep_id = session.scalar(select(SigninLink.rep_id).where(SigninLink.token_hash == _hash(nonce)))
            rep = session.get(Rep, rep_id) if rep_id is not None else None
            return rep.id if rep is not None and rep.active else None

    # -- sessions ------------------------------------------------------------------------

    def cookie(self, rep_id: int) -> str:
        return self._cookies.dumps({"r": rep_id, "c": secrets.token_urlsafe(18)})

    def read_cookie(self, value: str | None) -> SignedIn | None:
        if not value or len(value) > 400:
            return None
        try:
            data = self._cookies.loads(value, max_age=int(self.session_ttl.total_seconds()))
        except (BadSignature, SignatureExpired):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("r"), int) or not isinstance(data.get("c"), str):
            return None
        return SignedIn(data["r"], data["c"])


def rep_by_address(session: Session, address: str) -> Rep | None:
    """The active rep with this address as email or alias, compared lowercased (reps are few: the config's)."""
    address = address.lower()
    for rep in session.scalars(select(Rep).where(Rep.active.is_(True))):
        if rep.email.lower() == address or address in (a.lower() for a in rep.aliases or ()):
            return rep
    return None


def active_rep(session: Session, rep_id: int) -> RepView | None:
    rep = session.get(Rep, rep_id)
    return RepView(rep.id, rep.name, rep.email) if rep is not None and rep.active else None
