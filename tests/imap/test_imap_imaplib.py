"""IMAP end to end: Python's imaplib against a real ``postroom serve``.

One node serves the module; each test logs in as its own user, whose
INBOX it fills through the mailbox API as local delivery would (or,
where the point is delivery, over SMTP). Bodies must come back byte
for byte; changes made by one session must reach another.
"""

from __future__ import annotations

import imaplib
import itertools
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from postroom.mailbox.store import MailStore
from postroom.testing.process import IMAP_KINDS, KINDS, LOOPBACK, PostroomProcess

PASSWORD = "imap secret"
_users = itertools.count(1)

# Messages that tempt a server to change them: a final line without
# CRLF, 8-bit text, a long line, an empty body, a MIME tree.
MESSAGES = [
    b"From: a@example.org\r\nSubject: one\r\n\r\nHello.\r\n",
    b"Subject: dots\r\n\r\n.\r\n..\r\n.leading dot\r\nno final newline",
    b"Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    + "Grüße, naïve café\r\n".encode()
    + b"x" * 5000
    + b"\r\n",
    b"Subject: empty body\r\n\r\n",
    b"From: b@example.org\r\nSubject: mime\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
    b"--b1\r\nContent-Type: text/plain\r\n\r\npart one\r\n"
    b"--b1\r\nContent-Type: text/html\r\n\r\n<p>part two</p>\r\n--b1--\r\n",
]


@pytest.fixture(scope="module")
def node(
    module_postroom_factory: Callable[..., PostroomProcess],
) -> PostroomProcess:
    return module_postroom_factory(kinds=KINDS + IMAP_KINDS)


def new_user(node: PostroomProcess, messages: Sequence[bytes] = ()) -> str:
    """A fresh account whose INBOX holds *messages*, in that order."""
    user = f"imap{next(_users)}@postroom.test"
    node.add_user(user, PASSWORD)
    with MailStore(node.data_dir / "mailboxes").open(user) as inbox:
        for data in messages:
            inbox.append(data)
    return user


def login(node: PostroomProcess, user: str) -> imaplib.IMAP4:
    client = imaplib.IMAP4(LOOPBACK, node.imap_port, timeout=10)
    client.login(user, PASSWORD)
    return client


def ok(result: tuple[str, list]) -> list:  # type: ignore[type-arg]
    status, data = result
    assert status == "OK", data
    return data


def bodies(data: list) -> list[bytes]:  # type: ignore[type-arg]
    """The literals of a FETCH response, in order."""
    return [item[1] for item in data if isinstance(item, tuple)]


def code(client: imaplib.IMAP4, name: str) -> str:
    """The value of a response code from the last tagged OK."""
    value = client.untagged_responses.get(name)
    assert value, f"no {name} in {client.untagged_responses}"
    return value[-1].decode()


# ----------------------------------------------------------------------
# Bodies


def test_fetch_returns_every_byte(node: PostroomProcess) -> None:
    user = new_user(node, MESSAGES)
    client = login(node, user)

    exists = int(ok(client.select("INBOX"))[0])
    got = bodies(ok(client.fetch("1:*", "(BODY.PEEK[])")))
    rfc822 = bodies(ok(client.uid("FETCH", "1:*", "(RFC822)")))
    sizes = ok(client.fetch("1:*", "(RFC822.SIZE)"))
    client.logout()

    assert exists == len(MESSAGES)
    assert got == MESSAGES
    assert rfc822 == MESSAGES
    assert re.findall(rb"RFC822.SIZE (\d+)", b" ".join(sizes)) == [
        b"%d" % len(m) for m in MESSAGES
    ]


def test_partial_fetch_and_sections(node: PostroomProcess) -> None:
    user = new_user(node, MESSAGES)
    client = login(node, user)
    ok(client.select("INBOX"))

    partial = bodies(ok(client.fetch("3", "(BODY.PEEK[]<10.20>)")))
    beyond = bodies(ok(client.fetch("1", "(BODY.PEEK[]<1000.5>)")))
    header = bodies(ok(client.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")))
    part2 = bodies(ok(client.fetch("5", "(BODY.PEEK[2])")))
    structure = ok(client.fetch("5", "(BODYSTRUCTURE)"))[0]
    client.logout()

    assert partial == [MESSAGES[2][10:30]]
    assert beyond == [b""]
    assert header == [b"Subject: one\r\n\r\n"]
    assert part2 == [b"<p>part two</p>"]
    assert b'"MIXED"' in structure.upper()


def test_imaps_is_tls_from_the_first_byte(node: PostroomProcess) -> None:
    user = new_user(node, MESSAGES[:2])
    client = imaplib.IMAP4_SSL(
        LOOPBACK, node.imaps_port, ssl_context=node.client_context(), timeout=10
    )
    client.login(user, PASSWORD)
    ok(client.select("INBOX"))
    got = bodies(ok(client.fetch("1:2", "(BODY.PEEK[])")))
    client.logout()

    assert got == MESSAGES[:2]


def test_starttls_then_login(node: PostroomProcess) -> None:
    user = new_user(node, MESSAGES[:1])
    client = imaplib.IMAP4(LOOPBACK, node.imap_port, timeout=10)

    before = client.capabilities
    client.starttls(node.client_context())
    after = client.capabilities
    client.login(user, PASSWORD)
    ok(client.select("INBOX"))
    got = bodies(ok(client.fetch("1", "(BODY.PEEK[])")))
    client.logout()

    assert "STARTTLS" in before and "STARTTLS" not in after
    assert got == MESSAGES[:1]


def test_commands_pipelined_after_starttls_are_dropped(
    node: PostroomProcess,
) -> None:
    # CVE-2011-0411: cleartext sent behind STARTTLS must not be run
    # as if it had come through TLS.
    raw = socket.create_connection((LOOPBACK, node.imap_port), timeout=10)
    lines = raw.makefile("rb")
    assert lines.readline().startswith(b"* OK")
    raw.sendall(b"t1 STARTTLS\r\nt2 LOGOUT\r\n")
    assert lines.readline().startswith(b"t1 OK")
    tls = node.client_context().wrap_socket(raw, server_hostname="localhost")
    tls_lines = tls.makefile("rb")
    tls.sendall(b"t3 NOOP\r\n")
    answer = tls_lines.readline()
    tls.close()

    assert answer.startswith(b"t3 OK"), answer


def test_wrong_password_is_refused(node: PostroomProcess) -> None:
    user = new_user(node)
    client = imaplib.IMAP4(LOOPBACK, node.imap_port, timeout=10)

    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        client.login(user, "wrong")
    client.login(user, PASSWORD)
    client.logout()


def test_authenticate_plain(node: PostroomProcess) -> None:
    user = new_user(node, MESSAGES[:1])
    client = imaplib.IMAP4(LOOPBACK, node.imap_port, timeout=10)

    client.authenticate("PLAIN", lambda _challenge: f"\0{user}\0{PASSWORD}".encode())
    exists = int(ok(client.select("INBOX"))[0])
    client.logout()

    assert exists == 1


# ----------------------------------------------------------------------
# Flags and other sessions


def test_body_fetch_sets_seen_and_peek_does_not(node: PostroomProcess) -> None:
    user = new_user(node, MESSAGES[:2])
    client = login(node, user)
    ok(client.select("INBOX"))

    ok(client.fetch("1", "(BODY.PEEK[])"))
    answer = ok(client.fetch("2", "(BODY[])"))
    flags = ok(client.fetch("1:2", "(FLAGS)"))
    client.logout()

    assert b"\\Seen" in b"".join(
        part if isinstance(part, bytes) else part[0] for part in answer
    )
    assert b"\\Seen" not in flags[0] and b"\\Seen" in flags[1]


def test_flags_persist_across_sessions(node: PostroomProcess) -> None:
    user = new_user(node, MESSAGES[:3])
    first = login(node, user)
    ok(first.select("INBOX"))
    ok(first.store("1", "+FLAGS", "(\\Flagged $Important)"))
    ok(first.uid("STORE", "2", "+FLAGS.SILENT", "(\\Answered)"))
    first.logout()

    second = login(node, user)
    ok(second.select("INBOX"))
    flags = ok(second.fetch("1:3", "(FLAGS)"))
    second.logout()

    assert b"\\Flagged" in flags[0] and b"$Important" in flags[0]
    assert b"\\Answered" in flags[1]
    assert b"\\Flagged" not in flags[2]


def test_two_sessions_see_each_others_changes(node: PostroomProcess) -> None:
    user = new_user(node, MESSAGES[:3])
    one, two = login(node, user), login(node, user)
    ok(one.select("INBOX"))
    ok(two.select("INBOX"))

    # FLAGS: one flags message 2; two hears of it at NOOP.
    ok(one.store("2", "+FLAGS", "(\\Flagged)"))
    ok(two.noop())
    fetched = two.untagged_responses.pop("FETCH", [])

    # EXPUNGE: one deletes message 1; two hears of it.
    ok(one.store("1", "+FLAGS", "(\\Deleted)"))
    ok(one.expunge())
    ok(two.noop())
    expunged = two.untagged_responses.pop("EXPUNGE", [])

    # EXISTS: one appends; two hears of it.
    ok(one.append("INBOX", None, None, MESSAGES[0]))
    ok(two.noop())
    exists = two.untagged_responses.pop("EXISTS", [])
    last = bodies(ok(two.fetch("3", "(BODY.PEEK[])")))
    one.logout()
    two.logout()

    assert any(b"\\Flagged" in f for f in fetched)
    assert expunged == [b"1"]
    assert exists[-1] == b"3"
    assert last == [MESSAGES[0]]


def test_idle_wakes_on_append_by_another_session(node: PostroomProcess) -> None:
    user = new_user(node, MESSAGES[:1])
    watcher = raw_login(node, user)
    watcher.command(b"a1 SELECT INBOX")
    watcher.send(b"a2 IDLE\r\n")
    assert watcher.line().startswith(b"+ ")

    other = login(node, user)
    started = time.monotonic()
    ok(other.append("INBOX", None, None, MESSAGES[1]))
    news = watcher.line()
    waited = time.monotonic() - started
    done = watcher.command(b"DONE", tag=b"a2")
    other.logout()
    watcher.close()

    assert done[-1].startswith(b"a2 OK")

    assert news == b"* 2 EXISTS\r\n"
    assert waited < 1.5, waited


def test_examine_is_read_only(node: PostroomProcess) -> None:
    user = new_user(node, MESSAGES[:1])
    client = login(node, user)

    ok(client.select("INBOX", readonly=True))
    ok(client.fetch("1", "(BODY[])"))
    refused = client.store("1", "+FLAGS", "(\\Flagged)")
    ok(client.select("INBOX"))
    flags = ok(client.fetch("1", "(FLAGS)"))
    client.logout()

    assert refused[0] == "NO"
    assert b"\\Seen" not in flags[0]


def test_close_and_uid_expunge_remove_only_what_they_should(
    node: PostroomProcess,
) -> None:
    user = new_user(node, MESSAGES[:4])
    client = login(node, user)
    ok(client.select("INBOX"))

    ok(client.store("1:3", "+FLAGS.SILENT", "(\\Deleted)"))
    ok(client.uid("EXPUNGE", "2"))
    after_uid_expunge = ok(client.uid("SEARCH", "ALL"))[0]
    ok(client.close())
    ok(client.select("INBOX"))
    after_close = ok(client.uid("SEARCH", "ALL"))[0]
    client.logout()

    assert after_uid_expunge == b"1 3 4"
    assert after_close == b"4"


def test_too_many_keywords_is_refused(node: PostroomProcess) -> None:
    user = new_user(node, MESSAGES[:1])
    client = login(node, user)
    ok(client.select("INBOX"))

    many = " ".join(f"kw{n}" for n in range(30))
    status, data = client.store("1", "+FLAGS", f"({many})")
    flags = ok(client.fetch("1", "(FLAGS)"))
    client.logout()

    assert status == "NO" and b"[LIMIT]" in data[0]
    assert b"kw0" not in flags[0]


def test_rename_and_delete_folders(node: PostroomProcess) -> None:
    user = new_user(node)
    client = login(node, user)
    ok(client.create("Old.Child"))
    ok(client.append("Old.Child", None, None, MESSAGES[0]))

    ok(client.rename("Old", "New"))
    moved = ok(client.status("New.Child", "(MESSAGES)"))[0]
    gone = client.status("Old.Child", "(MESSAGES)")
    parent = client.delete("New")
    ok(client.delete("New.Child"))
    ok(client.delete("New"))
    again = client.delete("New")
    exists = client.create("Sent")
    names = b"\n".join(ok(client.list()))
    client.logout()

    assert b"MESSAGES 1" in moved
    assert gone[0] == "NO" and b"NONEXISTENT" in gone[1][0]
    assert parent[0] == "NO"
    assert again[0] == "NO" and b"NONEXISTENT" in again[1][0]
    assert exists[0] == "NO" and b"ALREADYEXISTS" in exists[1][0]
    assert b"New" not in names and b"Old" not in names


def test_selected_folder_deleted_elsewhere_ends_the_session(
    node: PostroomProcess,
) -> None:
    user = new_user(node)
    other = login(node, user)
    ok(other.create("Doomed"))
    watcher = raw_login(node, user)
    selected = watcher.command(b"s1 SELECT Doomed")

    ok(other.delete("Doomed"))
    answer = watcher.command(b"s2 NOOP")
    other.logout()
    watcher.close()

    assert selected[-1].startswith(b"s1 OK")
    # RFC 3501 §7.1.5: BYE, not a NO for every command from now on.
    assert answer[-1].startswith(b"* BYE"), answer


# ----------------------------------------------------------------------
# Mailboxes, APPEND, COPY, MOVE, SEARCH


def test_list_shows_special_use_folders(node: PostroomProcess) -> None:
    user = new_user(node)
    client = login(node, user)
    ok(client.create("Work.Projects"))

    listing = b"\n".join(ok(client.list()))
    special = b"\n".join(ok(list_special_use(client)))
    subscribed = b"\n".join(ok(client.lsub()))
    status = ok(client.status("INBOX", "(MESSAGES UIDNEXT UIDVALIDITY UNSEEN)"))
    client.logout()

    for name in (b"INBOX", b"Sent", b"Drafts", b"Trash", b"Junk", b"Work.Projects"):
        assert name in listing
    assert b"\\Sent" in special and b"\\Trash" in special
    assert b"Work" not in special
    assert b"Sent" in subscribed
    assert b"MESSAGES 0" in status[0]


def list_special_use(client: imaplib.IMAP4) -> Any:
    # imaplib has no LIST with selection options (RFC 6154 §5.1).
    raw: Any = client
    typ, data = raw._simple_command("LIST", "(SPECIAL-USE)", '""', '"*"')
    return raw._untagged_response(typ, data, "LIST")


def test_append_copy_move_report_uidplus(node: PostroomProcess) -> None:
    user = new_user(node)
    client = login(node, user)

    ok(client.append("INBOX", "(\\Seen)", None, MESSAGES[0]))
    appended = code(client, "APPENDUID")
    ok(client.append("INBOX", None, None, MESSAGES[1]))
    ok(client.select("INBOX"))
    ok(client.copy("1:2", "Trash"))
    copied = code(client, "COPYUID")
    ok(client.uid("MOVE", "1", "Junk"))
    moved = code(client, "COPYUID")
    left = int(ok(client.select("INBOX"))[0])
    junk = int(ok(client.select("Junk"))[0])
    trash = bodies(ok(client.select("Trash") and client.fetch("1:*", "(BODY.PEEK[])")))
    missing = client.copy("1", "Nowhere")
    client.logout()

    validity = appended.split()[0]
    assert appended == f"{validity} 1"
    assert copied.split()[1:] == ["1:2", "1:2"]
    assert moved.split()[1:] == ["1", "1"]
    assert (left, junk) == (1, 1)
    assert trash == MESSAGES[:2]
    assert missing[0] == "NO" and b"TRYCREATE" in missing[1][0]


def test_append_to_missing_mailbox_says_trycreate(node: PostroomProcess) -> None:
    user = new_user(node)
    client = login(node, user)

    status, data = client.append("Nowhere", None, None, MESSAGES[0])
    client.logout()

    assert status == "NO" and b"[TRYCREATE]" in data[0]


def test_search(node: PostroomProcess) -> None:
    user = new_user(node, MESSAGES)
    client = login(node, user)
    ok(client.select("INBOX"))
    ok(client.store("2", "+FLAGS", "(\\Flagged)"))

    subject = ok(client.search(None, "SUBJECT", "mime"))[0]
    flagged = ok(client.search(None, "FLAGGED"))[0]
    body = ok(client.uid("SEARCH", "CHARSET", "UTF-8", "BODY", '"part two"'))[0]
    unseen_large = ok(client.search(None, "UNSEEN", "LARGER", "1000"))[0]
    client.logout()

    assert subject == b"5"
    assert flagged == b"2"
    assert body == b"5"
    assert unseen_large == b"3"


def test_mailbox_names_cannot_escape(node: PostroomProcess) -> None:
    user = new_user(node)
    client = login(node, user)

    answers = [
        client.create(name) for name in ("../x", "/etc", "a..b", ".hidden", "a/b", "..")
    ]
    selects = [client.select(name)[0] for name in ("../INBOX", "/tmp", "..")]
    listing = b"\n".join(ok(client.list()))
    client.logout()

    assert all(status == "NO" for status, _ in answers), answers
    assert selects == ["NO", "NO", "NO"]
    assert b"etc" not in listing and b"x" not in listing.lower().replace(b"inbox", b"")
    outside = node.data_dir / "mailboxes"
    assert not any(p.name in ("x", "etc") for p in outside.rglob("*"))


def test_garbage_gets_bad_and_the_session_goes_on(node: PostroomProcess) -> None:
    user = new_user(node, MESSAGES[:1])
    conn = raw_login(node, user)

    answers = [
        conn.command(line)
        for line in (
            b"a1 FROB",
            b"a2 SELECT",
            b"\x00\xff\xfe",
            b"a3 FETCH 1 (BODY[",
            b"a4 UID FETCH x:y FLAGS",
        )
    ]
    final = conn.command(b"a5 SELECT INBOX")
    conn.close()

    for answer in answers:
        assert b" BAD " in answer[-1], answer
    assert final[-1].startswith(b"a5 OK")


def test_plaintext_login_refused_without_tls(
    postroom_factory: Callable[..., PostroomProcess],
) -> None:
    strict = postroom_factory(
        {"imap": {"loopback_is_secure": False}}, kinds=KINDS + IMAP_KINDS
    )
    user = new_user(strict, MESSAGES[:1])
    client = imaplib.IMAP4(LOOPBACK, strict.imap_port, timeout=10)

    before = client.capabilities
    with pytest.raises(imaplib.IMAP4.error, match=r"PRIVACYREQUIRED|disabled"):
        client.login(user, PASSWORD)
    client.starttls(strict.client_context())
    client.login(user, PASSWORD)
    exists = int(ok(client.select("INBOX"))[0])
    client.logout()

    assert "LOGINDISABLED" in before
    assert exists == 1


# ----------------------------------------------------------------------
# A raw connection, for what imaplib hides


class Raw:
    def __init__(self, sock: socket.socket | ssl.SSLSocket) -> None:
        self.sock = sock
        self.file = sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        return self.file.readline()

    def command(self, line: bytes, tag: bytes | None = None) -> list[bytes]:
        """Send *line*; the lines up to the tagged answer (or a BAD
        without tag, for garbage with no tag)."""
        self.send(line + b"\r\n")
        tag = tag or line.split(b" ", 1)[0]
        out = []
        while True:
            got = self.line()
            assert got, out
            out.append(got)
            if got.startswith((tag + b" ", b"* BAD", b"* BYE")):
                return out

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def raw_login(node: PostroomProcess, user: str) -> Raw:
    conn = Raw(socket.create_connection((LOOPBACK, node.imap_port), timeout=10))
    assert conn.line().startswith(b"* OK")
    answer = conn.command(f'l1 LOGIN "{user}" "{PASSWORD}"'.encode())
    assert answer[-1].startswith(b"l1 OK"), answer
    return conn


def test_many_sessions_on_one_mailbox_at_once(node: PostroomProcess) -> None:
    # Ten clients append, flag, fetch and expunge in one INBOX at the
    # same time, across the node's workers. Every command must succeed
    # (or be a clean NO), and at the end every session agrees.
    user = new_user(node, MESSAGES[:2])
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            client = login(node, user)
            for round_no in range(5):
                ok(client.append("INBOX", None, None, MESSAGES[n % len(MESSAGES)]))
                ok(client.select("INBOX"))
                # UID sets: "1:*" as a sequence set is BAD in a mailbox
                # that others have just emptied (RFC 9051 §6.4.8).
                ok(client.uid("STORE", "1:*", "+FLAGS", f"(kw{n % 3})"))
                ok(client.uid("FETCH", "1:*", "(FLAGS RFC822.SIZE)"))
                if round_no % 2:
                    ok(client.uid("STORE", "1:*", "+FLAGS", "(\\Deleted)"))
                    ok(client.expunge())
                ok(client.noop())
            client.logout()
        except BaseException as e:  # Reported below, with the others.
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    one, two = login(node, user), login(node, user)
    counts = [int(ok(c.select("INBOX"))[0]) for c in (one, two)]
    uids = [ok(c.uid("SEARCH", "ALL"))[0] for c in (one, two)]
    one.logout()
    two.logout()

    assert not errors, errors
    assert counts[0] == counts[1] and uids[0] == uids[1]
