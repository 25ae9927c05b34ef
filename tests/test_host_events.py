"""Host events (track): stored once before they move anyone; conditions; goals; wait nodes."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from outreach_actors.domain import engine, host_events, stats, timers
from outreach_actors.domain.host_events import TrackError, track
from outreach_actors.domain.store.models import (
    Enrollment,
    HostEvent,
    NodeVisit,
    ScheduledAction,
    utcnow,
)

from .concurrency import run_together
from .factories import load_plan, make_tenant

TRIAL_PLAN = (Path(__file__).parent / "samples" / "plans" / "trial.yaml").read_text()


@pytest.fixture
def trial(db):
    make_tenant()
    load_plan(TRIAL_PLAN)
    return "acme"


def _enrollment(email: str = "ada@example.com") -> Enrollment:
    return Enrollment.get(Enrollment.contact == engine.upsert_contact("acme", email, None, None))


def test_the_same_track_delivered_twice_moves_once(trial) -> None:
    engine.enroll("acme", "ada@example.com", "trial")
    first = track("acme", "Ada@Example.com", "booked_meeting", {"when": "tue"}, event_id="ev-1")
    again = track("acme", "ada@example.com", "booked_meeting", {"when": "tue"}, event_id="ev-1")
    assert (first.stored, first.moved) == (True, 1)
    assert (again.stored, again.moved) == (False, 0)
    assert HostEvent.select().count() == 1
    enrollment = _enrollment()
    assert enrollment.current_node == "waiting"
    assert NodeVisit.select().where(NodeVisit.enrollment == enrollment).count() == 2
    # The intro's send was cancelled; the wait node's timer waits three days.
    [timer] = ScheduledAction.select().where(ScheduledAction.status == "pending")
    assert (timer.node, timer.event) == ("waiting", "elapsed")


def test_a_transition_takes_the_first_condition_that_holds(trial) -> None:
    engine.enroll("acme", "vip@example.com", "trial", fields={"tier": "enterprise"})
    engine.enroll("acme", "ada@example.com", "trial", fields={"tier": "free"})
    track("acme", "vip@example.com", "booked_meeting")
    track("acme", "ada@example.com", "booked_meeting")
    assert _enrollment("vip@example.com").current_node == "vip"
    assert _enrollment("ada@example.com").current_node == "waiting"


def test_a_wait_node_moves_on_its_event_or_when_its_time_has_elapsed(trial) -> None:
    for email in ["a@example.com", "b@example.com"]:
        engine.enroll("acme", email, "trial")
        track("acme", email, "booked_meeting")
    track("acme", "a@example.com", "booked_meeting")  # no event id: a second event
    assert _enrollment("a@example.com").status == Enrollment.COMPLETED
    [timer] = ScheduledAction.select().where(ScheduledAction.status == "pending")
    assert timer.run_at - utcnow() > timedelta(days=2, hours=23)
    assert timers.fire_timeout(timer.id, now=timer.run_at) == "fired"
    assert _enrollment("b@example.com").current_node == "nudge"


def test_a_goal_ends_the_enrollment_from_any_node_as_converted(trial) -> None:
    engine.enroll("acme", "ada@example.com", "trial")
    engine.enroll("acme", "bob@example.com", "trial")
    assert track("acme", "ada@example.com", "purchased", {"amount": 49}).moved == 1
    assert track("acme", "bob@example.com", "purchased", {"amount": 5}).moved == 0  # if: fails
    ada = _enrollment("ada@example.com")
    assert (ada.status, ada.exit_reason, ada.current_node) == ("converted", "goal:purchased", "intro")
    # No further email: the pending send was cancelled.
    assert not ScheduledAction.select().where(
        ScheduledAction.enrollment == ada, ScheduledAction.status == "pending").exists()
    [plan] = stats.goals(tenant_id="acme")
    assert (plan["enrolled"], plan["converted"], plan["conversion_rate"]) == (2, 1, 0.5)
    assert plan["nodes"]["intro"]["converted"] == 1


def test_a_goal_on_a_provider_event_converts(db) -> None:
    make_tenant()
    load_plan(TRIAL_PLAN.replace('goals: [{on: purchased, if: "event.amount >= 10"}]',
                                 "goals: [{on: click}]"))
    enrollment = engine.enroll("acme", "ada@example.com", "trial")
    # A click on an email of a node the contact has left still reaches the goal.
    assert engine.process_event(enrollment.id, "clicked", node="elsewhere")
    assert Enrollment.get_by_id(enrollment.id).status == Enrollment.CONVERTED


def test_an_event_for_a_contact_in_no_plan_is_stored_and_moves_no_one(trial) -> None:
    result = track("acme", "nobody@example.com", "purchased", {"amount": 100}, event_id="x")
    assert (result.stored, result.moved) == (True, 0)
    assert HostEvent.get().status == HostEvent.PROCESSED


@pytest.mark.parametrize(("args", "kwargs", "problem"), [
    (("ghost", "a@example.com", "purchased"), {}, "unknown tenant"),
    (("acme", "not an address", "purchased"), {}, "address"),
    (("acme", "a@example.com", "clicked"), {}, "built-in event"),
    (("acme", "a@example.com", "no spaces"), {}, "letters, digits"),
    (("acme", "a@example.com", "purchased", ["x"]), {}, "properties must map"),
    (("acme", "a@example.com", "purchased", {"x": float("nan")}), {}, "JSON values"),
    (("acme", "a@example.com", "purchased", {"x": "y" * 20_000}), {}, "limit is 16,384"),
    (("acme", "a@example.com", "purchased"), {"event_id": "x" * 200}, "event_id"),
    (("acme", "a@example.com", "purchased"), {"occurred_at": "yesterday"}, "ISO-8601"),
    (("acme", "a@example.com", "purchased"), {"occurred_at": "9999-12-31T23:00:00-05:00"},
     "out of range"),
    (("acme", "a@example.com", "purchased"), {"occurred_at": 1700000000}, "ISO-8601"),
])
def test_a_bad_event_is_refused_saying_why_and_stores_nothing(trial, args, kwargs, problem) -> None:
    with pytest.raises(TrackError, match=problem):
        track(*args, **kwargs)
    assert HostEvent.select().count() == 0


def test_a_condition_that_fails_at_run_time_is_false_not_an_error(trial) -> None:
    engine.enroll("acme", "ada@example.com", "trial")
    assert track("acme", "ada@example.com", "purchased", {"amount": "lots"}).moved == 0
    assert _enrollment().status == Enrollment.ACTIVE


def test_an_event_left_unprocessed_by_a_crash_is_processed_by_the_periodic_job(trial) -> None:
    engine.enroll("acme", "ada@example.com", "trial")
    row = host_events.checked_event("acme", "ada@example.com", "booked_meeting", event_id="e")
    HostEvent.create(**row)  # stored, then the process died before moving anyone
    assert host_events.process_pending_host_events(now=utcnow()) == 0  # not yet: grace
    assert host_events.process_pending_host_events(now=utcnow() + timedelta(minutes=2)) == 1
    assert host_events.process_pending_host_events(now=utcnow() + timedelta(minutes=2)) == 0
    assert _enrollment().current_node == "waiting"


def test_a_goal_racing_a_timer_has_one_outcome(trial) -> None:
    # Given contacts waiting, each with its elapsed timer due, and their purchases
    emails = [f"c{index}@example.com" for index in range(12)]
    for email in emails:
        engine.enroll("acme", email, "trial")
        track("acme", email, "booked_meeting", {}, event_id=f"b-{email}")
    due = [action.id for action in ScheduledAction.select().where(ScheduledAction.status == "pending")]
    later = utcnow() + timedelta(days=4)
    run_together(lambda: timers.fire_timeouts(due, now=later),
                 lambda: [track("acme", email, "purchased", {"amount": 50}, event_id=f"p-{email}")
                          for email in emails])
    # Then each contact either converted where it waited, or moved on to the nudge and
    # converted there (its nudge send cancelled): never both a nudge sent and a stay.
    for email in emails:
        enrollment = _enrollment(email)
        assert enrollment.status == Enrollment.CONVERTED
        visits = [v.node for v in NodeVisit.select().where(NodeVisit.enrollment == enrollment)
                  .order_by(NodeVisit.version)]
        assert visits in (["intro", "waiting"], ["intro", "waiting", "nudge"])
        assert not ScheduledAction.select().where(
            ScheduledAction.enrollment == enrollment,
            ScheduledAction.status.in_(["pending", "enqueued"])).exists()


def test_purge_drops_processed_host_events_past_retention_and_keeps_the_rest(trial) -> None:
    from outreach_actors.domain import maintenance

    track("acme", "ada@example.com", "purchased", event_id="old")
    HostEvent.update(received_at=utcnow() - timedelta(days=40)).execute()
    row = host_events.checked_event("acme", "ada@example.com", "purchased", event_id="unprocessed")
    HostEvent.create(**{**row, "received_at": utcnow() - timedelta(days=40)})
    maintenance.purge_old_data()
    assert [event.event_key for event in HostEvent.select()] == ["acme:unprocessed"]
