"""The database engine and the shared SQLAlchemy metadata.

Each area of the product declares its tables in its own module against
``metadata`` below (``store/queue.py``, ``store/users.py``, ...), and
``create_engine`` makes sure they exist.

SQLite is the embedded default. It runs in WAL mode with
``synchronous=NORMAL``: a commit survives a crash of our process (the WAL
is in the OS page cache) but not a power loss. That is enough because
the spool journal, which *is* fsync'd before every 250 reply, is the
source of truth for accepted messages, and the recovery scan re-creates
any queue row a power loss took away (see ``queue/spool.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa

from postroom.errors import ConfigError

metadata = sa.MetaData()


def create_engine(url: str) -> sa.Engine:
    """Open *url* and create missing tables.

    XXX: tables are created with ``metadata.create_all`` rather than
    migrations because no schema has been released yet; Alembic comes with
    the first change to a released table (docs/known-issues.md).
    """
    # Import the table modules so that their tables join ``metadata``.
    from postroom.store import aliases as _aliases  # noqa: F401
    from postroom.store import api_keys as _api_keys  # noqa: F401
    from postroom.store import contacts as _contacts  # noqa: F401
    from postroom.store import events as _events  # noqa: F401
    from postroom.store import queue as _queue  # noqa: F401
    from postroom.store import suppressions as _suppressions  # noqa: F401
    from postroom.store import templates as _templates  # noqa: F401
    from postroom.store import users as _users  # noqa: F401
    from postroom.store import webhooks as _webhooks  # noqa: F401

    kwargs: dict[str, Any] = {}
    database = sa.engine.make_url(url).database
    if url.startswith("sqlite") and database and database != ":memory:":
        # A first command (say, ``user add``) may run before any server
        # has made the data directory.
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
    engine = sa.create_engine(url, **kwargs)
    if url.startswith("sqlite"):
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    metadata.create_all(engine)
    _check_columns(engine, url)
    return engine


def _check_columns(engine: sa.Engine, url: str) -> None:
    """Refuse, in one line, a database made by an older build: until
    migrations arrive, ``create_all`` adds tables but never columns."""
    inspector = sa.inspect(engine)
    for table in metadata.sorted_tables:
        have = {c["name"] for c in inspector.get_columns(table.name)}
        missing = [c.name for c in table.columns if c.name not in have]
        if missing:
            raise ConfigError(
                f"{sa.engine.make_url(url).render_as_string()}: table "
                f"{table.name} lacks {', '.join(missing)}: the database was "
                "made by an older Postroom; move it aside (no migrations yet)"
            )


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
