"""Timeouts: a synthetic event exactly once, skipped when engagement was seen or the contact moved."""

from __future__ import annotations

import pytest

from outreach_actors.domain import engine, timers
from outreach_actors.domain.store.models import (
    Enrollment,
    MessageEvent,
    OutboundMessage,
    ScheduledAction,
    utcnow,
)

from .factories import load_plan, make_tenant


@pytest.fixture
def sent(settings):
    """Ada's intro email, sent, with its no_open timer scheduled."""
    make_tenant()
    load_plan()
    enrollment = engine.enroll("acme", "ada@example.com", "onboarding")
    action = ScheduledAction.get(ScheduledAction.enrollment == enrollment)
    message = OutboundMessage.create(
        tenant="acme", enrollment=enrollment, action=action, node="intro", dedupe_key="k",
        status="sent", to_email="ada@example.com", from_email="sales@acme.test", subject="s",
        html="h", text="t", sent_at=utcnow(),
    )
    engine.after_send(message)
    timer = ScheduledAction.get(ScheduledAction.kind == "timeout")
    return message, timer


def real_event(message, type_: str, **data) -> None:
    MessageEvent.create(message=message, type=type_, event_key=f"sg:{type_}", occurred_at=utcnow(),
                        data=data)


def test_no_open_fires_once_and_moves_the_contact(sent) -> None:
    message, timer = sent
    assert timers.fire_timeout(timer.id) == "fired"
    assert timers.fire_timeout(timer.id) == "replay"  # run twice: nothing more
    [event] = MessageEvent.select().where(MessageEvent.synthetic == True)  # noqa: E712
    assert (event.type, event.action_id, event.message_id) == ("no_open", timer.id, message.id)
    assert event.scheduled_for == timer.run_at
    assert Enrollment.get_by_id(message.enrollment_id).current_node == "bump"


@pytest.mark.parametrize("engagement", ["opened", "clicked"])
def test_no_open_is_skipped_when_the_contact_opened_or_clicked(sent, engagement) -> None:
    message, timer = sent
    real_event(message, engagement)
    assert timers.fire_timeout(timer.id) == "skipped"
    assert ScheduledAction.get_by_id(timer.id).status == "skipped"
    assert Enrollment.get_by_id(message.enrollment_id).current_node == "intro"


def test_a_machine_open_is_not_engagement_by_default(sent, data_dir) -> None:
    message, timer = sent
    real_event(message, "opened", machine_open=True)
    assert timers.fire_timeout(timer.id) == "fired"


def test_a_machine_open_counts_when_the_setting_says_so(sent, data_dir) -> None:
    from outreach_actors.settings import configure

    from .conftest import make_settings

    configure(make_settings(data_dir, machine_opens_are_engagement=True))
    message, timer = sent
    real_event(message, "opened", machine_open=True)
    assert timers.fire_timeout(timer.id) == "skipped"


def test_a_late_timeout_after_the_contact_moved_on_is_skipped(sent) -> None:
    message, timer = sent
    # The claim is taken by a worker before the click arrives, as in a race.
    ScheduledAction.update(status="enqueued").where(ScheduledAction.id == timer.id).execute()
    engine.process_event(message.enrollment_id, "bounced", node="intro")
    assert ScheduledAction.get_by_id(timer.id).status == "cancelled"
    assert timers.fire_timeout(timer.id) == "replay"
    # And one already running when the move happened re-checks and skips.
    ScheduledAction.update(status="enqueued").where(ScheduledAction.id == timer.id).execute()
    assert timers.fire_timeout(timer.id) == "moved-on"
    assert MessageEvent.select().where(MessageEvent.synthetic == True).count() == 0  # noqa: E712
