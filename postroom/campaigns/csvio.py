"""CSV import and export of contacts, streamed both ways.

Import. The file is read row by row (``csv.reader`` over the open text
file) and written in batches of ``BATCH`` rows, one transaction each,
so memory holds one batch whatever the file's size, and an import of
100,000 rows that fails at row 90,000 has kept the batches before it
(an upsert by address, so running it again is harmless). The header
names the columns: ``email`` is required; ``first_name``,
``last_name`` and defined custom fields are taken; the read-only
columns an export writes (``id``, ``status``, the times) are ignored,
so an export imports again unchanged; any other column refuses the
whole file before a row is read, since a typo in a header would
otherwise drop a field from every row.

A bad row (bad address, a value that does not fit its field's type,
the wrong number of cells) is skipped and reported with its line
number in the file (``csv.reader.line_num``, which counts the lines of
a quoted cell with newlines too) and the problem; the rest of the file
still goes in. Empty cells mean "not given": they leave stored values
alone. Reports keep the first ``MAX_ERRORS`` problems and count the
rest, so a file of nothing but bad rows cannot fill memory either.

Export. One SELECT read with ``yield_per`` (a server-side cursor where
the database has one; SQLite steps its cursor), one CSV line written
per contact: email, names, status, each defined custom field, times.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

import sqlalchemy as sa

from postroom.campaigns import contacts, segments
from postroom.campaigns.contacts import ContactInput
from postroom.errors import ContactError
from postroom.store.contacts import contacts as contacts_table

BATCH = 1000
MAX_ERRORS = 1000
NAMES = ("first_name", "last_name")
# Written by export, ignored by import.
READ_ONLY = ("id", "status", "created_at", "updated_at", "verified_at")
# Rows done so far, for a progress bar.
Progress = Callable[[int], None]


@dataclass
class ImportReport:
    created: int = 0
    updated: int = 0
    rows: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    error_count: int = 0

    def add_error(self, line: int, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append((line, message))


def import_csv(
    engine: sa.Engine,
    source: TextIO,
    *,
    list_id: str | None = None,
    progress: Progress | None = None,
) -> ImportReport:
    """Upsert the contacts of *source* (an open text file with a
    header), adding each to *list_id* if given. ContactError for a bad
    header or an unknown list; bad rows go into the report."""
    reader = csv.reader(source)
    with engine.connect() as conn:
        types = contacts.field_types(conn)
        if list_id is not None:
            from postroom.campaigns import lists

            lists.get(conn, list_id)
    try:
        header = next(reader)
    except StopIteration:
        raise ContactError("the file is empty: expected a header line") from None
    columns = _columns(header, types)

    report = ImportReport()
    batch: list[ContactInput] = []
    for cells in reader:
        if not cells:
            continue  # a blank line
        report.rows += 1
        try:
            batch.append(_item(columns, cells, types))
        except ContactError as e:
            where = f"{e.field}: " if e.field else ""
            report.add_error(reader.line_num, f"{where}{e}")
        if len(batch) >= BATCH:
            _write(engine, batch, list_id, report)
            batch = []
            if progress is not None:
                progress(report.rows)
    if batch:
        _write(engine, batch, list_id, report)
    if progress is not None:
        progress(report.rows)
    return report


def _columns(header: list[str], types: dict[str, str]) -> list[str | None]:
    """Each column's field name (None: ignored); ContactError for a
    header we cannot take."""
    names = [h.strip().lower() for h in header]
    if "email" not in names:
        raise ContactError("line 1: the header has no email column")
    out: list[str | None] = []
    for name in names:
        if name in READ_ONLY:
            out.append(None)
        elif name in ("email", *NAMES) or name in types:
            out.append(name)
        else:
            raise ContactError(
                f"line 1: unknown column {name!r} (define it as a custom field "
                "first)")
    if len(set(filter(None, out))) != len(list(filter(None, out))):
        raise ContactError("line 1: a column is named twice")
    return out


def _item(
    columns: list[str | None], cells: list[str], types: dict[str, str]
) -> ContactInput:
    if len(cells) != len(columns):
        raise ContactError(f"expected {len(columns)} cells, got {len(cells)}")
    values = {name: cell.strip() for name, cell in zip(columns, cells, strict=True)
              if name is not None and cell.strip()}
    email = contacts.normalize_email(values.pop("email", ""))
    first, last = values.pop("first_name", None), values.pop("last_name", None)
    custom = contacts.check_custom(types, values, prefix="")
    return ContactInput(email, first, last, custom)


def _write(
    engine: sa.Engine, batch: list[ContactInput], list_id: str | None,
    report: ImportReport,
) -> None:
    with engine.begin() as conn:
        result = contacts.upsert(conn, batch, [list_id] if list_id else [])
    report.created += result.created
    report.updated += result.updated


def export_rows(
    conn: sa.Connection, *, list_id: str | None = None
) -> Iterator[list[str]]:
    """The header, then one row per contact (on *list_id* if given),
    by address, fetched in batches."""
    types = contacts.field_types(conn)
    custom = sorted(types)
    yield ["email", *NAMES, "status", *custom, "created_at", "verified_at"]
    query = sa.select(contacts_table).order_by(contacts_table.c.email)
    if list_id is not None:
        query = query.where(segments.members_of(list_id))
    result = conn.execution_options(yield_per=BATCH).execute(query)
    for row in result:
        c = contacts.from_row(row)
        data = c.as_json()
        yield [c.email, c.first_name or "", c.last_name or "", c.status,
               *(_cell(c.custom_fields.get(name)) for name in custom),
               data["created_at"], data["verified_at"] or ""]


def export_csv(
    engine: sa.Engine, out: TextIO, *, list_id: str | None = None,
    progress: Progress | None = None,
) -> int:
    """Write the contacts as CSV to *out*; return how many."""
    writer = csv.writer(out, lineterminator="\n")
    written = -1  # the header is not a contact
    with engine.connect() as conn:
        for row in export_rows(conn, list_id=list_id):
            writer.writerow(row)
            written += 1
            if progress is not None and written % BATCH == 0:
                progress(written)
    if progress is not None:
        progress(written)
    return written


def _cell(value: Any) -> str:
    return "" if value is None else str(value)
