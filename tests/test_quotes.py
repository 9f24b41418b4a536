"""new_text(): what the sender wrote now, without quoted history or signature,
checked on hand-written bodies for each header format."""

from __future__ import annotations

import pytest

from maild.ingest.stages.quotes import new_text

SUPPORT = "Support <support@example.com>"
REPLY = "Thanks, the printer works again.\n\nJane"
QUOTE = "\n\n> Our printer on floor 2 is jammed.\n> Can you help?\n"
UNQUOTED = "\n\nOur printer on floor 2 is jammed.\nCan you help?\n"
OUTLOOK_EN = (
    f"From: {SUPPORT}\n"
    "Sent: Monday, February 5, 2024 10:00 AM\n"
    "To: Jane Roe <jane@example.com>\n"
    "Subject: RE: Printer"
)

HISTORIES = {
    "gmail_on_wrote": f"On Mon, Feb 5, 2024 at 10:00 AM {SUPPORT} wrote:" + QUOTE,
    "gmail_on_wrote_unquoted": f"On Mon, Feb 5, 2024 at 10:00 AM {SUPPORT} wrote:" + UNQUOTED,
    "on_wrote_wrapped_inside_address": "On Mon, Feb 5, 2024 at 10:00 AM Support <\nsupport@example.com> wrote:" + QUOTE,
    "on_wrote_wrapped_before_wrote": f"On Mon, Feb 5, 2024 at 10:00 AM {SUPPORT}\nwrote:" + UNQUOTED,
    "on_wrote_wrapped_three_lines": "On Mon, Feb 5, 2024 at 10:00 AM,\nSupport Team\n<support@example.com> wrote:" + QUOTE,
    "apple_mail": f"On 5 Feb 2024, at 10:00, {SUPPORT} wrote:" + QUOTE,
    "german_am_schrieb": f"Am 05.02.2024 um 10:00 schrieb {SUPPORT}:" + UNQUOTED,
    "french_le_a_ecrit": f"Le lun. 5 févr. 2024 à 10:00, {SUPPORT} a écrit :" + QUOTE,
    "french_nbsp": f"Le 5 févr. 2024 à 10:00, {SUPPORT} a\u00a0écrit\u00a0:" + UNQUOTED,
    "spanish_el_escribio": "El lun, 5 feb 2024 a las 10:00, Support (<support@example.com>) escribió:" + QUOTE,
    "dutch_op_schreef": f"Op ma 5 feb. 2024 om 10:00 schreef {SUPPORT}:" + UNQUOTED,
    "italian_il_ha_scritto": f"Il giorno lun 5 feb 2024 alle ore 10:00 {SUPPORT} ha scritto:" + QUOTE,
    "portuguese_em_escreveu": f"Em seg., 5 de fev. de 2024 às 10:00, {SUPPORT} escreveu:" + UNQUOTED,
    "swedish_den_skrev": f"Den 5 feb. 2024 kl. 10:00 skrev {SUPPORT}:" + QUOTE,
    "danish_name_skrev": f"{SUPPORT} skrev:" + QUOTE,
    "norwegian_wrapped_address": "man. 5. feb. 2024 kl. 10:00 skrev Support <support@example.com\n>:" + QUOTE,
    "finnish_kirjoitti_wrapped": "ma 5. helmik. 2024 klo 10.00 Support\n<support@example.com> kirjoitti:" + UNQUOTED,
    "russian_napisal": f"5 февраля 2024 г., в 10:00, {SUPPORT} написал(а):" + QUOTE,
    "polish_napisal": f"W dniu 5.02.2024 o 10:00, {SUPPORT} napisał:" + UNQUOTED,
    "outlook_original_message": "-----Original Message-----\n" + OUTLOOK_EN + UNQUOTED,
    "outlook_block_without_delimiter": OUTLOOK_EN + UNQUOTED,
    "outlook_block_then_quote": OUTLOOK_EN + QUOTE,
    "outlook_underscore_separator": "________________________________\n" + OUTLOOK_EN + UNQUOTED,
    "outlook_bold_labels": OUTLOOK_EN.replace("From:", "*From:*").replace("Sent:", "*Sent:*") + UNQUOTED,
    "outlook_german": (
        f"-----Ursprüngliche Nachricht-----\nVon: {SUPPORT}\n"
        "Gesendet: Montag, 5. Februar 2024 10:00\nAn: Jane Roe\nBetreff: AW: Drucker" + UNQUOTED
    ),
    "outlook_german_no_delimiter": (
        f"Von: {SUPPORT}\nGesendet: Montag, 5. Februar 2024 10:00\n"
        "An: Jane Roe\nBetreff: AW: Drucker" + UNQUOTED
    ),
    "outlook_french": (
        f"De : {SUPPORT}\nEnvoyé : lundi 5 février 2024 10:00\n"
        "À : Jane Roe\nObjet : RE: Imprimante" + UNQUOTED
    ),
    "outlook_dutch": (
        f"Van: {SUPPORT}\nVerzonden: maandag 5 februari 2024 10:00\n"
        "Aan: Jane Roe\nOnderwerp: RE: Printer" + UNQUOTED
    ),
    "quoted_lines_without_header": QUOTE.strip(),
    "signature_dash_dash_space": "-- \nJane Roe\nACME Corp, +1 555 0100",
    "sent_from_my_iphone": "Sent from my iPhone" + UNQUOTED,
    "sent_from_my_android": "Sent from my Android",
    "get_outlook_for_ios": "Get Outlook for iOS<https://aka.ms/o0ukef>\n________________________________\n" + OUTLOOK_EN,
    "envoye_de_mon_iphone": "Envoyé de mon iPhone",
    "von_meinem_iphone_gesendet": "Von meinem iPhone gesendet",
    "signature_then_footer_then_quote": (
        "-- \nJane Roe\n\nSent from my iPhone\n\n"
        f"On Mon, Feb 5, 2024 at 10:00 AM {SUPPORT} wrote:" + QUOTE
    ),
}


@pytest.mark.parametrize("history", HISTORIES.values(), ids=HISTORIES.keys())
def test_history_and_signature_are_stripped(history: str) -> None:
    assert new_text(f"{REPLY}\n\n{history}") == REPLY


@pytest.mark.parametrize("history", HISTORIES.values(), ids=HISTORIES.keys())
def test_crlf_bodies_give_the_same_text(history: str) -> None:
    body = f"{REPLY}\n\n{history}".replace("\n", "\r\n")
    assert new_text(body) == REPLY


def test_reply_below_the_quote_is_kept() -> None:
    body = "On 02/05/2024 10:00 AM, Support wrote:\n> Is the printer fixed?\nYes, since this morning."
    assert new_text(body) == "Yes, since this morning."


def test_inline_answers_are_kept_and_questions_dropped() -> None:
    body = (
        "On Mon, Feb 5, 2024 at 10:00 AM Support <support@example.com> wrote:\n"
        "> Which floor?\n\nFloor 2.\n\n> Which model?\n\nThe HP one.\n"
    )
    assert new_text(body) == "Floor 2.\n\nThe HP one."


def test_quote_lines_a_client_wrapped_out_of_the_quote_are_dropped() -> None:
    body = (
        "Done.\n\nOn Mon, Feb 5, 2024 at 10:00 AM Support <support@example.com> wrote:\n"
        "> Please restart the printer on floor 2 and tell us whether the error code\n"
        "E42 is gone.\n>\n"
    )
    assert new_text(body) == "Done."


@pytest.mark.parametrize(
    "body",
    [
        "-----Original Message-----\n" + OUTLOOK_EN + UNQUOTED,
        "> Our printer is jammed.\n> Can you help?",
        "\n  -- \nJane Roe\n",
    ],
    ids=["only_forwarded_history", "only_quoted_lines", "only_signature"],
)
def test_nothing_left_returns_the_full_text(body: str) -> None:
    assert new_text(body) == body.strip()


def test_blank_body_stays_blank() -> None:
    assert new_text(" \r\n\n") == ""


@pytest.mark.parametrize(
    "body",
    [
        "Yesterday I wrote to the vendor and they said it ships Monday.\n\nThanks",
        "On Monday I wrote the report, see attached.\nOn your side, run:\n\n  lpstat -p",
        "As Jane wrote: the printer on floor 2 is broken.",
        "The log says it was sent from my iPhone app.\n\nSent from my desk, which is easier.",
        "Use the flag -- it is documented.\n-- first point\n-- second point",
        "The meeting is at 10:30.\nFrom: the finance team, To: everyone.\nThanks",
    ],
    ids=[
        "wrote_mid_sentence",
        "on_at_line_start",
        "wrote_colon_mid_line",
        "sent_from_in_prose",
        "dashes_in_prose",
        "from_in_prose",
    ],
)
def test_ordinary_prose_is_not_cut(body: str) -> None:
    assert new_text(body) == body


def test_megabyte_quote_chain_still_yields_the_reply() -> None:
    body = "Fixed, thanks.\n\n" + (">" * 1_000_000) + "\n" + "> old\n" * 10_000
    assert new_text(body) == "Fixed, thanks."
