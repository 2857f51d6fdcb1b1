"""The v3 Mail Send request as pydantic models: shapes and per-field
rules only.

What a field must look like on its own (types, lengths, an address's
syntax, a header's name) is checked here, so pydantic reports it with
its path (``personalizations.0.to.0.email``). Rules that relate fields
to each other or to the node's limits (a subject somewhere, unique
recipients, totals, send_at in range) are in ``checks.py``.

Unknown keys are refused (``extra="forbid"``) where we model every key
SendGrid documents: a misspelt ``persnalizations`` should be a 400
naming it, not a mail sent without what the caller meant. The
settings objects we only store (``mail_settings`` other than
``sandbox_mode``, ``tracking_settings``, ``asm``) take any keys.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from postroom.protocol.smtp import replies
from postroom.protocol.smtp.syntax import SyntaxProblem, parse_path

# RFC 5322 §3.6.8: a field name is printable ASCII but the colon.
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]{1,76}")
# "type/subtype" without parameters (content[].type, attachments[].type).
_MIME_TYPE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}"
)
# Headers a caller may not set: we write them, or they would lie
# about the message (SendGrid refuses the same list).
RESERVED_HEADERS = frozenset(
    {
        "x-sg-id",
        "x-sg-eid",
        "received",
        "dkim-signature",
        "content-type",
        "content-transfer-encoding",
        "to",
        "from",
        "subject",
        "reply-to",
        "cc",
        "bcc",
        "mime-version",
    }
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


def _no_line_breaks(value: str) -> str:
    # Everything that ends up in a header: a CR or LF would let the
    # caller start a header (or the body) of their own.
    if "\r" in value or "\n" in value or "\x00" in value:
        raise ValueError("must not contain line breaks or NUL")
    return value


class EmailAddress(_Strict):
    email: Annotated[str, Field(max_length=254)]
    name: Annotated[str, Field(max_length=320)] | None = None

    @field_validator("email")
    @classmethod
    def _address(cls, value: str) -> str:
        _no_line_breaks(value)
        try:
            address, rest = parse_path(
                f"<{value}>", null_ok=False, bad=replies.RCPT_SYNTAX
            )
        except SyntaxProblem:
            raise ValueError("does not contain a valid address") from None
        if rest or not address.domain or address.domain.startswith("["):
            raise ValueError("does not contain a valid address")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return None if value is None else _no_line_breaks(value)


Headers = dict[str, str]
StringMap = dict[str, str]


def check_headers(value: Headers) -> Headers:
    for name, text in value.items():
        if not _FIELD_NAME.fullmatch(name):
            raise ValueError(f"header name {name!r} is not a valid field name")
        if name.lower() in RESERVED_HEADERS:
            raise ValueError(f"header {name!r} is reserved and cannot be set")
        _no_line_breaks(text)
    return value


class Personalization(_Strict):
    to: Annotated[list[EmailAddress], Field(min_length=1, max_length=1000)]
    cc: Annotated[list[EmailAddress], Field(max_length=1000)] | None = None
    bcc: Annotated[list[EmailAddress], Field(max_length=1000)] | None = None
    from_: EmailAddress | None = Field(default=None, alias="from")
    subject: Annotated[str, Field(min_length=1, max_length=998)] | None = None
    headers: Headers | None = None
    substitutions: StringMap | None = None
    dynamic_template_data: dict[str, Any] | None = None
    custom_args: StringMap | None = None
    send_at: Annotated[int, Field(ge=0)] | None = None

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: Headers | None) -> Headers | None:
        return None if value is None else check_headers(value)

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str | None) -> str | None:
        return None if value is None else _no_line_breaks(value)


class Content(_Strict):
    type: str
    value: Annotated[str, Field(min_length=1)]

    @field_validator("type")
    @classmethod
    def _type(cls, value: str) -> str:
        if not _MIME_TYPE.fullmatch(value) or not value.lower().startswith("text/"):
            raise ValueError("must be a text/* MIME type such as text/plain")
        return value.lower()


class Attachment(_Strict):
    content: Annotated[str, Field(min_length=1)]
    filename: Annotated[str, Field(min_length=1, max_length=255)]
    type: str | None = None
    disposition: Literal["attachment", "inline"] = "attachment"
    content_id: Annotated[str, Field(min_length=1, max_length=255)] | None = None

    @field_validator("content")
    @classmethod
    def _base64(cls, value: str) -> str:
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("must be base64 encoded") from None
        return value

    @field_validator("type")
    @classmethod
    def _type(cls, value: str | None) -> str | None:
        if value is not None and not _MIME_TYPE.fullmatch(value):
            raise ValueError("must be a MIME type such as image/png")
        return value

    @field_validator("filename", "content_id")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        return None if value is None else _no_line_breaks(value)

    def data(self) -> bytes:
        return base64.b64decode(self.content)


class Setting(BaseModel):
    """An on/off setting; other keys are kept as given."""

    model_config = ConfigDict(extra="allow")
    enable: bool = False


class MailSettings(BaseModel):
    model_config = ConfigDict(extra="allow")
    sandbox_mode: Setting | None = None


class MailSend(_Strict):
    """The body of ``POST /v3/mail/send``."""

    personalizations: Annotated[list[Personalization], Field(min_length=1)]
    from_: EmailAddress = Field(alias="from")
    reply_to: EmailAddress | None = None
    reply_to_list: Annotated[list[EmailAddress], Field(max_length=1000)] | None = None
    subject: Annotated[str, Field(min_length=1, max_length=998)] | None = None
    content: list[Content] | None = None
    attachments: list[Attachment] | None = None
    template_id: str | None = None
    sections: StringMap | None = None
    headers: Headers | None = None
    categories: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=255)]],
        Field(max_length=10),
    ] | None = None
    custom_args: StringMap | None = None
    send_at: Annotated[int, Field(ge=0)] | None = None
    batch_id: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    asm: dict[str, Any] | None = None
    ip_pool_name: Annotated[str, Field(min_length=2, max_length=64)] | None = None
    mail_settings: MailSettings | None = None
    tracking_settings: dict[str, Any] | None = None

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: Headers | None) -> Headers | None:
        return None if value is None else check_headers(value)

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str | None) -> str | None:
        return None if value is None else _no_line_breaks(value)

    @property
    def sandbox(self) -> bool:
        mode = self.mail_settings.sandbox_mode if self.mail_settings else None
        return bool(mode and mode.enable)
