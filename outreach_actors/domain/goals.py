"""Goals: a plan's ``goals:`` end an enrollment from any node as converted (its timers
and sends cancelled, so no further email goes), and the conversion figures of stats.

A split's holdout contacts left the plan at once, unmailed; a goal they reach later
still converts them (``convertible``), so that an experiment shows the conversions
the emails did not cause. Kept as an ended enrollment rather than a live one that only
a goal could end: nothing waits, nothing is held, and a plan without goals is unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

import peewee

from outreach_actors.domain import notifications
from outreach_actors.domain.splits import HOLDOUT_EXIT_REASON
from outreach_actors.domain.store.models import Enrollment, ScheduledAction

logger = logging.getLogger(__name__)

#: The exit reason of a converted enrollment: ``goal:<event>``.
GOAL_REASON_PREFIX = "goal:"


def convertible() -> peewee.Expression:
    """The enrollments a goal may still convert: live ones, and a split's holdout."""
    return (Enrollment.status.in_(Enrollment.LIVE)
            | ((Enrollment.status == Enrollment.EXITED)
               & (Enrollment.exit_reason == HOLDOUT_EXIT_REASON)))


def _convertible(enrollment: Enrollment) -> bool:
    return enrollment.status in Enrollment.LIVE or (
        enrollment.status == Enrollment.EXITED and enrollment.exit_reason == HOLDOUT_EXIT_REASON)


def convert(enrollments: Sequence[Enrollment], event: str, *, now: datetime) -> list[Enrollment]:
    """End the enrollments, as read, as converted on ``event``; returns the ones this
    call converted, updated in place (version-guarded: an enrollment another writer
    moved or ended since it was read stays as that writer left it).

    Call inside a transaction: the conversion and the cancellations commit together.
    """
    # A paused enrollment converts too: the contact did what the plan was for; and a
    # holdout one, which the plan never mailed (see the module's docstring).
    active = sorted((e for e in enrollments if _convertible(e)), key=lambda e: e.id)
    if not active:
        return []
    reason = GOAL_REASON_PREFIX + event
    won = {
        enrollment_id for (enrollment_id,) in
        Enrollment.update(status=Enrollment.CONVERTED, exit_reason=reason,
                          version=Enrollment.version + 1, updated_at=now)
        .where(peewee.Tuple(Enrollment.id, Enrollment.version)
               .in_([(enrollment.id, enrollment.version) for enrollment in active]),
               convertible())
        .returning(Enrollment.id).tuples().execute()
    }
    if not won:
        return []
    # Every node's, not only the current one's: the enrollment is over.
    ScheduledAction.update(status=ScheduledAction.CANCELLED, finished_at=now).where(
        ScheduledAction.enrollment.in_(sorted(won)),
        ScheduledAction.status.in_([ScheduledAction.PENDING, ScheduledAction.ENQUEUED,
                                    ScheduledAction.HELD]),
    ).execute()
    notifications.record(notifications.GOAL_REACHED, sorted(won), reason=reason, now=now)
    converted = [enrollment for enrollment in active if enrollment.id in won]
    for enrollment in converted:
        enrollment.status, enrollment.exit_reason = Enrollment.CONVERTED, reason
        enrollment.version += 1
        enrollment.updated_at = now
    logger.info("Converted enrollment=%s on=%s", ",".join(str(e.id) for e in converted), event)
    return converted
