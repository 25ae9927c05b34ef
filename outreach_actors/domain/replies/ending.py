"""What a reply does to its enrollment: a person's ends it (the one rule, so that it can
become a plan's default goal); an out-of-office's return date holds a wait node."""

from __future__ import annotations

from datetime import date, datetime, time

from outreach_actors.domain import engine
from outreach_actors.domain.store.models import Enrollment, ScheduledAction
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


def wait_for_return(enrollment_id: int, back: date) -> int:
    """Hold the wait node an auto-reply routed the enrollment to until its writer is
    back: its pending timers run at ``back`` (midnight UTC; the next email still keeps
    the plan's send window) when that is later than the node's own ``after``. Returns
    the timers moved."""
    enrollment = Enrollment.get_or_none(Enrollment.id == enrollment_id)
    if enrollment is None or enrollment.status != Enrollment.ACTIVE:
        return 0
    if plan_for_id(enrollment.plan_id).node(enrollment.current_node).type != "wait":
        return 0
    resume = datetime.combine(back, time.min)
    return (ScheduledAction.update(run_at=resume)
            .where(ScheduledAction.enrollment == enrollment_id,
                   ScheduledAction.node == enrollment.current_node,
                   ScheduledAction.visit_version == enrollment.version,
                   ScheduledAction.status == ScheduledAction.PENDING,
                   ScheduledAction.run_at < resume)
            .execute())
