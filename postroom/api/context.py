"""What endpoints need of the node, in one object on ``app.state.api``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy as sa

from postroom.api.inject import Submitter
from postroom.config import Config
from postroom.server.policy import RelayPolicy


@dataclass
class ApiContext:
    """*spool* takes the messages (the worker's ``Spool``); *policy* is
    the SMTP server's, for local recipients and aliases (None: every
    local address accepted, as in tests of the API alone); *listener*
    names us in envelopes and logs (``http:8025``); *clock* is
    ``time.time`` unless a test fixes it."""

    config: Config
    engine: sa.Engine
    spool: Submitter
    policy: RelayPolicy | None = None
    listener: str = "http"
    clock: Callable[[], float] = field(default=time.time)
