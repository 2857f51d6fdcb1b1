"""Double opt-in end to end: a real ``postroom serve`` with the HTTP
API and delivery to the stage's fake providers. Contacts are imported
with the CLI, ``contacts verify`` queues the confirmation mails, they
arrive at the providers, and following each mail's link with httpx
makes the contact verified (and so eligible for campaigns)."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Callable, Iterator

import httpx
import pytest

from postroom.testing.process import KINDS, PostroomProcess
from postroom.testing.providers import FakeProvider
from postroom.testing.stage import ORGANISER, Stage, open_stage, wait_until

LINK = re.compile(r"http://127\.0\.0\.1:\d+/confirm/[A-Za-z0-9_\-.]+")


@pytest.fixture
def stage() -> Iterator[Stage]:
    with open_stage() as opened:
        yield opened


def delivered(provider: FakeProvider) -> list[bytes]:
    return [t.data for t in provider.transactions if t.accepted]


def statuses(node: PostroomProcess) -> dict[str, str]:
    listed = node.cli("contacts", "list")
    assert listed.returncode == 0, listed.stderr
    out = {}
    for line in listed.stdout.splitlines():
        _, status, address = line.split()[:3]
        out[address] = status
    return out


def test_confirmation_mail_arrives_and_its_link_verifies(
    stage: Stage, postroom_factory: Callable[..., PostroomProcess],
) -> None:
    settings = stage.settings()
    settings["campaigns"] = {"sender": ORGANISER, "sender_name": "Lumen Events"}
    node = postroom_factory(settings, start=False, kinds=(*KINDS, "http"))
    csv_file = node.root / "people.csv"
    csv_file.write_text(
        "email,first_name\n"
        "client01@gmail.test,Ada\n"
        "client02@outlook.test,Bo\n"
        "broken-address,X\n")
    assert node.cli("list", "create", "clients").returncode == 0
    imported = node.cli("contacts", "import", str(csv_file), "--list", "clients")
    assert imported.returncode == 1  # one row refused, the others in
    assert f"{csv_file}:4: email: not an email address" in imported.stderr
    assert "2 created, 0 updated, 1 refused" in imported.stdout
    node.start()

    asked = node.cli("contacts", "verify", "--list", "clients")
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout.startswith("2 confirmation mails queued")
    assert set(statuses(node).values()) == {"pending"}

    gmail = stage.providers["gmail.test"]
    outlook = stage.providers["outlook.test"]
    wait_until(lambda: len(delivered(gmail)) == 1 and len(delivered(outlook)) == 1)
    message = email.message_from_bytes(delivered(gmail)[0],
                                       policy=email.policy.default)
    assert message["From"] == f"Lumen Events <{ORGANISER}>"
    assert message["To"] == "client01@gmail.test"
    assert gmail.transactions[0].sender == ORGANISER
    text = message.get_body(("plain",))
    assert text is not None and "Hello Ada," in text.get_content()
    [link] = LINK.findall(text.get_content())
    assert link.startswith(node.http_url)

    # A changed link is refused; the real one confirms.
    assert httpx.get(link[:-3] + "xyz").status_code == 404
    page = httpx.get(link)
    assert page.status_code == 200, page.text
    assert "client01@gmail.test is confirmed" in page.text
    assert statuses(node) == {"client01@gmail.test": "verified",
                              "client02@outlook.test": "pending"}
    assert any("confirmed contact=" in line for line in node.log_text().splitlines())

    # Asking again skips the verified contact.
    again = node.cli("contacts", "verify", "client01@gmail.test")
    assert again.stdout.startswith("0 confirmation mails queued")
