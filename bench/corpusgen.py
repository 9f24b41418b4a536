"""Deterministic corpus of helpdesk mail for the ingest benchmark and tests.

Writes customers' messages and reps' replies, threaded the way real clients
thread them, with a manifest of which conversation each message belongs to.
It must never import maild, read the clock, or do anything at import time.
"""

from __future__ import annotations

import base64
import html
import json
import mailbox
import random
import struct
import textwrap
import unicodedata
import zlib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone, UTC
from email.headerregistry import Address
from email.message import EmailMessage
from email.header import Header
from email.utils import format_datetime, formataddr
from pathlib import Path

SUPPORT = "support@acme.test"
REPS = (("Alice Archer", "alice@acme.test"), ("Bob Baker", "bob@acme.test"),
        ("Carol Chen", "carol@acme.test"))
BASE_DATE = datetime(2024, 3, 4, 8, 0, tzinfo=UTC)
NEW_SHARE = 0.30          # share of messages that open a conversation
QUOTE_LINES = 60          # clients quote the whole message; we cap the depth

# region: weight, first names, last names, domains, utc offset (h), language
REGIONS = {
    "en": (45, "Emma Liam Olivia Noah Ava James Sophia Ethan Grace Daniel Chloe Ryan",
           "Smith Johnson Brown Taylor Wilson Davies Clarke Walker Hughes Patel Nguyen O'Brien",
           "example.com example.org example.net mailbox.test northwind.example contoso.test",
           -5, "en"),
    "de": (20, "Jürgen Jörg Käthe Günther Anna Lukas Sören Birgit Felix Ursula",
           "Müller Schröder Weiß Groß Krämer Schmidt Becker Hoffmann Köhler Zimmermann",
           "beispiel.example kunde.test gmx.test web.test", 1, "de"),
    "fr": (12, "François Hélène Amélie Jérôme Léa Zoë Noël Céline Benoît Chloé",
           "Lefèvre Dubois Gauthier Bérénger Moreau Fontaine Girard Rousseau Lemaître Mercier",
           "exemple.example orange.test laposte.test", 1, "fr"),
    "es": (7, "José María Iñigo Sofía Andrés Lucía",
           "García Núñez Peña Martínez López Muñoz", "correo.test ejemplo.example", 1, "en"),
    "nordic": (6, "Søren Åsa Björn Ørjan Maja Lars",
               "Ågren Østergaard Lindström Nyström Hansen Sjöberg", "post.test nord.example",
               1, "en"),
    "pl": (4, "Małgorzata Łukasz Paweł Zofia", "Wójcik Kowalski Dąbrowski Wiśniewska",
           "poczta.test", 1, "en"),
    "ru": (3, "Анна:anna Дмитрий:dmitrij Ольга:olga", "Петрова:petrova Смирнов:smirnov Иванова:ivanova",
           "yandex.test", 3, "en"),
    "ja": (3, "太郎:taro 花子:hanako 健:ken", "山田:yamada 佐藤:sato 鈴木:suzuki", "docomo.test", 9, "en"),
}
CLIENT_WEIGHTS = {
    "en": {"gmail": 40, "outlook": 30, "apple": 20, "thunderbird": 10},
    "de": {"webde": 35, "outlook": 30, "thunderbird": 20, "gmail": 15},
    "fr": {"outlook": 40, "gmail": 40, "thunderbird": 20},
    "other": {"gmail": 50, "outlook": 25, "apple": 15, "thunderbird": 10},
}
# client: reply prefix, quote style, top-posts, share sent with an html part,
# latin-1 body when possible, body transfer encoding, mailer header
CLIENTS = {
    "gmail": ("Re: ", "on", True, 0.9, False, "quoted-printable", None),
    "outlook": ("RE: ", "outlook", True, 0.9, True, "quoted-printable",
                "X-Mailer: Microsoft Outlook 16.0"),
    "apple": ("Re: ", "on", True, 0.3, False, "quoted-printable", "X-Mailer: Apple Mail (2.3774.500.171)"),
    "thunderbird": ("Re: ", "on", False, 0.1, False, None,
                    "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Thunderbird/115.8.0"),
    "webde": ("AW: ", "am", True, 0.3, True, None, None),
    "helpdesk": ("Re: ", "on", True, 0.4, False, None, "X-Mailer: Acme Helpdesk"),
}
PREFIXES = ("Re: ", "RE: ", "AW: ")

SUBJECTS = {
    "en": ["Order #{order} has not arrived", "Invoice {inv} charged twice",
           "Cannot log in to my account", "Refund for order #{order}",
           "Question about my subscription", "Wrong item in order #{order}",
           "Password reset mail never arrives", "Please update my billing address",
           "Export to PDF fails", "Damaged parcel, order {order}", "Cancel my plan",
           "Discount code {code} not accepted"],
    "de": ["Rückfrage zur Rechnung {inv}", "Bestellung {order} noch nicht angekommen",
           "Kündigung meines Abonnements", "Falscher Artikel geliefert ({order})",
           "Passwort zurücksetzen funktioniert nicht", "Gutschein {code} wird nicht akzeptiert"],
    "fr": ["Commande {order} non reçue", "Problème de connexion à mon compte",
           "Facture {inv} erronée", "Remboursement de la commande {order}",
           "Résiliation de mon abonnement"],
}
GREETINGS = {"en": ["Hi,", "Hello,", "Hello support team,", "Hi there,"],
             "de": ["Hallo,", "Guten Tag,", "Sehr geehrte Damen und Herren,"],
             "fr": ["Bonjour,", "Madame, Monsieur,"]}
CLOSINGS = {"en": ["Thanks,", "Best,", "Regards,", "Cheers,"],
            "de": ["Viele Grüße", "Mit freundlichen Grüßen", "Beste Grüße"],
            "fr": ["Cordialement,", "Bien à vous,", "Merci d'avance,"]}
CUSTOMER_LINES = {
    "en": ["I have been a customer for years and this never happened before.",
           "I tried again this morning, same result.",
           "I'm using the app on an iPhone, if that matters.",
           "My colleague has the same problem with her account.",
           "Please let me know what information you need from me.",
           "The order number is {order}.", "It's been more than a week now.",
           "Could you please look into this as soon as possible?"],
    "de": ["Ich bin seit Jahren Kunde und das ist mir noch nie passiert.",
           "Ich habe es heute Morgen noch einmal versucht, mit demselben Ergebnis.",
           "Die Bestellnummer lautet {order}.", "Über eine kurze Rückmeldung würde ich mich freuen.",
           "Könnten Sie sich das bitte möglichst schnell ansehen?"],
    "fr": ["Je suis client depuis des années et cela n'est jamais arrivé.",
           "J'ai réessayé ce matin, même résultat.", "Le numéro de commande est {order}.",
           "Pourriez-vous regarder cela rapidement, s'il vous plaît ?",
           "Merci de me dire de quelles informations vous avez besoin."],
}
FOLLOW_UPS = {
    "en": ["Thanks, that worked!", "I'm afraid it still doesn't work.",
           "Any news on this? It's been a few days.", "I've attached a screenshot.",
           "Thank you for the quick answer.", "I used {email} for the order.",
           "Sorry, one more question: can I change the delivery address too?"],
    "de": ["Vielen Dank, jetzt funktioniert es.", "Leider klappt es immer noch nicht.",
           "Gibt es schon Neuigkeiten? Ich warte seit Tagen.", "Anbei ein Screenshot der Fehlermeldung.",
           "Danke für die schnelle Antwort!"],
    "fr": ["Merci, ça fonctionne maintenant.", "Malheureusement, cela ne marche toujours pas.",
           "Avez-vous des nouvelles ? J'attends depuis plusieurs jours.",
           "Vous trouverez une capture d'écran en pièce jointe.", "Merci pour votre réponse rapide."],
}
REP_LINES = [
    "I've checked order #{order}: it left our warehouse on Friday and should reach you"
    " within two working days.",
    "I've issued a refund to your original payment method; it usually shows up within 5 business days.",
    "Could you send me a screenshot of the error message you see?",
    "I've reset your account, please try logging in again with the link I've just sent you.",
    "I've forwarded this to our billing team and will get back to you as soon as I hear from them.",
    "The second charge on invoice {inv} was an authorisation hold and will disappear automatically.",
    "Could you confirm the email address you used when you placed the order?",
    "I've updated the address on your account; the next invoice will show it.",
    "Your code {code} expired at the end of last month, but I've applied the discount manually.",
    "I'm adding a colleague who handles these cases, she'll follow up shortly.",
]
EDITED_SUBJECT = [" - still not working", " (urgent)", " [update]", " - second attempt"]
DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
ASCII_FOLD = str.maketrans({"ø": "o", "Ø": "O", "ł": "l", "Ł": "L", "ß": "ss", "æ": "ae", "'": ""})


@dataclass
class Conversation:
    number: int
    customer: str
    subject: str
    message_ids: list[str] = field(default_factory=list)


@dataclass
class Manifest:
    """What the corpus holds and how it must come out: one issue per conversation."""

    n: int
    seed: int
    fmt: str
    path: str  # the Maildir directory or the mbox file
    total_bytes: int
    messages: dict[str, int]  # Message-ID without brackets -> conversation number
    conversations: list[Conversation]
    outbound: list[str]  # Message-IDs written by reps

    @property
    def replies(self) -> int:
        return len(self.messages) - len(self.conversations)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Manifest:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        data["conversations"] = [Conversation(**c) for c in data["conversations"]]
        return cls(**data)


@dataclass
class _Person:
    name: str
    email: str
    client: str
    lang: str
    tz: timezone
    rep: bool = False


@dataclass
class _Message:
    message_id: str
    author: _Person
    to: list[_Person]
    cc: list[str]
    date: datetime
    subject: str
    text: str
    references: list[str]
    attachment: tuple[str, str, bytes] | None = None


@dataclass
class _Thread:
    conversation: Conversation
    customer: _Person
    rep: _Person
    facts: dict[str, str]
    target: int
    messages: list[_Message] = field(default_factory=list)


def generate(n: int, seed: int, out_dir: Path, fmt: str = "maildir") -> Manifest:
    """Write n messages to out_dir (a Maildir, or out_dir/support.mbox) and manifest.json."""
    if fmt not in ("maildir", "mbox"):
        raise ValueError(f"fmt must be 'maildir' or 'mbox', not {fmt!r}")
    gen = _Generator(random.Random(seed))
    messages = [gen.next_message() for _ in range(n)]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    raws = [gen.render(m) for m in messages]
    path = _write_maildir(out_dir, messages, raws) if fmt == "maildir" else _write_mbox(
        out_dir / "support.mbox", messages, raws)
    convs = [t.conversation for t in gen.threads]
    manifest = Manifest(
        n=n, seed=seed, fmt=fmt, path=str(path), total_bytes=sum(len(r) for r in raws),
        messages={mid: c.number for c in convs for mid in c.message_ids},
        conversations=convs,
        outbound=[m.message_id for m in messages if m.author.rep])
    manifest.save(out_dir / "manifest.json")
    return manifest


def _write_maildir(out_dir: Path, messages: list[_Message], raws: list[bytes]) -> Path:
    for sub in ("cur", "new", "tmp"):
        (out_dir / sub).mkdir(exist_ok=True)
    for i, (msg, raw) in enumerate(zip(messages, raws)):
        # Names sort in delivery order, as a delivery agent's names do.
        name = f"{int(msg.date.timestamp())}.M{i % 1000000:06d}P{4000 + i}Q{i + 1}.mx1.acme.test"
        tmp = out_dir / "tmp" / name
        tmp.write_bytes(raw)
        tmp.rename(out_dir / "cur" / f"{name}:2,S")
    return out_dir


def _write_mbox(path: Path, messages: list[_Message], raws: list[bytes]) -> Path:
    box = mailbox.mbox(path, create=True)
    try:
        for msg, raw in zip(messages, raws):
            d = msg.date.astimezone(UTC)
            stamp = f"{DAYS[d.weekday()]} {MONTHS[d.month - 1]} {d.day:2d} {d:%H:%M:%S} {d.year}"
            box.add(f"From {msg.author.email} {stamp}\n".encode("ascii") + raw)
        box.flush()
    finally:
        box.close()
    return path


class _Generator:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.now = BASE_DATE
        self.ids: set[str] = set()
        self.reps = [_Person(name, addr, "helpdesk", "en", timezone(timedelta(hours=1)), rep=True)
                     for name, addr in REPS]
        self.customers: list[_Person] = []
        self.addresses: set[str] = set()
        self.threads: list[_Thread] = []
        self.open: list[_Thread] = []

    # -- the stream ---------------------------------------------------------

    def next_message(self) -> _Message:
        rng = self.rng
        self.now += timedelta(seconds=1 + int(rng.expovariate(1 / 240)))
        if not self.open or rng.random() < NEW_SHARE:
            thread = self._new_thread()
            msg = self._first_message(thread)
        else:
            recent = self.open[-30:]
            thread = rng.choice(recent if rng.random() < 0.7 else self.open)
            msg = self._reply(thread)
        thread.messages.append(msg)
        thread.conversation.message_ids.append(msg.message_id)
        if len(thread.messages) >= thread.target:
            self.open.remove(thread)
        return msg

    def _customer(self) -> _Person:
        # About one customer per ten messages, so customers write several conversations.
        if self.customers and self.rng.random() < 1 - 1 / 3:
            return self.rng.choice(self.customers)
        person = self._new_customer()
        self.customers.append(person)
        return person

    def _new_customer(self) -> _Person:
        rng = self.rng
        region = rng.choices(list(REGIONS), [r[0] for r in REGIONS.values()])[0]
        _, firsts, lasts, domains, offset, lang = REGIONS[region]
        first, first_ascii = _name(rng.choice(firsts.split()))
        last, last_ascii = _name(rng.choice(lasts.split()))
        name = f"{last} {first}" if region == "ja" else f"{first} {last}"
        while True:
            local = rng.choice([f"{first_ascii}.{last_ascii}", f"{first_ascii[0]}{last_ascii}",
                                f"{first_ascii}_{last_ascii}{rng.randrange(10, 99)}"])
            addr = f"{local}@{rng.choice(domains.split())}".lower()
            if addr not in self.addresses:
                break
        self.addresses.add(addr)
        weights = CLIENT_WEIGHTS.get(region, CLIENT_WEIGHTS["other"])
        client = rng.choices(list(weights), list(weights.values()))[0]
        if rng.random() < 0.08:
            name = ""  # some clients send a bare address
        return _Person(name, addr, client, lang, timezone(timedelta(hours=offset)))

    def _new_thread(self) -> _Thread:
        rng = self.rng
        customer = self._customer()
        facts = {"order": str(rng.randrange(10000, 99999)), "inv": f"INV-{rng.randrange(1000, 9999)}",
                 "code": f"SPRING{rng.randrange(10, 99)}", "email": customer.email}
        taken = {t.conversation.subject for t in self.threads if t.customer is customer}
        for _ in range(10):
            subject = rng.choice(SUBJECTS[customer.lang]).format(**facts)
            if subject not in taken:
                break
        target = 1 if rng.random() < 0.05 else 2 + min(_geometric(rng, 0.4), 28)
        conv = Conversation(len(self.threads) + 1, customer.email, subject)
        thread = _Thread(conv, customer, rng.choice(self.reps), facts, target)
        self.threads.append(thread)
        self.open.append(thread)
        return thread

    def _first_message(self, thread: _Thread) -> _Message:
        rng, c = self.rng, thread.customer
        lines = rng.sample(CUSTOMER_LINES[c.lang], rng.randint(1, 4))
        body = " ".join(lines).format(**thread.facts)
        text = self._letter(c, rng.choice(GREETINGS[c.lang]), body)
        attachment = self._attachment(thread) if rng.random() < 0.2 else None
        return _Message(self._message_id(c), c, [_support()], [], self.now,
                        thread.conversation.subject, text, [], attachment)

    def _reply(self, thread: _Thread) -> _Message:
        rng = self.rng
        parent = thread.messages[-1]
        if len(thread.messages) > 1 and rng.random() < 0.15:
            parent = rng.choice(thread.messages[:-1])
        author, to, cc = self._reply_parties(thread, parent)
        if author.rep:
            body = " ".join(rng.sample(REP_LINES, rng.randint(1, 3))).format(**thread.facts)
            first = thread.customer.name.split(" ")[0] if thread.customer.name else "there"
            new = self._letter(author, f"Hi {first},", body)
        else:
            body = " ".join(rng.sample(FOLLOW_UPS[author.lang], rng.randint(1, 2)))
            new = self._letter(author, rng.choice(GREETINGS[author.lang]), body.format(**thread.facts))
        refs = parent.references + [parent.message_id]
        if len(refs) > 6 and rng.random() < 0.5:
            refs = refs[:1] + refs[-4:]  # clients trim long chains to first + last few
        chance = 0.05 if author.rep else 0.1
        attachment = self._attachment(thread) if rng.random() < chance else None
        return _Message(self._message_id(author), author, to, cc, self.now,
                        self._reply_subject(thread, parent, author), self._quote(author, parent, new),
                        refs, attachment)

    def _reply_parties(self, thread: _Thread, parent: _Message) -> tuple[_Person, list[_Person], list[str]]:
        """Who answers, and to whom: reps write to the customer with support in Cc."""
        rng, customer = self.rng, thread.customer
        if parent.author.rep:
            if rng.random() < 0.08:
                return rng.choice(self.reps), [customer], [SUPPORT]
            if rng.random() < 0.6:
                return customer, [parent.author], [SUPPORT]
            return customer, [_support()], []
        if rng.random() < 0.15:
            return customer, [_support()], []
        rep = thread.rep if rng.random() < 0.9 else rng.choice(self.reps)
        return rep, [customer], [SUPPORT]

    # -- text ---------------------------------------------------------------

    def _letter(self, author: _Person, greeting: str, body: str) -> str:
        paragraph = textwrap.fill(body, 72)
        if author.rep:
            return (f"{greeting}\n\n{paragraph}\n\nKind regards,\n{author.name}\n"
                    "-- \nAcme Support\nhttps://acme.test/help\n")
        closing = self.rng.choice(CLOSINGS[author.lang])
        signature = author.name or author.email.split("@")[0]
        return f"{greeting}\n\n{paragraph}\n\n{closing}\n{signature}\n"

    def _reply_subject(self, thread: _Thread, parent: _Message, author: _Person) -> str:
        prefix = CLIENTS[author.client][0]
        if author.client == "outlook" and author.lang == "de":
            prefix = "AW: "
        base = thread.conversation.subject
        roll = self.rng.random()
        if roll < 0.03:
            return prefix + base + self.rng.choice(EDITED_SUBJECT)
        if roll < 0.15 and parent.subject.startswith(PREFIXES) and not parent.subject.startswith(prefix):
            return prefix + parent.subject  # "RE: AW: ..." as some clients stack them
        return prefix + base

    def _quote(self, author: _Person, parent: _Message, new: str) -> str:
        style, top = CLIENTS[author.client][1], CLIENTS[author.client][2]
        old = parent.text.rstrip("\n").split("\n")[:QUOTE_LINES]
        who = parent.author.name or parent.author.email
        when = parent.date.astimezone(author.tz)
        if style == "outlook":
            sent = f"{DAYS[when.weekday()]}, {MONTHS[when.month - 1]} {when.day}, {when.year} {when:%H:%M}"
            to = "; ".join(p.name or p.email for p in parent.to)
            head = (f"-----Original Message-----\nFrom: {who} <{parent.author.email}>\nSent: {sent}\n"
                    f"To: {to}\nSubject: {parent.subject}\n\n")
            return f"{new}\n{head}" + "\n".join(old) + "\n"
        if style == "am":
            line = f"Am {when:%d.%m.%Y} um {when:%H:%M} schrieb {who} <{parent.author.email}>:"
        else:
            date = f"{DAYS[when.weekday()]}, {when.day} {MONTHS[when.month - 1]} {when.year} at {when:%H:%M}"
            line = f"On {date}, {who} <{parent.author.email}> wrote:"
        quoted = "\n".join(">" + (l if l.startswith(">") else " " + l if l else "") for l in old)  # noqa: E741
        if top or self.rng.random() < 0.5:
            return f"{new}\n{line}\n{quoted}\n"
        return f"{line}\n{quoted}\n\n{new}"

    def _attachment(self, thread: _Thread) -> tuple[str, str, bytes]:
        rng, inv = self.rng, thread.facts["inv"]
        if rng.random() < 0.5:
            name = {"de": f"Rechnung_{inv}_März.pdf", "fr": f"facture-{inv}.pdf"}.get(
                thread.customer.lang, f"invoice-{inv}.pdf")
            body = rng.randbytes(rng.randrange(200, 3500))
            return name, "application/pdf", (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n"
                                             b"<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
                                             + body + b"\n%%EOF\n")
        name = rng.choice(["screenshot.png", "Screenshot 2024-03-04 at 10.15.32.png",
                           f"IMG_{rng.randrange(1000, 9999)}.PNG"])
        return name, "image/png", _png(rng, rng.randrange(200, 3000))

    def _message_id(self, author: _Person) -> str:
        while True:
            mid = _client_message_id(self.rng, author, self.now)
            if mid not in self.ids:
                self.ids.add(mid)
                return mid

    # -- bytes --------------------------------------------------------------

    def render(self, msg: _Message) -> bytes:
        """The message as a client would send it; some headers in raw ISO-8859-1 words."""
        rng = self.rng
        _, _, _, html_share, latin1, cte, mailer = CLIENTS[msg.author.client]
        charset = "utf-8"
        if latin1 and _encodable(msg.text, "iso-8859-1"):
            charset = "iso-8859-1"
        em = EmailMessage()
        raw: list[str] = []
        latin_headers = charset == "iso-8859-1" and rng.random() < 0.7
        _address_header(em, raw, "From", [msg.author], latin_headers)
        _address_header(em, raw, "To", msg.to, latin_headers)
        if msg.cc:
            em["Cc"] = ", ".join(msg.cc)
        if latin_headers and not msg.subject.isascii():
            raw.append("Subject: " + Header(msg.subject, "iso-8859-1", header_name="Subject").encode())
        else:
            em["Subject"] = msg.subject
        em["Date"] = format_datetime(msg.date.astimezone(msg.author.tz))
        # Written by hand: the stdlib folds a long msg-id into an encoded word.
        raw.append(f"Message-ID: <{msg.message_id}>")
        if msg.references:
            raw.append(f"In-Reply-To: <{msg.references[-1]}>")
            raw.append("References: " + "\n ".join(f"<{r}>" for r in msg.references))
        text_cte = None if msg.text.isascii() else cte
        em.set_content(msg.text, charset=charset, cte=text_cte)
        if rng.random() < html_share:
            em.add_alternative(_html(msg.text, msg.author.client), subtype="html", charset="utf-8")
        if msg.attachment:
            name, ctype, data = msg.attachment
            maintype, subtype = ctype.split("/")
            em.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
        for part in em.walk():
            if part.is_multipart():  # fixed boundaries: the stdlib would draw from global random
                part.set_boundary(f"=_{rng.getrandbits(96):024x}")
        trace = _trace(rng, msg, mailer)
        head = "".join(f"{line}\n" for line in trace + raw).encode("ascii")
        return head + em.as_bytes()


def _client_message_id(rng: random.Random, author: _Person, now: datetime) -> str:
    """A Message-ID shaped the way the author's client shapes them."""
    u = f"{rng.getrandbits(128):032x}"
    uuid = f"{u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-{u[20:]}"
    local, domain = author.email.split("@")
    if author.client == "gmail":
        return f"CA{_token(rng, 40)}@mail.gmail.test"
    if author.client == "outlook":
        host = f"AM0PR07MB{rng.randrange(1000, 9999)}"
        return f"{host}{u[:14].upper()}@{host}.eurprd07.prod.outlook.test"
    if author.client == "apple":
        return f"{uuid.upper()}@{domain}"
    if author.client == "webde":
        return f"trinity-{uuid}-{int(now.timestamp() * 1000)}@3c-app-webde-bap12"
    if author.client == "helpdesk":
        return f"{int(now.timestamp())}.{u[:12]}.{local}@acme.test"
    return f"{uuid}@{domain}"


def _support() -> _Person:
    return _Person("Acme Support", SUPPORT, "helpdesk", "en", UTC, rep=False)


def _trace(rng: random.Random, msg: _Message, mailer: str | None) -> list[str]:
    """The transport headers a delivered message carries (Received, DKIM...), for realistic sizes."""
    domain = msg.author.email.split("@")[1]
    when = format_datetime(msg.date.astimezone(UTC))
    relay = f"mail-{rng.getrandbits(32):08x}.out.{domain}"
    ip = f"192.0.2.{rng.randrange(1, 255)}"
    qid = f"{rng.getrandbits(48):012X}"
    lines = [f"Return-Path: <{msg.author.email}>", f"Delivered-To: {SUPPORT}",
             f"Received: from {relay} ({relay} [{ip}])\n\tby mx1.acme.test (Postfix) with ESMTPS id {qid}"
             f"\n\tfor <{SUPPORT}>; {when}",
             f"Received: by {relay} with SMTP id {rng.getrandbits(40):x}; {when}"]
    if not msg.author.rep:
        sig = base64.b64encode(rng.randbytes(256)).decode("ascii")
        body_hash = base64.b64encode(rng.randbytes(32)).decode("ascii")
        folded = "\n\t ".join(sig[i:i + 70] for i in range(0, len(sig), 70))
        lines.append(f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain}; s=s1;"
                     f"\n\th=from:to:subject:date:message-id; bh={body_hash};\n\tb={folded}")
    if mailer:
        lines.append(mailer)
    return lines


def _address_header(em: EmailMessage, raw: list[str], name: str, people: list[_Person],
                    latin1: bool) -> None:
    if latin1 and any(not p.name.isascii() for p in people):
        raw.append(f"{name}: " + ", ".join(formataddr((p.name, p.email), "iso-8859-1") for p in people))
        return
    em[name] = [Address(p.name, addr_spec=p.email) for p in people]


OUTLOOK_HEAD = (
    '<html xmlns:o="urn:schemas-microsoft-com:office:office" xmlns:w="urn:schemas-microsoft-com:office:word">'
    '<head><meta http-equiv="Content-Type" content="text/html; charset=utf-8">'
    '<meta name="Generator" content="Microsoft Word 15 (filtered medium)"><style><!--\n'
    '@font-face {font-family:"Cambria Math"; panose-1:2 4 5 3 5 4 6 3 2 4;}\n'
    '@font-face {font-family:Calibri; panose-1:2 15 5 2 2 2 4 3 2 4;}\n'
    'p.MsoNormal, li.MsoNormal, div.MsoNormal {margin:0cm; font-size:11.0pt;'
    ' font-family:"Calibri",sans-serif;}\n'
    'a:link, span.MsoHyperlink {mso-style-priority:99; color:#0563C1; text-decoration:underline;}\n'
    'span.EmailStyle17 {mso-style-type:personal-compose; font-family:"Calibri",sans-serif;'
    ' color:windowtext;}\n'
    '.MsoChpDefault {mso-style-type:export-only; font-family:"Calibri",sans-serif;}\n'
    '@page WordSection1 {size:612.0pt 792.0pt; margin:70.85pt 70.85pt 2.0cm 70.85pt;}\n'
    'div.WordSection1 {page:WordSection1;}\n--></style></head>'
    '<body lang="EN-US" link="#0563C1" vlink="#954F72" style="word-wrap:break-word">'
    '<div class="WordSection1">\n')
QUOTE_OPEN = ('<blockquote class="gmail_quote" style="margin:0px 0px 0px 0.8ex;'
              'border-left:1px solid rgb(204,204,204);padding-left:1ex">')


def _html(text: str, client: str) -> str:
    """An html rendering of the text, with the wrapper markup its client adds."""
    out, depth = [], 0
    line_tag = '<p class="MsoNormal">{}<o:p></o:p></p>' if client == "outlook" else "<div>{}</div>"
    for line in text.split("\n"):
        level = len(line) - len(line.lstrip(">"))
        out.extend([QUOTE_OPEN] * max(level - depth, 0) + ["</blockquote>"] * max(depth - level, 0))
        depth = level
        out.append(line_tag.format(html.escape(line[level:].strip()) or "<br>"))
    out.extend(["</blockquote>"] * depth)
    if client == "outlook":
        return OUTLOOK_HEAD + "\n".join(out) + "\n</div></body></html>\n"
    return '<html><head></head><body><div dir="ltr">' + "\n".join(out) + "</div></body></html>\n"


def _png(rng: random.Random, size: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", 64, 48, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rng.randbytes(size))
            + chunk(b"IEND", b""))


def _name(spec: str) -> tuple[str, str]:
    """'Jürgen' -> ('Jürgen', 'jurgen'); 'Анна:anna' -> ('Анна', 'anna')."""
    if ":" in spec:
        return tuple(spec.split(":", 1))  # type: ignore[return-value]
    folded = unicodedata.normalize("NFKD", spec.translate(ASCII_FOLD))
    return spec, "".join(ch for ch in folded if ch.isascii()).lower()


def _token(rng: random.Random, length: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+_="
    return "".join(rng.choice(alphabet) for _ in range(length))


def _geometric(rng: random.Random, p_stop: float) -> int:
    k = 0
    while rng.random() >= p_stop:
        k += 1
    return k


def _encodable(text: str, charset: str) -> bool:
    try:
        text.encode(charset)
    except UnicodeEncodeError:
        return False
    return True
