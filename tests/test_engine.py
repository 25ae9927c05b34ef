"""The state machine: enroll, enter nodes, move once on events, exit."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest

from outreach_actors.domain import engine, stored_plans
from outreach_actors.domain.store import models
from outreach_actors.domain.store.models import (
    Enrollment,
    NodeVisit,
    OutboundMessage,
    ScheduledAction,
    utcnow,
)

from .conftest import counting
from .factories import THREE_NODE_PLAN, load_plan, make_tenant

WAIT_PLAN = """
name: drip
start: pause
nodes:
  pause:
    type: wait
    transitions: [{on: elapsed, after: P1D, to: done}]
  done: {type: exit}
"""


@pytest.fixture
def acme(settings):
    make_tenant()
    load_plan()
    return "acme"


def test_enroll_creates_an_enrollment_and_a_send_action(acme) -> None:
    enrollment = engine.enroll("acme", "Ada@Example.com", "onboarding", fields={"first_name": "Ada"})
    assert enrollment.current_node == "intro"
    assert enrollment.contact.email == "ada@example.com"
    [action] = ScheduledAction.select().where(ScheduledAction.enrollment == enrollment)
    assert action.kind == "send" and action.node == "intro" and action.status == "pending"
    assert NodeVisit.select().where(NodeVisit.enrollment == enrollment).count() == 1


def test_enrolling_twice_is_refused_unless_the_plan_allows_reentry(acme) -> None:
    engine.enroll("acme", "ada@example.com", "onboarding")
    with pytest.raises(engine.AlreadyEnrolled, match="already enrolled"):
        engine.enroll("acme", "ADA@example.com", "onboarding")
    load_plan(allow_reentry=True)  # version 2 allows it
    engine.enroll("acme", "ada@example.com", "onboarding")
    assert Enrollment.select().count() == 2


def test_enrolling_again_with_skip_returns_the_enrollment_and_merges_the_fields(db) -> None:
    make_tenant()
    load_plan()
    first = engine.enroll("acme", "ada@example.com", "onboarding",
                          fields={"first_name": "Ada", "tier": "free"})
    again = engine.enroll("acme", "ADA@example.com", "onboarding", fields={"tier": "pro"},
                          timezone="Europe/Paris", if_enrolled="skip")
    assert again.id == first.id
    contact = models.Contact.get()
    assert (contact.fields, contact.timezone) == ({"first_name": "Ada", "tier": "pro"}, "Europe/Paris")
    assert (Enrollment.select().count(), ScheduledAction.select().count()) == (1, 1)


@pytest.mark.parametrize("address", ["", "no-at-sign", "a@b", "x@example.com\r\nBcc: evil@x.com",
                                     "two@@example.com",
                                     # Addresses every send would refuse (SendGrid takes no
                                     # Unicode local part), so no contact is stored for them.
                                     "josé@exämple.com", "ada..b@example.com", "ada@example.123"])
def test_bad_addresses_are_refused(acme, address: str) -> None:
    with pytest.raises(engine.EnrollmentError, match="not a valid email address"):
        engine.enroll("acme", address, "onboarding")
    assert Enrollment.select().count() == 0


def test_an_international_domain_is_enrolled_as_written(acme) -> None:
    enrollment = engine.enroll("acme", "Ada@Bücher.example", "onboarding")
    assert enrollment.contact.email == "ada@bücher.example"  # sent in IDNA form


def test_unknown_plan_and_tenant_are_clear_errors(acme) -> None:
    with pytest.raises(engine.EnrollmentError, match="no plan named 'nope'"):
        engine.enroll("acme", "a@example.com", "nope")
    with pytest.raises(engine.EnrollmentError, match="unknown tenant 'globex'"):
        engine.enroll("globex", "a@example.com", "onboarding")


def test_an_event_takes_the_first_matching_transition_and_cancels_old_actions(acme) -> None:
    enrollment = engine.enroll("acme", "ada@example.com", "onboarding")
    assert engine.process_event(enrollment.id, "clicked", node="intro")
    enrollment = Enrollment.get_by_id(enrollment.id)
    assert enrollment.current_node == "thanks"
    assert enrollment.status == Enrollment.COMPLETED
    assert ScheduledAction.get(ScheduledAction.node == "intro").status == "cancelled"
    # An event with no transition from the current node moves nothing.
    assert not engine.process_event(enrollment.id, "clicked")


def test_an_event_from_a_node_already_left_is_stale(acme) -> None:
    enrollment = engine.enroll("acme", "ada@example.com", "onboarding")
    assert engine.process_event(enrollment.id, "no_open", node="intro")
    # A late click on the intro email must not move the contact out of bump.
    assert not engine.process_event(enrollment.id, "clicked", node="intro")
    assert Enrollment.get_by_id(enrollment.id).current_node == "bump"


def test_two_events_racing_move_the_enrollment_once(acme) -> None:
    # Given one enrollment and eight threads delivering events for its intro node
    enrollment = engine.enroll("acme", "ada@example.com", "onboarding")
    barrier = threading.Barrier(8)
    results: list[bool] = []

    def deliver(event: str) -> None:
        barrier.wait()
        results.append(engine.process_event(enrollment.id, event, node="intro"))

    threads = [threading.Thread(target=deliver, args=(e,)) for e in ["clicked", "bounced"] * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then exactly one of them moved it, and the history has one move.
    assert results.count(True) == 1
    assert NodeVisit.select().where(NodeVisit.enrollment == enrollment.id).count() == 2


def test_events_of_many_enrollments_move_them_with_the_statements_of_one(acme) -> None:
    enrollments = [engine.enroll("acme", f"c{n}@example.com", "onboarding") for n in range(5)]
    events = [engine.EventFor(enrollment.id, "clicked", node="intro") for enrollment in enrollments]
    stored_plans.plan_for_id(enrollments[0].plan_id)  # the plan read once, before counting
    with counting() as one:
        assert engine.process_events(events[:1]) == {enrollments[0].id}
    with counting() as four:
        assert engine.process_events(events[1:]) == {e.id for e in enrollments[1:]}
    assert len(four.sql) == len(one.sql)
    assert {e.status for e in Enrollment.select()} == {Enrollment.COMPLETED}
    # Run again, nothing moves: each enrollment has left the event's node.
    assert engine.process_events(events) == set()
    assert NodeVisit.select().count() == 2 * len(enrollments)


def test_process_events_takes_one_event_per_enrollment(acme) -> None:
    enrollment = engine.enroll("acme", "ada@example.com", "onboarding")
    with pytest.raises(ValueError, match="one event per enrollment"):
        engine.process_events([engine.EventFor(enrollment.id, "opened"),
                               engine.EventFor(enrollment.id, "clicked")])


def test_wait_node_schedules_its_elapsed_timer_on_entry(settings) -> None:
    make_tenant()
    load_plan(WAIT_PLAN)
    now = datetime(2026, 1, 5, 12, 0)
    enrollment = engine.enroll("acme", "ada@example.com", "drip", now=now)
    [action] = ScheduledAction.select().where(ScheduledAction.enrollment == enrollment)
    assert (action.kind, action.event, action.run_at) == ("timeout", "elapsed", now + timedelta(days=1))


def test_after_send_schedules_timeouts_from_sent_at_once(acme) -> None:
    enrollment = engine.enroll("acme", "ada@example.com", "onboarding")
    action = ScheduledAction.get(ScheduledAction.enrollment == enrollment)
    sent_at = utcnow()
    message = OutboundMessage.create(
        tenant="acme", enrollment=enrollment, action=action, node="intro", dedupe_key="k",
        status="sent", to_email="ada@example.com", from_email="sales@acme.test", subject="s",
        html="h", text="t", sent_at=sent_at,
    )
    engine.after_send(message)
    engine.after_send(message)  # a replay creates nothing more
    [timeout] = ScheduledAction.select().where(ScheduledAction.kind == "timeout")
    assert timeout.event == "no_open"
    assert timeout.run_at == sent_at + timedelta(seconds=2)
    assert timeout.message_id == message.id


def test_exit_contact_enrollments_ends_every_active_one(acme) -> None:
    load_plan(WAIT_PLAN)
    engine.enroll("acme", "ada@example.com", "onboarding")
    engine.enroll("acme", "ada@example.com", "drip")
    assert engine.exit_contact_enrollments("acme", "ADA@example.com", "unsubscribed") == 2
    assert {e.status for e in Enrollment.select()} == {"exited"}
    assert ScheduledAction.select().where(ScheduledAction.status == "pending").count() == 0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"email": 42}, "an email address is text, not int"),
    ({"timezone": "Mars/Olympus"}, "'Mars/Olympus' is not an IANA time zone"),
    ({"timezone": "../../etc/passwd"}, "is not an IANA time zone"),
    ({"fields": ["a"]}, "fields must map names (text) to values, not list"),
    ({"fields": {1: "a"}}, "fields must map names (text) to values, not a mapping with other keys"),
    ({"fields": {"a": object()}}, "fields must hold JSON values"),
    ({"fields": {"a": float("nan")}}, "fields must hold JSON values"),
])
def test_what_a_host_app_passes_wrong_is_an_enrollment_error(acme, kwargs, message) -> None:
    arguments = {"email": "ada@example.com", **kwargs}
    with pytest.raises(engine.EnrollmentError) as refused:
        engine.enroll("acme", arguments.pop("email"), "onboarding", **arguments)
    assert message in str(refused.value)
    assert Enrollment.select().count() == 0


def test_a_known_time_zone_is_kept_and_an_empty_one_is_none(acme) -> None:
    engine.enroll("acme", "ada@example.com", "onboarding", timezone="Asia/Tokyo")
    engine.enroll("acme", "bob@example.com", "onboarding", timezone="")
    zones = {c.email: c.timezone for c in models.Contact.select()}
    assert zones == {"ada@example.com": "Asia/Tokyo", "bob@example.com": None}


def test_binding_another_database_forgets_the_plans_read_from_the_last(data_dir) -> None:
    # Plans are cached by id; the same id names another plan in another database.
    from outreach_actors.domain.store.db import database_from_url

    from .conftest import make_settings

    plans, databases = [], []
    for name in ("first", "second"):
        database = database_from_url(f"sqlite:///{data_dir / name}.db", make_settings(data_dir))
        models.create_schema(database)  # binds it
        make_tenant("acme")
        plans.append(load_plan(THREE_NODE_PLAN.replace("name: onboarding", f"name: {name}")))
        databases.append(database)
        assert stored_plans.plan_for_id(plans[-1].id).name == name
    assert plans[0].id == plans[1].id
    models.bind(databases[0])
    assert stored_plans.plan_for_id(plans[0].id).name == "first"


def test_binding_a_database_again_keeps_its_plans_parsed(data_dir) -> None:
    # The plan simulation binds its database around each scenario, and what was bound
    # before (or nothing) after it.
    from outreach_actors.domain.store.db import database_from_url

    from .conftest import counting, make_settings

    databases = [database_from_url(f"sqlite:///{data_dir / name}.db", make_settings(data_dir))
                 for name in ("simulated", "other")]
    models.create_schema(databases[1])
    models.create_schema(databases[0])
    make_tenant("acme")
    plan_id = load_plan().id
    stored_plans.plan_for_id(plan_id)
    for between in (None, databases[1]):
        models.bind(between)
        models.bind(databases[0])
        with counting() as read:
            assert stored_plans.plan_for_id(plan_id).name == "onboarding"
        assert read.sql == []
    # A schema created again (tables dropped and made anew) may hold other plans.
    models.create_schema(databases[0])
    with counting() as read:
        stored_plans.plan_for_id(plan_id)
    assert read.sql != []
