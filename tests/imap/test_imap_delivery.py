"""IMAP and the rest of the node: mail delivered over SMTP, restarts.

These tests start nodes of their own: one delivers (the delivery
engine runs, so a message sent over SMTP lands in the Maildir from
another code path than the IMAP session's), one is restarted.
"""

from __future__ import annotations

import imaplib
import socket
import time
from collections.abc import Callable

from postroom.testing.process import IMAP_KINDS, KINDS, LOOPBACK, PostroomProcess
from postroom.testing.stage import INVITATION, open_stage, send

PASSWORD = "imap secret"
USER = "alice@postroom.test"


def test_idle_wakes_on_mail_delivered_over_smtp(
    postroom_factory: Callable[..., PostroomProcess],
) -> None:
    with open_stage() as stage:
        node = postroom_factory(stage.settings(), kinds=KINDS + IMAP_KINDS)
        node.add_user(USER, PASSWORD)
        sock = socket.create_connection((LOOPBACK, node.imap_port), timeout=20)
        lines = sock.makefile("rb")
        assert lines.readline().startswith(b"* OK")
        sock.sendall(f'a LOGIN {USER} "{PASSWORD}"\r\nb SELECT INBOX\r\n'.encode())
        while not lines.readline().startswith(b"b OK"):
            pass
        sock.sendall(b"c IDLE\r\n")
        assert lines.readline().startswith(b"+ ")

        sent = time.monotonic()
        send(node, [USER], INVITATION)
        news = lines.readline()
        waited = time.monotonic() - sent
        sock.sendall(b"DONE\r\nd UID FETCH 1 (BODY.PEEK[])\r\ne LOGOUT\r\n")
        rest = b""
        while chunk := sock.recv(65536):
            rest += chunk
        sock.close()

    assert news == b"* 1 EXISTS\r\n"
    # Queue, delivery and the IDLE poll, with a generous margin.
    assert waited < 10.0
    assert b"c OK" in rest and b"d OK" in rest
    assert INVITATION in rest


def test_flags_and_uids_survive_a_restart(
    postroom_factory: Callable[..., PostroomProcess],
) -> None:
    node = postroom_factory(kinds=KINDS + IMAP_KINDS)
    node.add_user(USER, PASSWORD)
    client = imaplib.IMAP4(LOOPBACK, node.imap_port, timeout=10)
    client.login(USER, PASSWORD)
    for n in range(3):
        client.append("INBOX", None, None, b"Subject: %d\r\n\r\nbody\r\n" % n)
    client.select("INBOX")
    client.store("2", "+FLAGS", "(\\Answered $Label1)")
    client.store("3", "+FLAGS", "(\\Deleted)")
    client.expunge()
    before = client.fetch("1:*", "(UID FLAGS)")[1]
    validity = client.status("INBOX", "(UIDVALIDITY UIDNEXT)")[1]
    client.logout()

    node.stop()
    node.start()

    client = imaplib.IMAP4(LOOPBACK, node.imap_port, timeout=10)
    client.login(USER, PASSWORD)
    client.select("INBOX")
    after = client.fetch("1:*", "(UID FLAGS)")[1]
    validity_after = client.status("INBOX", "(UIDVALIDITY UIDNEXT)")[1]
    client.logout()

    assert after == before
    assert b"$Label1" in after[1] and b"\\Answered" in after[1]
    assert validity_after == validity
    assert b"UIDNEXT 4" in validity_after[0]


def test_autologout_and_shutdown_say_bye(
    postroom_factory: Callable[..., PostroomProcess],
) -> None:
    node = postroom_factory({"imap": {"login_timeout": 1.0}}, kinds=KINDS + IMAP_KINDS)
    node.add_user(USER, PASSWORD)

    # Silence before login: the short timeout, with BYE (RFC 3501 §7.1.5).
    quiet = socket.create_connection((LOOPBACK, node.imap_port), timeout=10)
    quiet_lines = quiet.makefile("rb")
    assert quiet_lines.readline().startswith(b"* OK")
    started = time.monotonic()
    bye = quiet_lines.readline()
    waited = time.monotonic() - started
    quiet.close()

    # A session in IDLE when the node stops.
    idler = socket.create_connection((LOOPBACK, node.imap_port), timeout=10)
    lines = idler.makefile("rb")
    assert lines.readline().startswith(b"* OK")
    idler.sendall(
        f'a LOGIN {USER} "{PASSWORD}"\r\nb SELECT INBOX\r\nc IDLE\r\n'.encode()
    )
    while not lines.readline().startswith(b"+ "):
        pass
    # Longer than login_timeout: after login the 30-minute one applies.
    time.sleep(1.5)
    node.stop()
    farewell = lines.readline()
    idler.close()

    assert bye.startswith(b"* BYE")
    assert 0.5 < waited < 5.0
    assert farewell == b"* BYE [UNAVAILABLE] Server shutting down\r\n"
