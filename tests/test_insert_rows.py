"""models.insert_rows: Peewee's insert_many without its per-value cost, same rows."""

from __future__ import annotations

from datetime import timedelta

import peewee
import pytest

from outreach_actors.domain import engine
from outreach_actors.domain.store.copy_insert import COPY_MIN_ROWS
from outreach_actors.domain.store.db import is_postgresql
from outreach_actors.domain.store.models import (
    MessageEvent,
    ScheduledAction,
    database_proxy,
    insert_rows,
    utcnow,
)
from outreach_actors.settings import configure

from .conftest import make_settings
from .factories import load_plan, make_tenant


@pytest.fixture
def enrollment(data_dir, any_db):
    configure(make_settings(data_dir))
    make_tenant()
    load_plan()
    yield engine.enroll("acme", "ada@example.com", "onboarding")
    configure(None)


def timer_rows(enrollment, count: int) -> list[dict]:
    run_at = utcnow() + timedelta(days=1)
    return [{"enrollment": enrollment.id, "node": "intro", "kind": "timeout", "event": "no_open",
             "run_at": run_at, "dedupe_key": f"t{n}"} for n in range(count)]


def test_rows_past_the_parameter_limit_are_all_stored_with_their_defaults(enrollment) -> None:
    # About 11 columns each: more parameters than one SQLite statement may carry.
    before = ScheduledAction.select().count()
    insert_rows(ScheduledAction, timer_rows(enrollment, 3_500))
    stored = ScheduledAction.select().where(ScheduledAction.dedupe_key.startswith("t"))
    assert stored.count() == 3_500 and ScheduledAction.select().count() == before + 3_500
    assert {(a.status, a.attempts, a.visit_version) for a in stored} == {("pending", 0, 0)}
    assert stored.where(ScheduledAction.created_at.is_null()).count() == 0


def test_conflicts_are_ignored_only_when_asked(enrollment) -> None:
    insert_rows(ScheduledAction, timer_rows(enrollment, 3))
    insert_rows(ScheduledAction, timer_rows(enrollment, 5), ignore_conflicts=True)
    assert ScheduledAction.select().where(ScheduledAction.dedupe_key.startswith("t")).count() == 5
    with pytest.raises(peewee.IntegrityError):
        insert_rows(ScheduledAction, timer_rows(enrollment, 1))


def test_values_go_through_their_fields(enrollment) -> None:
    insert_rows(MessageEvent, [{"type": "no_open", "synthetic": True, "event_key": "e1",
                                "occurred_at": utcnow(), "data": {"node": "intro", "n": [1]}}])
    event = MessageEvent.get(MessageEvent.event_key == "e1")
    assert (event.synthetic, event.data, event.message_id) == (True, {"node": "intro", "n": [1]},
                                                                None)
    assert event.received_at is not None  # a callable default


def test_an_unknown_field_is_refused(enrollment) -> None:
    with pytest.raises(ValueError, match="no field 'colour'"):
        insert_rows(MessageEvent, [{"colour": "red"}])


# Values COPY's formats treat specially, and their neighbours.
AWKWARD_TEXTS = ["", "plain", "tab\there", "line\nbreak\r\n", 'a "quoted", comma', "back\\slash",
                 "\\N", "NULL", "null-0", "ünïcödé ✉", " padded "]


# One moment for every call: two calls a second apart must still build the same rows.
OCCURRED_AT = utcnow().replace(microsecond=123456)


def event_rows(prefix: str, count: int) -> list[dict]:
    occurred_at = OCCURRED_AT
    return [{"tenant": AWKWARD_TEXTS[n % len(AWKWARD_TEXTS)],
             "type": "click", "synthetic": n % 2 == 0, "event_key": f"{prefix}{n}",
             "provider_event": None if n % 3 == 0 else AWKWARD_TEXTS[(n + 1) % len(AWKWARD_TEXTS)],
             "email": "" if n % 5 == 0 else f"c{n}@example.com",
             "occurred_at": occurred_at + timedelta(seconds=n),
             "data": {"text": AWKWARD_TEXTS[n % len(AWKWARD_TEXTS)], "n": n, "none": None}}
            for n in range(count)]


def stored_events(prefix: str) -> list[tuple]:
    return sorted((e.event_key[len(prefix):], e.tenant, e.type, e.synthetic, e.provider_event,
                   e.email, e.occurred_at, e.data)
                  for e in MessageEvent.select().where(MessageEvent.event_key.startswith(prefix)))


def test_a_large_insert_stores_every_value_as_a_statement_of_values_does(enrollment) -> None:
    # PostgreSQL writes a large insert through COPY, a small one (or one with a row
    # limit) through INSERT ... VALUES: the rows must come out the same, NULL as NULL and
    # an empty string as an empty string.
    count = COPY_MIN_ROWS + 10
    insert_rows(MessageEvent, event_rows("copy-", count))
    insert_rows(MessageEvent, event_rows("values-", count), rows_per_statement=100)
    copied = stored_events("copy-")
    assert len(copied) == count and copied == stored_events("values-")
    assert {row[4] for row in copied} >= {None, ""} and {row[5] for row in copied} >= {""}


def test_a_large_insert_returns_only_its_new_rows_and_refuses_a_conflict(enrollment) -> None:
    count = COPY_MIN_ROWS + 10
    with database_proxy.atomic():
        first = insert_rows(MessageEvent, event_rows("k", count), ignore_conflicts=True,
                            conflict_target="event_key", returning="event_key")
        # A second large insert in the same transaction sees none of the first's rows
        # again, and a row that exists is left alone and not returned.
        second = insert_rows(MessageEvent, event_rows("k", count + 5), ignore_conflicts=True,
                             conflict_target="event_key", returning=("event_key", "synthetic"))
    assert sorted(first) == sorted(f"k{n}" for n in range(count))
    assert sorted(second) == [(f"k{n}", n % 2 == 0) for n in range(count, count + 5)]
    assert MessageEvent.select().where(MessageEvent.event_key.startswith("k")).count() == count + 5
    with pytest.raises(peewee.IntegrityError):
        insert_rows(MessageEvent, event_rows("k", count))


def test_large_inserts_of_many_transactions_reuse_one_staging_table(enrollment) -> None:
    # A staging table made and dropped by every transaction wrote and deleted dozens of
    # catalog rows each time: a busy worker bloated the catalogs wherever autovacuum lagged.
    count = COPY_MIN_ROWS + 10
    database = database_proxy.obj
    with database.connection_context():
        with pytest.raises(RuntimeError), database.atomic():  # one rolled back half-way
            insert_rows(MessageEvent, event_rows("gone-", count))
            raise RuntimeError("the worker died before its commit")
        for batch in range(3):
            with database.atomic():
                insert_rows(MessageEvent, event_rows(f"b{batch}-", count))
        assert len(stored_events("gone-")) == 0
        assert all(len(stored_events(f"b{batch}-")) == count for batch in range(3))
        if is_postgresql(database):  # (SQLite has no COPY: statements of values)
            assert database.execute_sql(
                "SELECT count(*) FROM pg_class WHERE relname LIKE '\\_outreach\\_copy\\_%%' "
                "AND relnamespace = pg_my_temp_schema()").fetchone()[0] == 1
