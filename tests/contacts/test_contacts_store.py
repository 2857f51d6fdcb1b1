"""Contacts, custom fields and lists at the module level: addresses,
types, upsert by address, membership."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from postroom.campaigns import contacts, lists
from postroom.campaigns.contacts import ContactInput
from postroom.errors import ContactError, UnknownContact


def test_addresses_are_checked_and_lower_cased() -> None:
    assert contacts.normalize_email(" Ann@Example.NET ") == "ann@example.net"
    for bad in ("", "ann", "ann@", "@example.net", "a b@example.net",
                "ann@example.net>", "x" * 250 + "@example.net"):
        with pytest.raises(ContactError) as caught:
            contacts.normalize_email(bad, "contacts.3.email")
        assert caught.value.field == "contacts.3.email"


def test_custom_values_fit_their_types(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        contacts.define_field(conn, "city", "text")
        contacts.define_field(conn, "age", "number")
        contacts.define_field(conn, "birthday", "date")
        types = contacts.field_types(conn)
    assert types == {"age": "number", "birthday": "date", "city": "text"}
    clean = contacts.check_custom(
        types, {"city": "Basel", "age": "42", "birthday": "1990-02-03"})
    assert clean == {"city": "Basel", "age": 42, "birthday": "1990-02-03"}
    assert contacts.check_custom(types, {"age": 1.5}) == {"age": 1.5}
    refusals = [({"age": "old"}, "custom_fields.age"),
                ({"age": True}, "custom_fields.age"),
                ({"age": "nan"}, "custom_fields.age"),
                ({"birthday": "03/02/1990"}, "custom_fields.birthday"),
                ({"city": "x" * 1001}, "custom_fields.city"),
                ({"shoe": "42"}, "custom_fields.shoe")]
    for values, path in refusals:
        with pytest.raises(ContactError) as caught:
            contacts.check_custom(types, values)
        assert caught.value.field == path, values


def test_field_names_are_plain_and_not_reserved(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        for name in ("email", "Bad", "a-b", "a.b", "", "x" * 51):
            with pytest.raises(ContactError):
                contacts.define_field(conn, name, "text")
        with pytest.raises(ContactError):
            contacts.define_field(conn, "ok", "blob")
        contacts.define_field(conn, "ok", "text")
        with pytest.raises(ContactError):
            contacts.define_field(conn, "ok", "text")


def test_upsert_by_address_merges_fields_and_keeps_status(
    engine: sa.Engine,
) -> None:
    with engine.begin() as conn:
        contacts.define_field(conn, "city", "text")
        contacts.define_field(conn, "age", "number")
        first = contacts.upsert(conn, [ContactInput(
            "ann@example.net", "Ann", None, {"city": "Basel", "age": 30})])
        contacts.set_status(conn, first.ids[0], "verified")
        again = contacts.upsert(conn, [
            ContactInput("ann@example.net", None, "Lee", {"age": 31}),
            ContactInput("bob@example.net", "Bob"),
        ])
        ann = contacts.get_by_email(conn, "ANN@example.net")
    assert (first.created, again.created, again.updated) == (1, 1, 1)
    assert again.ids[0] == first.ids[0]
    assert (ann.first_name, ann.last_name) == ("Ann", "Lee")
    assert ann.custom_fields == {"city": "Basel", "age": 31}
    assert ann.status == "verified" and ann.verified_at is not None


def test_lists_hold_contacts_and_deleting_a_list_keeps_them(
    engine: sa.Engine,
) -> None:
    with engine.begin() as conn:
        vip = lists.create(conn, "VIP")
        with pytest.raises(ContactError):
            lists.create(conn, "VIP")
        made = contacts.upsert(
            conn, [ContactInput("a@example.net"), ContactInput("b@example.net")],
            [vip.id])
        assert contacts.add_members(conn, vip.id, made.ids) == 0  # already on
        assert lists.resolve(conn, "VIP").contact_count == 2
        assert contacts.remove_members(conn, vip.id, made.ids[:1]) == 1
        assert lists.get(conn, vip.id).contact_count == 1
        lists.delete(conn, vip.id)
        assert contacts.count(conn) == 2
        with pytest.raises(UnknownContact):
            lists.get(conn, vip.id)
        with pytest.raises(UnknownContact):
            contacts.add_members(conn, "nope", made.ids)
        assert contacts.delete(conn, made.ids) == 2
