"""A private Dovecot instance on loopback: the yardstick for our POP3 and
IMAP servers, started the same way by benchmarks and tests.

It follows the rules of ``peers``: every socket on 127.0.0.1, a process
group of its own stopped by PID, a bounded life (``timeout``), no name
resolved. Its whole world lives under one root directory:

    ROOT/etc/dovecot.conf   the configuration written here
    ROOT/etc/passwd         users and plain-text passwords (test data)
    ROOT/run, ROOT/state    Dovecot's sockets and state
    ROOT/home/USER/Maildir  each user's mail, owned by ``mail``
    ROOT/dovecot.log        everything Dovecot logs

Dovecot's master must start as root; mail is read by processes that run
as the ``mail`` account (uid 8 on Debian), so ``ROOT`` must be
searchable by others (``peers.make_root`` makes such a directory) and
the Maildirs are handed to ``mail`` with ``chown_tree``.

Dovecot is installed by ``scripts/install-peers.sh`` (packages
dovecot-imapd and dovecot-pop3d, which ``make peers`` installs with
their system service kept from starting).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from postroom.testing import peers

MAIL_USER = "mail"


def dovecot_available() -> bool:
    return shutil.which("dovecot", path="/usr/sbin:/usr/bin") is not None


@dataclass
class DovecotInstance:
    root: Path
    imap_port: int
    pop3_port: int
    daemon: peers.Daemon

    def maildir(self, user: str) -> Path:
        return self.root / "home" / user / "Maildir"

    def stop(self) -> None:
        self.daemon.stop()


def _config(root: Path, imap_port: int, pop3_port: int) -> str:
    mail = pwd.getpwnam(MAIL_USER)
    # Plain text on loopback, no TLS: both servers are measured doing
    # the same work (Postroom's side allows plain logins in the bench
    # configuration too).
    return f"""\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = {mail.pw_uid}
first_valid_gid = {mail.pw_gid}
mail_location = maildir:~/Maildir
pop3_uidl_format = %08Xu%08Xv
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/etc/passwd
}}
userdb {{
  driver = static
  args = uid={mail.pw_uid} gid={mail.pw_gid} home={root}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
"""


def chown_tree(path: Path) -> None:
    """Hand *path* and everything under it to the mail account."""
    mail = pwd.getpwnam(MAIL_USER)
    for directory, _dirs, files in os.walk(path):
        os.chown(directory, mail.pw_uid, mail.pw_gid)
        for name in files:
            os.chown(os.path.join(directory, name), mail.pw_uid, mail.pw_gid)


def wait_for_greeting(
    port: int, prefix: bytes, timeout: float, daemon: peers.Daemon | None = None
) -> None:
    """Poll 127.0.0.1:PORT until a server greets with *prefix* (``* OK``
    for IMAP, ``+OK`` for POP3); ``PeerError`` after *timeout* seconds
    or as soon as *daemon* has exited."""
    deadline = time.monotonic() + timeout
    while True:
        if daemon is not None and daemon.process.poll() is not None:
            raise peers.PeerError(f"{daemon.name} exited{daemon.log_tail()}")
        try:
            with socket.create_connection((peers.LOOPBACK, port), timeout=2.0) as s:
                if s.makefile("rb").readline().startswith(prefix):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise peers.PeerError(f"no greeting on port {port} within {timeout:g}s")
        time.sleep(0.05)


def start_dovecot(
    root: Path,
    users: dict[str, str],
    *,
    imap_port: int | None = None,
    pop3_port: int | None = None,
    lifetime: float = 1800.0,
    ready_timeout: float = 20.0,
) -> DovecotInstance:
    """Start Dovecot for *users* (name -> password) under *root*.

    Put mail into ``instance.maildir(user)`` (``new/`` or ``cur/``) and
    call ``chown_tree`` on it before a client reads it. Raises
    ``PeerError`` if Dovecot is missing, we are not root, or it does
    not greet in time.
    """
    if not dovecot_available():
        raise peers.PeerError("Dovecot is not installed (scripts/install-peers.sh)")
    if os.geteuid() != 0:
        raise peers.PeerError("a private Dovecot instance needs root")
    imap_port = imap_port or peers.free_port()
    pop3_port = pop3_port or peers.free_port()
    for sub in ("etc", "run", "state", "home"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "etc" / "dovecot.conf").write_text(_config(root, imap_port, pop3_port))
    (root / "etc" / "passwd").write_text(
        "".join(f"{user}:{password}\n" for user, password in users.items())
    )
    for user in users:
        for sub in ("new", "cur", "tmp"):
            (root / "home" / user / "Maildir" / sub).mkdir(parents=True, exist_ok=True)
    chown_tree(root / "home")

    # -F: stay in the foreground, so that the daemon is our child.
    check = subprocess.run(
        ["dovecot", "-c", str(root / "etc" / "dovecot.conf"), "-n"],
        capture_output=True, text=True, timeout=30,
    )
    if check.returncode != 0:
        raise peers.PeerError(f"dovecot rejects its configuration: {check.stderr}")
    daemon = peers.start_daemon(
        "dovecot",
        ["dovecot", "-F", "-c", str(root / "etc" / "dovecot.conf")],
        log_path=root / "dovecot.out",
        lifetime=lifetime,
    )
    instance = DovecotInstance(root, imap_port, pop3_port, daemon)
    try:
        wait_for_greeting(imap_port, b"* OK", ready_timeout, daemon)
        wait_for_greeting(pop3_port, b"+OK", ready_timeout, daemon)
    except peers.PeerError as e:
        daemon.stop()
        log = root / "dovecot.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise peers.PeerError(f"{e}\n{tail}") from None
    return instance
