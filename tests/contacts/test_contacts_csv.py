"""CSV import and export: per-row errors with line numbers, upsert,
lists, a round trip, and memory that does not grow with the file."""

from __future__ import annotations

import io
import tracemalloc
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from postroom.campaigns import contacts, csvio, lists
from postroom.errors import ContactError

GOOD_AND_BAD = (
    "email,first_name,last_name,city,age\n"
    "ann@example.net,Ann,Lee,Basel,30\n"          # line 2
    "not-an-address,X,Y,,\n"                      # line 3: bad address
    '"bob@example.net","Bob","Multi\nLine",Bern,41\n'  # lines 4-5
    "cat@example.net,Cat,,Chur,old\n"             # line 6: bad number
    "dan@example.net,Dan\n"                       # line 7: too few cells
    "\n"
    "EVE@Example.net,Eve,,,\n"                    # line 9
)


@pytest.fixture
def fields(engine: sa.Engine) -> sa.Engine:
    with engine.begin() as conn:
        contacts.define_field(conn, "city", "text")
        contacts.define_field(conn, "age", "number")
    return engine


def test_bad_rows_are_reported_by_line_and_the_rest_imported(
    fields: sa.Engine,
) -> None:
    report = csvio.import_csv(fields, io.StringIO(GOOD_AND_BAD))
    assert (report.created, report.updated, report.error_count) == (3, 0, 3)
    assert [line for line, _ in report.errors] == [3, 6, 7]
    assert "not an email address" in report.errors[0][1]
    assert report.errors[1][1].startswith("age: expected a number")
    assert "expected 5 cells, got 2" in report.errors[2][1]
    with fields.connect() as conn:
        bob = contacts.get_by_email(conn, "bob@example.net")
        assert bob.last_name == "Multi\nLine"
        assert bob.custom_fields == {"city": "Bern", "age": 41}
        assert contacts.get_by_email(conn, "eve@example.net").first_name == "Eve"


def test_import_upserts_and_empty_cells_leave_values_alone(
    fields: sa.Engine,
) -> None:
    csvio.import_csv(fields, io.StringIO(GOOD_AND_BAD))
    with fields.begin() as conn:
        news = lists.create(conn, "news")
    again = "email,age,city\nann@example.net,31,\nnew@example.net,,\n"
    report = csvio.import_csv(fields, io.StringIO(again), list_id=news.id)
    assert (report.created, report.updated, report.error_count) == (1, 1, 0)
    with fields.connect() as conn:
        ann = contacts.get_by_email(conn, "ann@example.net")
        assert ann.custom_fields == {"city": "Basel", "age": 31}
        assert lists.get(conn, news.id).contact_count == 2


def test_a_bad_header_refuses_the_file(fields: sa.Engine) -> None:
    for header, words in (("first_name\n", "no email column"),
                          ("email,shoe_size\n", "unknown column 'shoe_size'"),
                          ("email,city,City\n", "named twice")):
        with pytest.raises(ContactError, match=words):
            csvio.import_csv(fields, io.StringIO(header + "a@example.net,1,2\n"))
    with pytest.raises(ContactError, match="empty"):
        csvio.import_csv(fields, io.StringIO(""))
    with pytest.raises(ContactError, match="no such list"):
        csvio.import_csv(fields, io.StringIO("email\n"), list_id="nope")


def test_export_imports_again_unchanged(fields: sa.Engine) -> None:
    csvio.import_csv(fields, io.StringIO(GOOD_AND_BAD))
    first = io.StringIO()
    assert csvio.export_csv(fields, first) == 3
    text = first.getvalue()
    assert text.splitlines()[0] == (
        "email,first_name,last_name,status,age,city,created_at,verified_at")
    assert "bob@example.net,Bob,\"Multi\nLine\",unverified,41,Bern," in text

    report = csvio.import_csv(fields, io.StringIO(text))
    assert (report.created, report.updated, report.error_count) == (0, 3, 0)
    second = io.StringIO()
    csvio.export_csv(fields, second)
    assert second.getvalue() == text


class Rows(io.TextIOBase):
    """A CSV file of *n* rows made as it is read, so the test itself
    holds no copy of it."""

    def __init__(self, n: int) -> None:
        self._lines = self._make(n)

    @staticmethod
    def _make(n: int) -> Iterator[str]:
        yield "email,first_name,last_name,city,age\n"
        for i in range(n):
            yield f"user{i:06d}@example.net,First{i},Last{i},City{i % 50},{i}\n"

    def readable(self) -> bool:
        return True

    def __next__(self) -> str:
        return next(self._lines)

    def __iter__(self) -> Rows:
        return self


def peak_import(engine: sa.Engine, rows: int) -> int:
    tracemalloc.start()
    try:
        report = csvio.import_csv(engine, Rows(rows))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.created == rows and report.error_count == 0
    return peak


def test_import_memory_does_not_grow_with_the_file(fields: sa.Engine) -> None:
    # Warm the caches (SQLAlchemy's statement cache, imports) first.
    csvio.import_csv(fields, Rows(100))
    with fields.begin() as conn:
        conn.execute(sa.text("DELETE FROM contacts"))
    small = peak_import(fields, 5_000)
    with fields.begin() as conn:
        conn.execute(sa.text("DELETE FROM contacts"))
    large = peak_import(fields, 50_000)
    # 50,000 rows held at once would take tens of MB; a batch takes ~2.
    assert large < 8 * 1024 * 1024, large
    assert large < small * 1.5 + 512 * 1024, (small, large)


def test_export_streams(fields: sa.Engine) -> None:
    csvio.import_csv(fields, Rows(20_000))

    class Sink(io.StringIO):
        def write(self, s: str) -> int:
            return len(s)  # count nothing, keep nothing

    tracemalloc.start()
    try:
        assert csvio.export_csv(fields, Sink()) == 20_000
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, peak
