"""store/by_id.py: reads and updates by primary key as fixed SQL give what Peewee's
queries give, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest

from outreach_actors.domain import engine
from outreach_actors.domain.mail import render_action
from outreach_actors.domain.store.by_id import row_by_id, rows_by_id, update_by_id
from outreach_actors.domain.store.models import (
    Contact,
    Enrollment,
    OutboundMessage,
    ScheduledAction,
    utcnow,
)
from outreach_actors.settings import configure

from .conftest import make_settings
from .factories import load_plan, make_tenant


@pytest.fixture
def enrollments(data_dir, any_db):
    configure(make_settings(data_dir))
    make_tenant()
    load_plan()
    yield [engine.enroll("acme", f"contact{n}@example.com", "onboarding",
                         fields={"first_name": f"C{n}"}, timezone="Europe/Paris")
           for n in range(4)]
    configure(None)


def as_data(rows) -> list[dict]:
    return sorted((dict(row.__data__) for row in rows), key=lambda data: str(data["id"]))


def test_whole_rows_and_some_columns_read_as_peewee_reads_them(enrollments) -> None:
    ids = [enrollment.id for enrollment in enrollments[:3]]  # padded on SQLite: read once each
    assert as_data(rows_by_id(Enrollment, ids)) == as_data(
        Enrollment.select().where(Enrollment.id.in_(ids)))
    assert len(rows_by_id(Enrollment, ids)) == 3
    # datetimes, JSON and foreign keys converted as Peewee converts them
    contacts = rows_by_id(Contact, [enrollments[0].contact_id], Contact.fields, Contact.created_at,
                          Contact.id)
    assert contacts[0].fields == {"first_name": "C0"}
    assert contacts[0].created_at == Contact.get_by_id(enrollments[0].contact_id).created_at
    narrow = rows_by_id(Enrollment, ids[:2], Enrollment.id, Enrollment.plan, Enrollment.status)
    assert sorted((row.id, row.plan_id, row.status) for row in narrow) == [
        (enrollment.id, enrollment.plan_id, "active") for enrollment in enrollments[:2]]


def test_text_keys_missing_ids_and_no_ids(enrollments) -> None:
    action = ScheduledAction.get(ScheduledAction.enrollment == enrollments[0].id)
    message_id = render_action(action.id)
    message = row_by_id(OutboundMessage, message_id, OutboundMessage.id, OutboundMessage.status,
                        OutboundMessage.enrollment)
    assert (message.id, message.status, message.enrollment_id) == (
        message_id, "rendered", enrollments[0].id)
    assert row_by_id(OutboundMessage, "msg_missing") is None
    assert row_by_id(Enrollment, -1) is None
    assert rows_by_id(Enrollment, []) == []


def test_updates_change_the_rows_named_and_count_them(enrollments) -> None:
    # Three ids: SQLite's list of them is padded to four with a repeat (ids_condition).
    ids = [enrollment.id for enrollment in enrollments[:3]]
    later = utcnow() + timedelta(hours=1)
    assert update_by_id(Enrollment, ids, status="exited", exit_reason="test", updated_at=later) == 3
    assert update_by_id(Enrollment, [-1], status="exited") == 0
    assert update_by_id(Enrollment, [], status="exited") == 0
    rows = {row.id: row for row in Enrollment.select()}
    assert [(rows[i].status, rows[i].exit_reason, rows[i].updated_at) for i in ids] == [
        ("exited", "test", later)] * 3
    assert rows[enrollments[3].id].status == "active"
