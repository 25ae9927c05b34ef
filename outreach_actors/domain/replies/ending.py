"""What a person's reply does to its enrollment: the one rule, so that it can become a
plan's default goal."""

from __future__ import annotations

from datetime import datetime

from outreach_actors.domain import engine
from outreach_actors.domain.store.models import Enrollment
from outreach_actors.domain.stored_plans import plan_for_id
from outreach_actors.domain.vocabulary import EventType

#: The exit reason of an enrollment a reply ended.
REPLY_GOAL = "replied"


def apply_reply(enrollment_id: int, *, now: datetime) -> str:
    """Route or end the enrollment on a reply, from whatever node it is at: the node's
    ``replied`` transition when it has one; else, unless the plan says
    ``stop_on_reply: false``, the enrollment completes (exit reason ``replied``), its
    timers and sends cancelled. Returns what happened: moved, completed or nothing."""
    enrollment = Enrollment.get_or_none(Enrollment.id == enrollment_id)
    if enrollment is None or enrollment.status != Enrollment.ACTIVE:
        return "nothing"
    plan = plan_for_id(enrollment.plan_id)
    if plan.transition_for(enrollment.current_node, EventType.REPLIED) is not None:
        moved = engine.process_event(enrollment_id, EventType.REPLIED, now=now)
        return "moved" if moved else "nothing"
    if plan.stop_on_reply and engine.exit_enrollment(enrollment_id, REPLY_GOAL, now=now,
                                                     completed=True):
        return "completed"
    return "nothing"
