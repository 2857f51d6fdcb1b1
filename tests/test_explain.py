"""Plain-language explanations of SMTP replies (postroom.explain)."""

from __future__ import annotations

import re

import pytest

from postroom import explain

# (basic code, enhanced code or None, reply text, words the explanation
# must contain). Words rather than whole sentences, so rewording a
# table entry does not break the test but answering the wrong entry does.
CASES = [
    (211, None, "System status", ["status"]),
    (214, None, "See RFC 5321", ["Help"]),
    (220, None, "mx.example.test ESMTP", ["ready"]),
    (221, "2.0.0", "Bye", ["closing"]),
    (235, "2.7.0", "Authentication successful", ["Authentication succeeded"]),
    (250, "2.0.0", "OK queued as ABC", ["accepted"]),
    (250, "2.1.5", "Recipient OK", ["Success", "recipient address is valid"]),
    (251, None, "User not local; will forward", ["forward"]),
    (252, "2.1.5", "Cannot VRFY", ["Success"]),
    (334, None, "VXNlcm5hbWU6", ["AUTH"]),
    (354, None, "End data with <CR><LF>.<CR><LF>", ["dot"]),
    (421, "4.3.2", "Shutting down", ["not taking network mail",
                                     "temporary"]),
    (421, None, "Service not available", ["closing the connection",
                                          "retry later"]),
    (450, "4.2.0", "Mailbox busy", ["recipient's mailbox", "temporary"]),
    (450, None, "Greylisted", ["greylisting"]),
    (451, "4.4.3", "DNS lookup failed", ["DNS", "temporary"]),
    (452, "4.5.3", "Too many recipients", ["too many recipients",
                                           "temporary"]),
    (455, None, "Cannot accommodate", ["parameters"]),
    (500, "5.5.2", "Syntax error", ["syntax error"]),
    (501, None, "Bad address syntax", ["syntax error"]),
    (502, "5.5.1", "Command not implemented", ["unknown or not allowed"]),
    (503, "5.5.1", "Bad sequence", ["unknown or not allowed"]),
    (503, None, "Bad sequence of commands", ["wrong order"]),
    (504, None, "Unrecognized authentication type", ["not implemented"]),
    (521, None, "No mail here", ["does not accept mail"]),
    (530, "5.7.0", "Authentication required", ["security or policy"]),
    (530, None, "Authentication required", ["AUTH"]),
    (535, "5.7.8", "Bad credentials", ["credentials were rejected"]),
    (550, "5.1.1", "No such user", ["does not exist", "typos"]),
    (550, "5.1.10", "Null MX", ["null MX"]),
    (550, "5.7.26", "DMARC failed", ["DKIM", "DMARC"]),
    (550, None, "mailbox unavailable", ["mailbox is unavailable"]),
    (551, None, "User not local", ["not local"]),
    (552, "5.3.4", "Message too big", ["larger than", "SIZE"]),
    (553, "5.1.3", "Bad recipient syntax", ["invalid syntax"]),
    (554, "5.7.1", "Spam", ["not authorized"]),
    (554, None, "No SMTP service here", ["transaction failed"]),
    (556, None, "Domain takes no mail", ["does not accept mail"]),
]


@pytest.mark.parametrize(("code", "enhanced", "text", "words"), CASES)
def test_explains_common_replies(code: int, enhanced: str | None, text: str,
                                 words: list[str]) -> None:
    result = explain.explain(code, enhanced, text)
    for word in words:
        assert word.lower() in result.lower(), (word, result)


def test_relay_denied_example_reads_as_documented() -> None:
    assert explain.explain(550, "5.7.1", "Relaying denied") == (
        "Delivery not authorized (policy), e.g. relaying denied: "
        "authenticate (AUTH) or send only to the server's own domains.")


def test_enhanced_code_is_read_from_text_when_not_given() -> None:
    assert explain.explain(550, None, "5.1.1 <x@example.test>: no user") == (
        explain.explain(550, "5.1.1", "<x@example.test>: no user"))


def test_temporary_class_is_stated_for_4xx_detail() -> None:
    permanent = explain.explain(550, "5.2.2", "Mailbox full")
    temporary = explain.explain(452, "4.2.2", "Mailbox full")
    assert "temporary" not in permanent
    assert temporary.startswith(permanent)
    assert "temporary" in temporary


def test_basic_code_class_wins_over_mismatched_enhanced_class() -> None:
    # RFC 2034 §4: the classes must agree; when a server gets it wrong
    # the basic code is what the client acts on.
    assert "temporary" in explain.explain(450, "5.2.2", "Mailbox full")


def test_success_with_x00_falls_back_to_basic_code() -> None:
    assert explain.explain(250, "2.0.0", "Ok") == "The command was accepted."


ALL_DETAILS = sorted(explain.DETAILS)


@pytest.mark.parametrize(("subject", "detail"), ALL_DETAILS)
@pytest.mark.parametrize("klass", [2, 4, 5])
def test_every_enhanced_code_renders(klass: int, subject: int,
                                     detail: int) -> None:
    code = {2: 250, 4: 450, 5: 550}[klass]
    result = explain.explain(code, f"{klass}.{subject}.{detail}", "text")
    assert result.endswith(".")
    assert "\n" not in result
    assert len(re.findall(r"\.\s+[A-Z]", result)) <= 1  # one or two sentences
    if klass != 2 and detail != 0:
        entry = explain.DETAILS[(subject, detail)]
        assert entry.what in result


def test_table_covers_the_registered_ranges() -> None:
    last_detail = {0: 0, 1: 10, 2: 4, 3: 6, 4: 7, 5: 6, 6: 10, 7: 30}
    expected = {(s, d) for s, top in last_detail.items()
                for d in range(top + 1)}
    assert set(explain.DETAILS) == expected


def test_every_basic_code_has_an_entry() -> None:
    rfc5321 = {211, 214, 220, 221, 250, 251, 252, 354, 421, 450, 451, 452,
               455, 500, 501, 502, 503, 504, 550, 551, 552, 553, 554, 555}
    others = {235, 334, 432, 454, 521, 530, 534, 535, 538, 556}
    assert rfc5321 | others <= set(explain.BASIC)


def test_failure_entries_say_what_to_do() -> None:
    for code, meaning in explain.BASIC.items():
        if code >= 400:
            assert meaning.todo, code


@pytest.mark.parametrize(("code", "enhanced", "words"), [
    (559, None, ["Non-standard", "permanent", "mail system"]),
    (459, None, ["Non-standard", "temporary"]),
    (501, "5.9.99", ["syntax error"]),          # unknown detail, known code
    (558, "5.7.99", ["security or policy"]),    # unknown detail and code
    (458, "4.1.77", ["address", "temporary"]),
    (299, None, ["Non-standard", "accepted"]),
    (999, None, ["not a valid SMTP reply code"]),
    (100, None, ["not a valid SMTP reply code"]),
])
def test_unknown_codes_fall_back_by_class(code: int, enhanced: str | None,
                                          words: list[str]) -> None:
    result = explain.explain(code, enhanced, "whatever")
    for word in words:
        assert word.lower() in result.lower(), (word, result)


@pytest.mark.parametrize(("text", "expected"), [
    ("5.7.1 Relaying denied", ("5.7.1", "Relaying denied")),
    ("4.2.2\tMailbox full", ("4.2.2", "Mailbox full")),
    ("2.0.0", ("2.0.0", "")),
    ("5.1.10 Null MX", ("5.1.10", "Null MX")),
    ("Relaying denied", (None, "Relaying denied")),
    ("3.0.0 not a class", (None, "3.0.0 not a class")),
    ("5.7.1.2 too many parts", (None, "5.7.1.2 too many parts")),
    ("5.7.1Relaying", (None, "5.7.1Relaying")),
    ("", (None, "")),
])
def test_parse_enhanced(text: str, expected: tuple[str | None, str]) -> None:
    assert explain.parse_enhanced(text) == expected


@pytest.mark.parametrize(("line", "expected"), [
    ("550 5.1.1 No such user", (550, "5.1.1", "No such user")),
    ("250-PIPELINING", (250, None, "PIPELINING")),
    ("250 2.0.0 Ok\r\n", (250, "2.0.0", "Ok")),
    ("354", (354, None, "")),
    ("hello", None),
    ("55 short", None),
    ("550x5.1.1", None),
])
def test_parse_reply_line(line: str,
                          expected: tuple[int, str | None, str] | None) -> None:
    assert explain.parse_reply_line(line) == expected


def test_enhanced_code_round_trips() -> None:
    code = explain.EnhancedCode.parse(" 5.7.30 ")
    assert code == explain.EnhancedCode(5, 7, 30)
    assert str(code) == "5.7.30"
    assert explain.EnhancedCode.parse("5.7") is None
