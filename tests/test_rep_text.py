"""The text of a rep's reply: commands at the top, canned responses, spelling."""

from __future__ import annotations

import pytest

from maild.desk.canned import expand
from maild.desk.commands import Command, parse_commands
from maild.desk.spelling import Speller, Suspect, report

# --- commands ------------------------------------------------------------


def only(text: str) -> Command:
    parsed = parse_commands(text + "\nThanks for waiting.")
    assert parsed.errors == ()
    assert parsed.body == "Thanks for waiting."
    (command,) = parsed.commands
    return command


def error(text: str) -> str:
    parsed = parse_commands(text + "\nThanks for waiting.")
    assert parsed.commands == ()
    assert parsed.body == "Thanks for waiting."
    (message,) = parsed.errors
    return message


@pytest.mark.parametrize("name", ["close", "reopen", "pending", "take", "note", "send"])
def test_commands_without_arguments(name):
    assert only(f"#{name}") == Command(name, (), f"#{name}")
    assert error(f"#{name} please") == f"#{name}: takes no arguments, got 'please'"


@pytest.mark.parametrize(
    ("line", "name", "args"),
    [
        ("#assign Jane Roe", "assign", ("Jane Roe",)),
        ("#assign  jane@acme.test ", "assign", ("jane@acme.test",)),
        ("#priority low", "priority", ("low",)),
        ("#priority URGENT", "priority", ("urgent",)),
        ("#category Billing and refunds", "category", ("Billing and refunds",)),
        ("#tag refund", "tag", ("refund",)),
        ("#tag refund, vip  late", "tag", ("refund", "vip", "late")),
        ("#untag vip", "untag", ("vip",)),
        ("#followup call back on Friday to confirm the refund", "followup", ("call back on Friday to confirm the refund",)),
        ("#cc add boss@customer.test", "cc", ("add", "boss@customer.test")),
        ("#cc REMOVE Boss <boss@customer.test>", "cc", ("remove", "boss@customer.test")),
        ("#link 123", "link", ("123",)),
        ("#link #123", "link", ("123",)),
        ("#link [#123]", "link", ("123",)),
        ("#link [ACME #123]", "link", ("123",)),
    ],
)
def test_commands_with_arguments(line, name, args):
    command = only(line)
    assert (command.name, command.args, command.line) == (name, args, line.strip())


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("#priority asap", "#priority: expected low, normal, high or urgent, got 'asap'"),
        ("#priority", "#priority: expected low, normal, high or urgent, got nothing"),
        ("#assign", "#assign: expected a rep name or email address"),
        ("#assign jane@", "#assign: 'jane@' is not an email address"),
        ("#category", "#category: expected a category name"),
        ("#tag", "#tag: expected one or more tags"),
        ("#untag ,", "#untag: expected one or more tags"),
        ("#followup", "#followup: expected a description of the follow-up work"),
        ("#cc", "#cc: expected add or remove and an email address, got nothing"),
        ("#cc boss@customer.test", "#cc: expected add or remove and an email address, got 'boss@customer.test'"),
        ("#cc add", "#cc: expected an email address after add"),
        ("#cc add boss at customer", "#cc: expected one email address, got 'boss at customer'"),
        ("#cc add a@x.test, b@x.test", "#cc: expected one email address, got 'a@x.test, b@x.test'"),
        ("#link", "#link: expected an issue number such as 123 or #123, got nothing"),
        ("#link the other one", "#link: expected an issue number such as 123 or #123, got 'the other one'"),
        ("#link 0", "#link: expected an issue number such as 123 or #123, got '0'"),
        ("#foo", "unknown command #foo"),
        ("#Closed", "unknown command #Closed"),
        ("#canned", "#canned: expected the name of a canned response"),
    ],
)
def test_command_errors_name_the_line_and_the_problem(line, message):
    assert error(line) == message


def test_command_words_are_case_insensitive():
    parsed = parse_commands("#CLOSE\n#Tag Refund\nDone.")
    assert [(c.name, c.args) for c in parsed.commands] == [("close", ()), ("tag", ("Refund",))]


def test_several_commands_and_blank_lines_leave_only_the_text():
    text = "\n#take\n\n#priority high\n#tag refund\n\n\nHello Ann,\n\nyour refund is on its way.\n"
    parsed = parse_commands(text)
    assert [c.name for c in parsed.commands] == ["take", "priority", "tag"]
    assert parsed.errors == ()
    assert parsed.body == "Hello Ann,\n\nyour refund is on its way.\n"


def test_only_the_top_block_holds_commands():
    text = "#close\nHello Ann,\n#1 priority for us is your refund.\n#priority high\n"
    parsed = parse_commands(text)
    assert [c.name for c in parsed.commands] == ["close"]
    assert parsed.body == "Hello Ann,\n#1 priority for us is your refund.\n#priority high\n"


@pytest.mark.parametrize("text", ["#123 is broken again\n#close\n", "[#123] is fixed\n#close\n", "# Steps\n#close\n"])
def test_a_top_line_that_is_no_command_word_is_text(text):
    parsed = parse_commands(text)
    assert parsed.commands == () and parsed.errors == ()
    assert parsed.body == text


def test_canned_lines_in_the_top_block_stay_in_the_body_without_ending_it():
    parsed = parse_commands("#close\n#canned greeting\n#tag refund\n\nYour refund is on its way.")
    assert [c.name for c in parsed.commands] == ["close", "tag"]
    assert parsed.body == "#canned greeting\n\nYour refund is on its way."


def test_text_with_only_commands_has_an_empty_body():
    parsed = parse_commands("#close\r\n#note\r\n\r\n")
    assert [c.name for c in parsed.commands] == ["close", "note"]
    assert parsed.body == ""


def test_crlf_text_keeps_its_line_endings():
    parsed = parse_commands("#pending\r\nHello,\r\nmore soon.\r\n")
    assert parsed.body == "Hello,\r\nmore soon.\r\n"


def test_bad_lines_are_reported_and_the_good_ones_still_parsed():
    parsed = parse_commands("#close\n#priority asap\n#tag vip\nHi")
    assert [c.name for c in parsed.commands] == ["close", "tag"]
    assert parsed.errors == ("#priority: expected low, normal, high or urgent, got 'asap'",)
    assert parsed.body == "Hi"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("#close\n#reopen", "#close and #reopen contradict each other: give only one"),
        ("#pending\n#close", "#pending and #close contradict each other: give only one"),
        ("#take\n#assign Jane", "#take and #assign contradict each other: give only one"),
        ("#priority low\n#priority high", "#priority given twice with different values"),
        ("#category Billing\n#category Shipping", "#category given twice with different values"),
    ],
)
def test_contradicting_commands_are_errors(text, message):
    assert message in parse_commands(text + "\nHi").errors


def test_repeating_the_same_command_is_no_contradiction():
    assert parse_commands("#close\n#close\n#priority high\n#priority HIGH\nHi").errors == ()


# --- canned responses ----------------------------------------------------

CANNED = {
    "greeting": "Dear {{ customer_name }},\n",
    "refund": "Your refund for issue #{{issue_id}} is on its way.",
    "signoff": "Kind regards,\n{{rep_name}}\nAcme customer service\n",
    "nested": "See also {{canned:refund}}.",
    "odd": "Ref {{ order_number }} {{customer_name}}",
}
VARIABLES = {"customer_name": "Ann Lee", "issue_id": "42", "rep_name": "Bo"}


def test_line_and_inline_markers_expand_with_variables():
    body = "#canned greeting\n\nThanks for waiting. {{canned:refund}}\n\n#CANNED signoff\n"
    result = expand(body, CANNED, VARIABLES)
    assert result.body == (
        "Dear Ann Lee,\n\nThanks for waiting. Your refund for issue #42 is on its way.\n\n"
        "Kind regards,\nBo\nAcme customer service\n"
    )
    assert result.used == ("greeting", "refund", "signoff")
    assert result.unknown == ()


def test_inline_marker_allows_spaces_and_any_case():
    result = expand("A: {{ Canned : refund }} B: {{canned:refund}}", CANNED, VARIABLES)
    assert result.body == "A: Your refund for issue #42 is on its way. B: Your refund for issue #42 is on its way."
    assert result.used == ("refund",)


def test_canned_name_matches_ignoring_case():
    assert expand("#canned Greeting", CANNED, VARIABLES).body == "Dear Ann Lee,"


def test_a_line_marker_inside_a_sentence_is_text():
    body = "Type #canned greeting on its own line to insert it."
    result = expand(body, CANNED, VARIABLES)
    assert (result.body, result.used, result.unknown) == (body, (), ())


def test_unknown_names_are_reported_and_their_markers_kept():
    body = "#canned greting\n{{canned:refnud}} {{canned:refund}}\n#canned my reply\n#canned greting\n"
    result = expand(body, CANNED, VARIABLES)
    assert result.unknown == ("greting", "refnud", "my reply")
    assert result.used == ("refund",)
    assert result.body == (
        "#canned greting\n{{canned:refnud}} Your refund for issue #42 is on its way.\n#canned my reply\n#canned greting\n"
    )


def test_expansion_is_not_recursive():
    result = expand("{{canned:nested}}", CANNED, VARIABLES)
    assert result.body == "See also {{canned:refund}}."
    assert result.used == ("nested",)


def test_self_referencing_canned_response_does_not_loop():
    result = expand("#canned loop", {"loop": "again: {{canned:loop}}\n#canned loop"}, {})
    assert result.body == "again: {{canned:loop}}\n#canned loop"


def test_unknown_variables_stay_as_written_and_the_reps_text_is_not_filled():
    result = expand("Template help: {{ customer_name }}\n{{canned:odd}}", CANNED, VARIABLES)
    assert result.body == "Template help: {{ customer_name }}\nRef {{ order_number }} Ann Lee"


def test_variable_values_are_not_expanded_again():
    result = expand("{{canned:greeting}}", CANNED, {"customer_name": "{{canned:refund}}"})
    assert result.body == "Dear {{canned:refund}},"


def test_crlf_line_marker_keeps_the_line_ending():
    assert expand("#canned refund\r\nBye\r\n", CANNED, VARIABLES).body == (
        "Your refund for issue #42 is on its way.\r\nBye\r\n"
    )


# --- spelling ------------------------------------------------------------


@pytest.fixture(scope="module")
def speller():
    return Speller("en", words=["Zyloflex", "acmecloud"])


def words(suspects) -> list[str]:
    return [s.word for s in suspects]


def test_misspelled_word_is_found_with_suggestions(speller):
    (suspect,) = speller.check("You will recieve the parcel tomorrow.")
    assert suspect.word == "recieve"
    assert suspect.suggestions[0] == "receive"
    assert 0 < len(suspect.suggestions) <= 5


def test_each_word_once_in_order_of_appearance(speller):
    text = "Please recieve this. I wnat to help.\nRecieve it soon, we wnat you happy."
    assert words(speller.check(text)) == ["recieve", "wnat"]


def test_correct_text_has_no_suspects(speller):
    text = "Hello Ann,\n\nthank you for your patience. We don't know yet why the customer's order was late."
    assert speller.check(text) == ()


@pytest.mark.parametrize(
    "text",
    [
        "> You will recieve it\n>> wnat",
        "   > indented quote with recieve",
        "See https://example.test/recieve-page and http://wnat.example.test/x",
        "Visit www.recieve.test today.",
        "Write to recieve@example.test or <wnat@example.test>.",
        "Run `systemctl restrat maild` now.",
        "Run ``recieve --fast`` now.",
        "Like this:\n\n    recieve --wnat\n\tconifg file\n",
        "Like this:\n```\nrecieve = wnat\n```\nDone.",
        "Open config.toml and recieve_all then v2beta and 3rd.",
        "The RECIEVE flag and the WNAT option.",
        "Our rep Bartholomewz and Ms Xiaolingz will call.",
        "The Zyloflex and AcmeCloud units, zyloflex's case and acmecloud.",
        "An iPhone or a PayPaal account.",
        "It is ok, xz is fine.",
    ],
    ids=[
        "quoted",
        "indented-quote",
        "urls",
        "www",
        "addresses",
        "backticks",
        "double-backticks",
        "indented-code",
        "fenced-code",
        "digits-underscores-files",
        "all-caps",
        "names",
        "custom-words",
        "camel-case",
        "short-words",
    ],
)
def test_what_is_not_prose_is_not_checked(speller, text):
    assert speller.check(text) == ()


def test_prose_around_skipped_parts_is_still_checked(speller):
    text = "> quoted recieve\nSee https://example.test and then tomorow.\n```\nwnat\n```\nAfter the block, definately."
    assert words(speller.check(text)) == ["tomorow", "definately"]


def test_capital_words_at_a_sentence_start_are_checked(speller):
    text = "Hi Ann,\nRecieve the parcel. Tomorow it comes!\n\nWnat else?\n- Restat the router"
    assert words(speller.check(text)) == ["Recieve", "Tomorow", "Wnat", "Restat"]
    assert speller.check("Recieve it.")[0].suggestions[0] == "Receive"


def test_a_capital_word_in_a_wrapped_line_is_a_name(speller):
    assert speller.check("Your order was packed by\nBartholomewz yesterday.") == ()


def test_apostrophes(speller):
    assert speller.check("We can't, it isn't and won't; the customers' and Ann\u2019s order don\u2019t.") == ()
    assert words(speller.check("We dont know.")) == ["dont"]
    assert words(speller.check("The custommer's order.")) == ["custommer's"]


def test_custom_words_do_not_leak_between_spellers(speller):
    assert words(Speller("en").check("The zyloflex unit.")) == ["zyloflex"]
    assert speller.check("The zyloflex unit.") == ()


def test_german():
    german = Speller("de")
    text = "Ich habe die Rechnung nicht erhalten, bitte schiken Sie sie nochmal. Danke und schöne Grüße!"
    (suspect,) = german.check(text)
    assert suspect.word == "schiken"
    assert "schicken" in suspect.suggestions


def test_french_elisions_are_words():
    text = "Bonjour, l'ordinateur qu'il a acheté est arrivé aujourd'hui. Merci de votre pacience."
    assert [(s.word, s.suggestions[0]) for s in Speller("fr").check(text)] == [("pacience", "patience")]


def test_regional_language_tags_use_the_language_dictionary():
    assert Speller("de-AT").language == "de"
    assert Speller("EN_gb").language == "en"


@pytest.mark.parametrize("language", ["xx", "klingon", ""])
def test_unknown_language_names_it_and_the_supported_ones(language):
    with pytest.raises(ValueError) as info:
        Speller(language)
    assert repr(language) in str(info.value)
    assert "de, en, es" in str(info.value)


def test_report_lists_each_word_with_its_suggestions():
    suspects = (Suspect("recieve", ("receive", "relieve")), Suspect("qzxj", ()))
    assert report(suspects) == "recieve -> receive, relieve\nqzxj -> (no suggestions)"
    assert report(()) == ""
