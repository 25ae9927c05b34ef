"""Operator control of one contact: unenroll from one plan or all, pause and resume one
enrollment. Each is a conditional update, idempotent and safe against the engine.

Pausing keeps the enrollment where it is (its version unchanged, so a click on an email
sent before the pause still counts after it) and holds its pending actions
(``held``). A timer or render that had already claimed its action when the pause
landed finds the enrollment paused and holds the action too (``hold_actions``); an
email already rendered and handed to the sender still goes out. Resuming makes the
held actions pending again: timers that fell due fire at once, in order; a send that
fell due waits for the plan's next send window.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime

import peewee

from outreach_actors.domain import engine, notifications
from outreach_actors.domain.addresses import address_key
from outreach_actors.domain.engagement import counts_for_plans
from outreach_actors.domain.store.models import (
    Contact,
    Enrollment,
    MessageEvent,
    OutboundMessage,
    Plan,
    ScheduledAction,
    database_proxy,
    utcnow,
)
from outreach_actors.domain.stored_plans import plan_for_id
from outreach_actors.domain.windows import next_send_time

logger = logging.getLogger(__name__)

#: The exit reason of an enrollment an operator or the host ended.
UNENROLLED = "unenrolled"
_OPEN = (ScheduledAction.PENDING, ScheduledAction.ENQUEUED)
MAX_ATTEMPTS = 5


class ControlError(ValueError):
    """The contact has no enrollment to act on (not enrolled, or it ended); the message
    says which."""


def _live_enrollments(tenant_id: str, email: str, plan_name: str | None) -> list[Enrollment]:
    query = (Enrollment.select(Enrollment.id, Enrollment.version, Enrollment.status,
                               Enrollment.current_node, Enrollment.plan, Enrollment.contact)
             .join(Contact).switch(Enrollment).join(Plan)
             .where(Enrollment.tenant == tenant_id, Contact.email == address_key(email),
                    Enrollment.status.in_(Enrollment.LIVE)))
    if plan_name is not None:
        query = query.where(Plan.name == plan_name)
    return list(query.order_by(Enrollment.id))


def unenroll(tenant_id: str, email: str, plan_name: str | None = None, *,
             now: datetime | None = None) -> int:
    """End the contact's live enrollments in ``plan_name`` (None: in every plan of the
    tenant) as exited, their actions cancelled; how many this call ended (0 when
    there were none left: safe to call twice)."""
    now = now or utcnow()
    ended = 0
    for _ in range(MAX_ATTEMPTS):
        enrollments = _live_enrollments(tenant_id, email, plan_name)
        if not enrollments:
            break
        with database_proxy.atomic():
            won = [enrollment_id for (enrollment_id,) in Enrollment.update(
                status=Enrollment.EXITED, exit_reason=UNENROLLED, version=Enrollment.version + 1,
                updated_at=now,
            ).where(peewee.Tuple(Enrollment.id, Enrollment.version)
                    .in_([(e.id, e.version) for e in enrollments]),
                    Enrollment.status.in_(Enrollment.LIVE)).returning(Enrollment.id).tuples().execute()]
            _cancel_actions(won, now)
            notifications.record(notifications.EXITED, won, reason=UNENROLLED, now=now)
        ended += len(won)
        if len(won) == len(enrollments):
            break
    if ended:
        logger.info("Unenrolled %d enrollment(s) of a contact of tenant=%s plan=%s",
                    ended, tenant_id, plan_name or "*")
    return ended


def _cancel_actions(enrollment_ids: Sequence[int], now: datetime) -> None:
    if enrollment_ids:
        ScheduledAction.update(status=ScheduledAction.CANCELLED, finished_at=now).where(
            ScheduledAction.enrollment.in_(list(enrollment_ids)),
            ScheduledAction.status.in_([*_OPEN, ScheduledAction.HELD]),
        ).execute()


def _one_enrollment(tenant_id: str, email: str, plan_name: str) -> Enrollment:
    enrollments = _live_enrollments(tenant_id, email, plan_name)
    if not enrollments:
        raise ControlError(f"{address_key(email)!r:.100} has no active or paused enrollment in "
                           f"plan {plan_name!r} of tenant {tenant_id!r}")
    return enrollments[-1]  # the newest, for a plan that allows re-entry


def pause(tenant_id: str, email: str, plan_name: str, *, now: datetime | None = None) -> bool:
    """Pause the contact's enrollment in the plan; True if this call paused it, False if
    it was paused already. ControlError when it has none that is active or paused."""
    return _switch(tenant_id, email, plan_name, Enrollment.ACTIVE, Enrollment.PAUSED,
                   _hold_open, now or utcnow())


def resume(tenant_id: str, email: str, plan_name: str, *, now: datetime | None = None) -> bool:
    """Resume the contact's paused enrollment in the plan; True if this call resumed it,
    False if it was active already. ControlError when it has none that is active or paused."""
    return _switch(tenant_id, email, plan_name, Enrollment.PAUSED, Enrollment.ACTIVE,
                   _release_held, now or utcnow())


def _switch(tenant_id: str, email: str, plan_name: str, from_status: str, to_status: str,
            then: Callable[[Enrollment, datetime], None], now: datetime) -> bool:
    """``from_status -> to_status`` by a conditional update and, if this call made it,
    ``then`` in the same transaction."""
    enrollment = _one_enrollment(tenant_id, email, plan_name)
    with database_proxy.atomic():
        switched = Enrollment.update(status=to_status, updated_at=now).where(
            Enrollment.id == enrollment.id, Enrollment.status == from_status).execute()
        if switched:
            then(enrollment, now)
    if switched:
        logger.info("Enrollment=%s is %s", enrollment.id, to_status)
    return bool(switched)


def _hold_open(enrollment: Enrollment, now: datetime) -> None:
    ScheduledAction.update(status=ScheduledAction.HELD).where(
        ScheduledAction.enrollment == enrollment.id, ScheduledAction.status.in_(_OPEN)).execute()


def _release_held(enrollment: Enrollment, now: datetime) -> None:
    """Held actions pending again; a send that fell due meanwhile at the next send
    window (timers keep their time: the dispatcher fires overdue ones in order)."""
    plan = plan_for_id(enrollment.plan_id)
    held = list(ScheduledAction.select(ScheduledAction.id, ScheduledAction.kind,
                                       ScheduledAction.run_at)
                .where(ScheduledAction.enrollment == enrollment.id,
                       ScheduledAction.status == ScheduledAction.HELD))
    for action in held:
        run_at = action.run_at
        if action.kind == ScheduledAction.SEND and run_at < now:
            timezone = Contact.select(Contact.timezone).where(
                Contact.id == enrollment.contact_id).scalar()
            run_at = next_send_time(now, plan.send_window, timezone)
        ScheduledAction.update(status=ScheduledAction.PENDING, run_at=run_at, lease_until=None).where(
            ScheduledAction.id == action.id, ScheduledAction.status == ScheduledAction.HELD,
        ).execute()
    _apply_missed_events(enrollment, now)


def _apply_missed_events(enrollment: Enrollment, now: datetime) -> None:
    """Move the resumed enrollment on the first event its current email got while it was
    paused (stored, but only an active enrollment moves): else a click during the pause
    was lost, and the email's no_open/no_click timers, skipped on that engagement, left
    the contact at the node for good."""
    plan = plan_for_id(enrollment.plan_id)
    visit = ScheduledAction.select(ScheduledAction.id).where(
        ScheduledAction.enrollment == enrollment.id,
        ScheduledAction.node == enrollment.current_node,
        ScheduledAction.visit_version == enrollment.version)
    events = (MessageEvent.select(MessageEvent.type, MessageEvent.data).join(OutboundMessage)
              .where(OutboundMessage.action.in_(visit),
                     MessageEvent.synthetic == False)  # noqa: E712 (peewee expression)
              .order_by(MessageEvent.occurred_at, MessageEvent.id).tuples())
    for event_type, data in events:
        if counts_for_plans(event_type, data) and (
                plan.transition_for(enrollment.current_node, event_type) is not None):
            engine.process_event(enrollment.id, event_type, node=enrollment.current_node,
                                 visit_version=enrollment.version, now=now)
            return


def hold_actions(action_ids: Sequence[int]) -> set[int]:
    """Claimed actions whose enrollment was found paused: held if it still is, given
    back (``pending``) if it was resumed meanwhile; returns the ids held.

    Two conditional statements, so a resume landing between the read and this write
    leaves no action held under an active enrollment.
    """
    if not action_ids:
        return set()
    ids = sorted(set(action_ids))
    paused = Enrollment.select(Enrollment.id).where(Enrollment.status == Enrollment.PAUSED)
    held = {action_id for (action_id,) in ScheduledAction.update(status=ScheduledAction.HELD)
            .where(ScheduledAction.id.in_(ids), ScheduledAction.enrollment.in_(paused))
            .returning(ScheduledAction.id).tuples().execute()}
    ScheduledAction.update(status=ScheduledAction.PENDING, lease_until=None).where(
        ScheduledAction.id.in_([i for i in ids if i not in held]),
        ScheduledAction.status.in_([ScheduledAction.RUNNING, ScheduledAction.ENQUEUED]),
    ).execute()
    return held
