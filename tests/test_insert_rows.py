"""models.insert_rows: Peewee's insert_many without its per-value cost, same rows."""

from __future__ import annotations

from datetime import timedelta

import peewee
import pytest

from outreach_actors.domain import engine
from outreach_actors.domain.store.models import MessageEvent, ScheduledAction, insert_rows, utcnow
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
