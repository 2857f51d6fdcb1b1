"""Segments: the condition tree in SQL, its refusals with paths, and
``eligible_contacts`` (verified, on the list or in the segment, not
suppressed)."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from postroom import suppressions
from postroom.campaigns import contacts, eligible, lists, segments
from postroom.campaigns.contacts import ContactInput
from postroom.errors import ContactError

PEOPLE = [
    ("ann@example.net", "Ann", {"city": "Basel", "age": 30, "since": "2020-01-05"}),
    ("bob@example.org", "Bob", {"city": "Bern", "age": 41}),
    ("cat@example.net", "Cat", {"city": "50% off", "age": 7}),
    ("dan@example.com", None, {}),
]


@pytest.fixture
def people(engine: sa.Engine) -> dict[str, str]:
    with engine.begin() as conn:
        contacts.define_field(conn, "city", "text")
        contacts.define_field(conn, "age", "number")
        contacts.define_field(conn, "since", "date")
        made = contacts.upsert(conn, [ContactInput(e, f, None, c)
                                      for e, f, c in PEOPLE])
    return {e: cid for (e, _, _), cid in zip(PEOPLE, made.ids, strict=True)}


def matching(engine: sa.Engine, tree: dict[str, Any]) -> list[str]:
    with engine.connect() as conn:
        where = segments.to_sql(tree, contacts.field_types(conn))
        return [c.email.split("@")[0] for c in contacts.search(conn, where)]


@pytest.mark.parametrize(("tree", "expected"), [
    ({"field": "custom.city", "op": "eq", "value": "Bern"}, ["bob"]),
    ({"field": "custom.age", "op": "ge", "value": 30}, ["ann", "bob"]),
    ({"field": "custom.age", "op": "lt", "value": 10}, ["cat"]),
    ({"field": "email", "op": "ends_with", "value": "@example.net"},
     ["ann", "cat"]),
    ({"field": "custom.city", "op": "contains", "value": "%"}, ["cat"]),
    ({"field": "custom.city", "op": "starts_with", "value": "B_"}, []),
    ({"field": "first_name", "op": "exists", "value": False}, ["dan"]),
    ({"field": "custom.since", "op": "lt", "value": "2021-01-01"}, ["ann"]),
    ({"field": "first_name", "op": "in", "value": ["Ann", "Cat"]},
     ["ann", "cat"]),
    ({"or": [{"field": "custom.city", "op": "eq", "value": "Basel"},
             {"and": [{"field": "custom.age", "op": "gt", "value": 40},
                      {"not": {"field": "email", "op": "contains",
                               "value": "ann"}}]}]}, ["ann", "bob"]),
    ({"field": "status", "op": "eq", "value": "unverified"},
     ["ann", "bob", "cat", "dan"]),
    ({"field": "created_at", "op": "gt", "value": "2000-01-01T00:00:00+00:00"},
     ["ann", "bob", "cat", "dan"]),
])
def test_conditions_select_in_sql(
    engine: sa.Engine, people: dict[str, str], tree: dict[str, Any],
    expected: list[str],
) -> None:
    assert matching(engine, tree) == expected


def test_injection_is_only_ever_a_value(
    engine: sa.Engine, people: dict[str, str]
) -> None:
    evil = "x' OR '1'='1"
    assert matching(engine, {"field": "email", "op": "eq", "value": evil}) == []
    with pytest.raises(ContactError):
        matching(engine, {"field": "custom.city') OR 1=1 --", "op": "eq",
                          "value": "x"})
    with engine.connect() as conn:
        assert contacts.count(conn) == 4  # nothing was dropped either


@pytest.mark.parametrize(("tree", "path"), [
    ([], "conditions"),
    ({"and": []}, "conditions.and"),
    ({"and": [{"field": "email", "op": "eq", "value": "a"}, {"x": 1}]},
     "conditions.and.1"),
    ({"field": "email", "op": "like", "value": "a"}, "conditions.op"),
    ({"field": "password", "op": "eq", "value": "a"}, "conditions.field"),
    ({"field": "custom.nope", "op": "eq", "value": "a"}, "conditions.field"),
    ({"field": "custom.age", "op": "eq", "value": "old"}, "conditions.value"),
    ({"field": "custom.age", "op": "contains", "value": "1"}, "conditions.value"),
    ({"field": "email", "op": "in", "value": []}, "conditions.value"),
    ({"field": "email", "op": "exists", "value": "yes"}, "conditions.value"),
    ({"not": {"not": {"not": {"not": {"not": {"not": {"not": {"not": {
        "field": "email", "op": "eq", "value": "a"}}}}}}}}}, "conditions" +
     ".not" * 8),
])
def test_bad_trees_are_refused_with_their_path(
    engine: sa.Engine, people: dict[str, str], tree: Any, path: str
) -> None:
    with pytest.raises(ContactError) as caught:
        matching(engine, tree)
    assert caught.value.field == path


def test_too_many_conditions_are_refused(engine: sa.Engine) -> None:
    leaf = {"field": "email", "op": "eq", "value": "a"}
    with pytest.raises(ContactError, match="more than 100"):
        segments.to_sql({"or": [leaf] * 100}, {})


def test_eligible_means_verified_unsuppressed_and_in_the_segment(
    engine: sa.Engine, people: dict[str, str]
) -> None:
    with engine.begin() as conn:
        club = lists.create(conn, "club")
        contacts.add_members(conn, club.id, list(people.values()))
        for email in ("ann@example.net", "bob@example.org", "cat@example.net"):
            contacts.set_status(conn, people[email], "verified")
        contacts.set_status(conn, people["dan@example.com"], "unsubscribed")
        suppressions.add(conn, suppressions.BOUNCE, ["cat@example.net"])
        adults = segments.create(
            conn, "adults", {"field": "custom.age", "op": "ge", "value": 18},
            club.id, contacts.field_types(conn))

    with engine.connect() as conn:
        on_list = [c.email for c in eligible.eligible_contacts(
            conn, list_id=club.id)]
        in_segment = [c.email for c in eligible.eligible_contacts(
            conn, segment_id=adults.id)]
        assert eligible.is_suppressed(conn, "cat@example.net")
    assert on_list == ["ann@example.net", "bob@example.org"]
    assert in_segment == ["ann@example.net", "bob@example.org"]
