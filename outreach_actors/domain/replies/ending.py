"""What a reply does to its enrollment: a person's ends it (the one rule, so that it can
become a plan's default goal); an out-of-office's return date holds a wait node."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, time

from outreach_actors.domain import engine, goals, notifications
from outreach_actors.domain.plan_events import has_goal
from outreach_actors.domain.store.models import Enrollment, ScheduledAction
from outreach_actors.domain.stored_plans import plan_for_id
from outreach_actors.domain.vocabulary import EventType

#: The exit reason of an enrollment a reply ended: a goal reached (see goals.py).
REPLY_GOAL = goals.GOAL_REASON_PREFIX + EventType.REPLIED


def apply_reply(enrollment_id: int, *, now: datetime) -> str:
    """Route or end the enrollment on a person's reply, from whatever node it is at.

    A reply is a goal by default: unless the plan says ``stop_on_reply: false``, it
    converts the enrollment (exit reason ``goal:replied``; timers and sends
    cancelled), as ``goals: [{on: replied}]`` would. A node that routes ``replied``
    (``{on: replied, to: ...}``) takes its transition instead, unless the plan lists
    ``replied`` among its goals (goals win, as for every event). The host is told of
    the reply either way (OUTREACH_NOTIFY_ACTOR). Returns what happened: moved,
    converted or nothing.
    """
    return apply_replies([enrollment_id], now=now)[enrollment_id]


def apply_replies(enrollment_ids: Sequence[int], *, now: datetime) -> dict[int, str]:
    """apply_reply for the enrollments of many replies: one read of them, one conversion
    of those that end. An enrollment named twice is acted on once (the first: moved or
    converted, the rest: nothing)."""
    outcomes = dict.fromkeys(enrollment_ids, "nothing")
    live = [enrollment for enrollment in Enrollment.select().where(
                Enrollment.id.in_(sorted(outcomes))).order_by(Enrollment.id)
            if enrollment.status in Enrollment.LIVE]
    if not live:
        return outcomes
    notifications.record(notifications.REPLIED, [e.id for e in live], reason=EventType.REPLIED,
                         now=now)
    ending = []
    for enrollment in live:
        plan = plan_for_id(enrollment.plan_id)
        explicit_goal = has_goal(plan.goals, EventType.REPLIED)
        if not explicit_goal and enrollment.status == Enrollment.ACTIVE \
                and plan.transition_for(enrollment.current_node, EventType.REPLIED) is not None:
            moved = engine.process_event(enrollment.id, EventType.REPLIED, now=now)
            outcomes[enrollment.id] = "moved" if moved else "nothing"
        elif explicit_goal or plan.stop_on_reply:
            ending.append(enrollment)
    for enrollment in goals.convert(ending, EventType.REPLIED, now=now):
        outcomes[enrollment.id] = "converted"
    return outcomes


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
