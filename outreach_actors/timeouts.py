"""Fire one due timer: turn missing engagement into a synthetic event, exactly once."""

from __future__ import annotations

import logging
from datetime import datetime

from . import engine
from .metrics import count, observe
from .models import Enrollment, MessageEvent, ScheduledAction, database_proxy, utcnow
from .observability import tag
from .plans import ENGAGEMENT_TIMEOUTS
from .settings import get_settings

logger = logging.getLogger(__name__)


def claim_action(action_id: int, now: datetime) -> ScheduledAction | None:
    """``pending|enqueued -> running``; the claimed row, or None when another delivery
    holds or finished it. One statement: the row comes back with RETURNING."""
    claimed = (
        ScheduledAction.update(
            status=ScheduledAction.RUNNING, attempts=ScheduledAction.attempts + 1, fired_at=now,
            lease_until=now + get_settings().action_lease,
        )
        .where(
            ScheduledAction.id == action_id,
            ScheduledAction.status.in_([ScheduledAction.PENDING, ScheduledAction.ENQUEUED]),
        )
        .returning(ScheduledAction)
        .execute()
    )
    return next(iter(claimed), None)


def fire_timeout(action_id: int, *, now: datetime | None = None) -> str:
    """Run a timeout action; returns what happened: fired, skipped, replay or moved-on.

    The synthetic event, the move it causes and the action's completion commit in
    one transaction, so a worker killed half-way leaves nothing to undo: the
    reconciler enqueues the action again and it runs from the start.
    """
    now = now or utcnow()
    action = claim_action(action_id, now)
    if action is None:
        logger.info("Timeout action=%s skipped: already claimed or finished", action_id)
        return "replay"
    enrollment = Enrollment.get_by_id(action.enrollment_id)
    tag(action=action_id, enrollment=enrollment.id, tenant=enrollment.tenant_id, node=action.node)
    if (enrollment.status != Enrollment.ACTIVE or enrollment.current_node != action.node
            or enrollment.version != action.visit_version):
        ScheduledAction.finish(action_id, ScheduledAction.SKIPPED, "enrollment moved on", now=now)
        logger.info("Timeout action=%s skipped: enrollment=%s moved on", action_id, enrollment.id)
        return "moved-on"
    if (action.event in ENGAGEMENT_TIMEOUTS and action.message_id is not None
            and engine.engagement_seen(action.message_id, action.event)):
        ScheduledAction.finish(action_id, ScheduledAction.SKIPPED, "engagement seen", now=now)
        logger.info("Timeout action=%s skipped: %s was seen", action_id,
                    ENGAGEMENT_TIMEOUTS[action.event])
        return "skipped"
    with database_proxy.atomic():
        MessageEvent.insert(
            message=action.message_id, tenant=enrollment.tenant_id, type=action.event,
            synthetic=True, event_key=f"action:{action.id}", occurred_at=now, action=action,
            scheduled_for=action.run_at,
            data={"scheduled_for": action.run_at.isoformat(), "fired_at": now.isoformat(),
                  "node": action.node},
        ).on_conflict_ignore().execute()
        moved = engine.process_event(
            enrollment.id, action.event, node=action.node, visit_version=action.visit_version,
            now=now, enrollment=enrollment,
        )
        ScheduledAction.finish(action_id, ScheduledAction.DONE, "moved" if moved else "no transition", now=now)
    lateness = (now - action.run_at).total_seconds()
    observe("outreach_timer_lateness_seconds", lateness)
    count("outreach_events_total", type=action.event, synthetic="true")
    logger.info("Fired timeout action=%s event=%s enrollment=%s late_s=%.3f",
                action_id, action.event, enrollment.id, lateness)
    return "fired"
