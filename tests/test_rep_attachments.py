"""Attachments both ways, end to end over SMTP: a customer's files reach the
reps with the notification (or, over `notify_attachments_max`, are listed and
fetched with `#attachments`), a rep's files reach the customer with the reply
and are recorded on it, and a reply over `max_attachment_size` is refused to
the rep with the reason, never sent without its files.

Mail goes to `maild run`'s daemon (in a thread) with smtplib; what it sends
is read from a real SMTP sink process and parsed as a mail client would.
"""

from __future__ import annotations

import pytest

from conftest import SECRET, Cli
from desk_helpers import JPEG, PDF, Desk, files_of, mail, text_of

CUSTOMER = "Pat Customer <pat@example.com>"


@pytest.fixture
def desk(tmp_path, db_url, monkeypatch, request):
    monkeypatch.setenv("MAILD_SECRET", SECRET)
    keys = getattr(request, "param", {})
    with Desk(tmp_path, db_url, **keys) as d:
        d.cli = Cli(d.config)
        yield d


def _customer_writes_with_two_files(desk) -> None:
    desk.send(mail(CUSTOMER, "support@acme.test", "Broken on arrival", "The box was crushed, see the photo.",
                   files=(("photo.jpg", "image/jpeg", JPEG), ("invoice.pdf", "application/pdf", PDF))))


def test_a_customers_two_attachments_arrive_in_the_reps_notification(desk):
    _customer_writes_with_two_files(desk)
    (note,) = desk.to("alice@acme.test")
    assert files_of(note) == {"photo.jpg": JPEG, "invoice.pdf": PDF}  # byte for byte
    text = text_of(note)
    assert "The box was crushed" in text
    assert "photo.jpg (" in text and "invoice.pdf (" in text and "attached" in text
    (bob,) = desk.to("bob@acme.test")
    assert set(files_of(bob)) == {"photo.jpg", "invoice.pdf"}


def test_a_reps_pdf_reaches_the_customer_and_is_recorded_on_the_reply(desk):
    desk.send(mail(CUSTOMER, "support@acme.test", "Return label?", "How do I send it back?"))
    (note,) = desk.to("alice@acme.test")
    reply_to = note["Reply-To"].addresses[0].addr_spec
    desk.send(mail("Alice <alice@acme.test>", reply_to, "Re: " + str(note["Subject"]),
                   "Here is the return label, attached.", files=(("label.pdf", "application/pdf", PDF),)))
    (reply,) = desk.to("pat@example.com")
    assert files_of(reply) == {"label.pdf": PDF}
    assert "Here is the return label, attached." in text_of(reply)
    assert reply["From"].addresses[0].addr_spec == "support@acme.test"
    shown = desk.cli.json("issues", "show", "1")
    (out,) = [i for i in shown["interactions"] if i["direction"] == "outbound"]
    assert [(a["filename"], a["content_type"], a["size"]) for a in out["attachments"]] == [
        ("label.pdf", "application/pdf", len(PDF))]


def test_inline_images_of_a_reps_reply_go_with_it(desk):
    desk.send(mail(CUSTOMER, "support@acme.test", "Where is the switch?", "I cannot find it."))
    (note,) = desk.to("alice@acme.test")
    m = mail("Alice <alice@acme.test>", note["Reply-To"].addresses[0].addr_spec, "Re: switch",
             "The switch is at the back, see the picture.")
    m.add_alternative('<p>The switch is at the back, see the picture.</p><img src="cid:pic1@acme.test">',
                      subtype="html")
    m.get_payload()[1].add_related(JPEG, maintype="image", subtype="jpeg", cid="<pic1@acme.test>",
                                   filename="switch.jpg")
    desk.send(m)
    (reply,) = desk.to("pat@example.com")
    (part,) = [p for p in reply.walk() if p.get_filename() == "switch.jpg"]
    assert part.get_content() == JPEG and part["Content-ID"] == "<pic1@acme.test>"


@pytest.mark.parametrize("desk", [{"max_attachment_size": 40_000}], indirect=True)
def test_an_oversize_rep_attachment_is_refused_to_the_rep_with_the_reason(desk):
    desk.send(mail(CUSTOMER, "support@acme.test", "Manual?", "Could you send me the manual?"))
    (note,) = desk.to("alice@acme.test")
    big = PDF * 5  # about 51 KB, over the 40 000 bytes allowed
    desk.send(mail("Alice <alice@acme.test>", note["Reply-To"].addresses[0].addr_spec, "Re: Manual?",
                   "Here is the manual.", files=(("manual.pdf", "application/pdf", big),)))
    (told,) = desk.to("alice@acme.test", subject="not sent")
    text = text_of(told)
    assert "manual.pdf" in text and "over the limit of 39.1 KiB" in text and "smaller files" in text
    assert [m for to, m in desk.received() if "pat@example.com" in to] == []  # nothing without the file
    shown = desk.cli.json("issues", "show", "1")
    assert [i["direction"] for i in shown["interactions"]] == ["inbound", "internal"]  # the rep's mail is kept
    assert shown["interactions"][1]["attachments"][0]["filename"] == "manual.pdf"


@pytest.mark.parametrize("desk", [{"notify_attachments_max": 12_000}], indirect=True)
def test_files_over_the_notification_limit_are_listed_and_attachments_answers_with_them(desk):
    _customer_writes_with_two_files(desk)  # photo.jpg (about 7.7 KB) fits, invoice.pdf (10 KB) does not
    (note,) = desk.to("alice@acme.test")
    assert files_of(note) == {"photo.jpg": JPEG}
    text = text_of(note)
    assert "invoice.pdf (10 KiB), not attached" in text and '"#attachments invoice.pdf"' in text
    reply_to = note["Reply-To"].addresses[0].addr_spec
    desk.send(mail("Alice <alice@acme.test>", reply_to, "Re: files", "#attachments invoice.pdf"))
    (one,) = desk.to("alice@acme.test", subject="Attachments")
    assert files_of(one) == {"invoice.pdf": PDF}
    desk.send(mail("Alice <alice@acme.test>", reply_to, "Re: files", "#attachments"))
    both = desk.to("alice@acme.test", n=2, subject="Attachments")[1]
    assert files_of(both) == {"photo.jpg": JPEG, "invoice.pdf": PDF}
    desk.send(mail("Alice <alice@acme.test>", reply_to, "Re: files", "#attachments nosuch.doc"))
    none = desk.to("alice@acme.test", n=3, subject="Attachments")[2]
    assert "No attachment named 'nosuch.doc'" in text_of(none) and "photo.jpg, invoice.pdf" in text_of(none)
    assert [m for to, m in desk.received() if "pat@example.com" in to] == []  # the customer got none of it
    notices = desk.cli.json("issues", "show", "1")["notices"]
    assert [n["kind"] for n in notices].count("attachments") == 3


@pytest.mark.parametrize("desk", [{"notify_attachments_max": 12_000}], indirect=True)
def test_history_by_mail_lists_the_files_over_the_limit_and_says_how_to_answer(desk):
    _customer_writes_with_two_files(desk)
    desk.to("alice@acme.test")  # the notification
    address = desk.cli("reps", "address", "alice@acme.test").output.strip()
    desk.send(mail("Alice <alice@acme.test>", address, "History please", "#history 1"))
    (history,) = desk.to("alice@acme.test", subject="History:")
    assert files_of(history) == {"photo.jpg": JPEG}
    text = text_of(history).replace("\r\n", "\n")
    assert "The box was crushed" in text
    assert 'answer "#attachments NAME" to get one:\n  invoice.pdf (10 KiB)' in text
    assert "Reply to this message to answer the customer on this issue." in text
    assert "Write to support+i" in text  # the note address
