"""Per-contact control: unenroll, pause, resume; idempotent, and one outcome against the engine."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from outreach_actors.domain import control, engine, timers
from outreach_actors.domain.control import ControlError
from outreach_actors.domain.host_events import track
from outreach_actors.domain.store.models import Enrollment, NodeVisit, ScheduledAction, utcnow

from .concurrency import run_together
from .factories import THREE_NODE_PLAN, load_plan, make_tenant

TRIAL_PLAN = (Path(__file__).parent / "samples" / "plans" / "trial.yaml").read_text()


@pytest.fixture
def plans(db):
    make_tenant()
    load_plan(TRIAL_PLAN)
    load_plan(THREE_NODE_PLAN)
    return "acme"


def _waiting(email: str) -> Enrollment:
    """An enrollment of the trial plan waiting at its wait node, its elapsed timer pending."""
    enrollment = engine.enroll("acme", email, "trial")
    track("acme", email, "booked_meeting")
    return Enrollment.get_by_id(enrollment.id)


def _actions(enrollment: Enrollment, status: str) -> list[ScheduledAction]:
    return list(ScheduledAction.select().where(ScheduledAction.enrollment == enrollment.id,
                                               ScheduledAction.status == status))


def test_unenroll_from_one_plan_or_from_all_is_idempotent(plans) -> None:
    trial = engine.enroll("acme", "ada@example.com", "trial")
    onboarding = engine.enroll("acme", "ada@example.com", "onboarding")
    assert control.unenroll("acme", "ADA@example.com", "trial") == 1
    assert control.unenroll("acme", "ada@example.com", "trial") == 0
    assert Enrollment.get_by_id(trial.id).status == Enrollment.EXITED
    assert Enrollment.get_by_id(onboarding.id).status == Enrollment.ACTIVE
    assert control.unenroll("acme", "ada@example.com") == 1
    assert Enrollment.get_by_id(onboarding.id).exit_reason == "unenrolled"
    assert not ScheduledAction.select().where(ScheduledAction.status == "pending").exists()


def test_pause_holds_the_timers_and_resume_fires_the_overdue_ones(plans) -> None:
    enrollment = _waiting("ada@example.com")
    assert control.pause("acme", "ada@example.com", "trial") is True
    assert control.pause("acme", "ada@example.com", "trial") is False  # already paused
    [timer] = _actions(enrollment, "held")
    # While paused, an event moves nothing (a goal still converts: see test_host_events).
    assert track("acme", "ada@example.com", "booked_meeting").moved == 0
    assert control.resume("acme", "ada@example.com", "trial") is True
    assert control.resume("acme", "ada@example.com", "trial") is False
    [pending] = _actions(enrollment, "pending")
    assert pending.id == timer.id and pending.run_at == timer.run_at
    assert timers.fire_timeout(timer.id, now=timer.run_at) == "fired"
    assert Enrollment.get_by_id(enrollment.id).current_node == "nudge"


def test_a_timer_that_fires_while_paused_is_held_not_lost(plans) -> None:
    enrollment = _waiting("ada@example.com")
    [timer] = _actions(enrollment, "pending")
    ScheduledAction.update(status="enqueued").where(ScheduledAction.id == timer.id).execute()
    # The dispatcher enqueued it, then the pause landed, then the message arrived.
    Enrollment.update(status="paused").where(Enrollment.id == enrollment.id).execute()
    assert timers.fire_timeout(timer.id, now=timer.run_at) == "held"
    assert ScheduledAction.get_by_id(timer.id).status == "held"
    control.resume("acme", "ada@example.com", "trial")
    assert timers.fire_timeout(timer.id, now=timer.run_at) == "fired"


def test_resume_puts_an_overdue_send_in_the_next_send_window(plans) -> None:
    enrollment = engine.enroll("acme", "ada@example.com", "trial")
    control.pause("acme", "ada@example.com", "trial")
    [send] = _actions(enrollment, "held")
    later = utcnow() + timedelta(hours=5)
    control.resume("acme", "ada@example.com", "trial", now=later)
    assert ScheduledAction.get_by_id(send.id).run_at == later  # the trial plan has no window


def test_control_of_a_contact_with_no_live_enrollment_says_so(plans) -> None:
    with pytest.raises(ControlError, match="no active or paused enrollment"):
        control.pause("acme", "nobody@example.com", "trial")
    engine.enroll("acme", "ada@example.com", "trial")
    control.unenroll("acme", "ada@example.com")
    with pytest.raises(ControlError):
        control.resume("acme", "ada@example.com", "trial")


def test_pause_racing_timers_has_one_outcome_each(plans) -> None:
    # Given contacts whose timers are due, paused and fired at the same time
    emails = [f"c{index}@example.com" for index in range(10)]
    enrollments = [_waiting(email) for email in emails]
    due = [a.id for e in enrollments for a in _actions(e, "pending")]
    later = utcnow() + timedelta(days=4)
    run_together(lambda: timers.fire_timeouts(due, now=later),
                 lambda: [control.pause("acme", email, "trial") for email in emails])
    # Then each contact is paused, and either moved on before the pause (its nudge send
    # held) or still waiting (its timer held): in both cases exactly one open action, held.
    for enrollment in enrollments:
        enrollment = Enrollment.get_by_id(enrollment.id)
        assert enrollment.status == Enrollment.PAUSED
        visits = NodeVisit.select().where(NodeVisit.enrollment == enrollment.id).count()
        [held] = _actions(enrollment, "held")
        assert (enrollment.current_node, visits, held.node) in (
            ("waiting", 2, "waiting"), ("nudge", 3, "nudge"))
        assert not _actions(enrollment, "pending") and not _actions(enrollment, "running")
    # And resuming them all lets each go on from where it stood.
    for email in emails:
        control.resume("acme", email, "trial")
    timers.fire_timeouts(due, now=later)
    assert all(e.current_node == "nudge" for e in Enrollment.select().where(Enrollment.plan_id > 0)
               if e.contact.email in emails)


def test_unenroll_racing_a_timer_has_one_outcome(plans) -> None:
    emails = [f"u{index}@example.com" for index in range(10)]
    enrollments = [_waiting(email) for email in emails]
    due = [a.id for e in enrollments for a in _actions(e, "pending")]
    run_together(lambda: timers.fire_timeouts(due, now=utcnow() + timedelta(days=4)),
                 lambda: [control.unenroll("acme", email) for email in emails])
    for enrollment in enrollments:
        enrollment = Enrollment.get_by_id(enrollment.id)
        assert enrollment.status == Enrollment.EXITED
        assert not ScheduledAction.select().where(
            ScheduledAction.enrollment == enrollment.id,
            ScheduledAction.status.in_(["pending", "enqueued", "held"])).exists()


def test_an_unsubscribe_ends_a_paused_enrollment_and_its_held_actions(plans) -> None:
    enrollment = _waiting("ada@example.com")
    control.pause("acme", "ada@example.com", "trial")
    assert engine.exit_contact_enrollments("acme", "ada@example.com", "unsubscribed") == 1
    assert Enrollment.get_by_id(enrollment.id).status == Enrollment.EXITED
    assert not _actions(enrollment, "held") and _actions(enrollment, "cancelled")


def test_a_send_whose_enrollment_was_paused_after_dispatch_is_held_then_rendered(settings) -> None:
    from outreach_actors.domain import mail

    make_tenant()
    load_plan(THREE_NODE_PLAN)
    enrollment = engine.enroll("acme", "ada@example.com", "onboarding", fields={"first_name": "Ada"})
    [send] = _actions(enrollment, "pending")
    # The dispatcher enqueued it, then the pause landed before the render ran.
    ScheduledAction.update(status="enqueued").where(ScheduledAction.id == send.id).execute()
    Enrollment.update(status="paused").where(Enrollment.id == enrollment.id).execute()
    assert mail.render_action(send.id) is None
    assert ScheduledAction.get_by_id(send.id).status == "held"
    control.resume("acme", "ada@example.com", "onboarding")
    assert mail.render_action(send.id) is not None  # rendered once resumed, not lost


def test_a_click_while_paused_moves_the_contact_once_resumed(plans) -> None:
    # The chaos run found this: a click on the email of a paused enrollment was stored
    # but moved nothing (only an active enrollment moves), and once resumed the email's
    # no_open timer was skipped on that click: the contact stayed at the node for good.
    from outreach_actors.domain import ingest
    from outreach_actors.domain.store.models import MessageEvent, OutboundMessage

    enrollment = engine.enroll("acme", "ada@example.com", "onboarding")
    [send] = _actions(enrollment, "pending")
    ScheduledAction.update(status="done").where(ScheduledAction.id == send.id).execute()
    message = OutboundMessage.create(
        tenant="acme", enrollment=enrollment, action=send, node="intro", dedupe_key="k",
        status="sent", to_email="ada@example.com", from_email="sales@acme.test", subject="s",
        html="h", text="t", sent_at=utcnow())
    # Given the enrollment paused, and a click on its email stored while it is
    assert control.pause("acme", "ada@example.com", "onboarding")
    MessageEvent.create(message=message, tenant="acme", type="clicked", event_key="sg:c1",
                        occurred_at=utcnow())
    assert ingest.handle_message_event(message.id, "clicked", utcnow()) is False
    assert Enrollment.get_by_id(enrollment.id).current_node == "intro"
    # When it is resumed
    assert control.resume("acme", "ada@example.com", "onboarding")
    # Then the click moves it, once (to the exit: a second resume finds it ended)
    resumed = Enrollment.get_by_id(enrollment.id)
    assert (resumed.current_node, resumed.status) == ("thanks", Enrollment.COMPLETED)
    assert [visit.node for visit in NodeVisit.select().where(NodeVisit.enrollment == enrollment.id)
            .order_by(NodeVisit.version)] == ["intro", "thanks"]
    with pytest.raises(ControlError):
        control.resume("acme", "ada@example.com", "onboarding")
