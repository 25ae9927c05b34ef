"""Host notifications, exactly once through an outbox: a row written in the transaction
of its effect (a goal reached, an exit, a failure, a reply, an unsubscribe), sent to the
host's actor (OUTREACH_NOTIFY_ACTOR) once that transaction has committed, and by the
periodic job when a crash came between the two.

Nothing is sent for an effect that rolled back (its row rolled back with it), and
nothing is lost (the row stays ``pending`` until sent). A crash after the send and
before the row is marked sends it again, with the same ``id``: hosts dedupe on it.

The payload (a JSON object, the actor's one argument)::

    {"id": "ntf_...", "type": "goal_reached", "tenant": "acme", "email": "ada@example.com",
     "plan": "trial", "plan_version": 2, "enrollment_id": 17, "node": "intro",
     "reason": "goal:purchased", "occurred_at": "2026-01-31T12:00:00"}
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import Any

from outreach_actors.domain.store.models import (
    Contact,
    Enrollment,
    Notification,
    Plan,
    database_proxy,
    insert_rows,
    utcnow,
)
from outreach_actors.settings import get_settings

logger = logging.getLogger(__name__)

#: The notification types (``type`` in the payload).
GOAL_REACHED, EXITED, FAILED = "goal_reached", "exited", "failed"
UNSUBSCRIBED, REPLIED = "unsubscribed", "replied"
NOTIFICATION_TYPES = (GOAL_REACHED, EXITED, FAILED, UNSUBSCRIBED, REPLIED)
#: Exit reasons that are an unsubscribe, for the host's purposes.
UNSUBSCRIBE_REASONS = frozenset({"unsubscribed", "complained"})
#: How long a pending notification is left to its after-commit send before the
#: periodic job sends it.
SEND_GRACE = timedelta(seconds=30)

# Sends a notification to the host: (id, payload). Installed by the worker layer.
Send = Callable[[str, dict[str, Any]], None]
_sender: Send | None = None
# The ids recorded by the current unit of work (see sending_after_commit).
_noted: ContextVar[list[str] | None] = ContextVar("outreach_notifications", default=None)


def install_sender(send: Send | None) -> None:
    """Hand the domain the function that sends one notification to the host's actor."""
    global _sender
    _sender = send


def exit_type(reason: str) -> str:
    """The notification type of an enrollment that ended with ``reason``."""
    if reason in {"send_failed", "ambiguous_send"}:
        return FAILED
    return UNSUBSCRIBED if reason in UNSUBSCRIBE_REASONS else EXITED


def record(kind: str, enrollment_ids: Sequence[int], *, reason: str,
           now: datetime | None = None) -> list[str]:
    """Write the notifications of an effect on these enrollments (in the caller's
    transaction, after the effect: each enrollment's version is the effect's); the ids
    written. Nothing when no OUTREACH_NOTIFY_ACTOR is set."""
    if not enrollment_ids or not get_settings().notify_actor:
        return []
    now = now or utcnow()
    rows = []
    for enrollment_id, version, tenant, node, email, plan, plan_version in (
        Enrollment.select(Enrollment.id, Enrollment.version, Enrollment.tenant,
                          Enrollment.current_node, Contact.email, Plan.name, Plan.version)
        .join(Contact).switch(Enrollment).join(Plan)
        .where(Enrollment.id.in_(sorted(set(enrollment_ids)))).tuples()
    ):
        notification_id = "ntf_" + uuid.uuid4().hex
        rows.append({"id": notification_id, "tenant": tenant, "type": kind, "created_at": now,
                     "dedupe_key": f"{kind}:{enrollment_id}:{version}", "payload": {
                         "id": notification_id, "type": kind, "tenant": tenant, "email": email,
                         "plan": plan, "plan_version": plan_version,
                         "enrollment_id": enrollment_id, "node": node, "reason": reason,
                         "occurred_at": now.isoformat()}})
    written = insert_rows(Notification, rows, ignore_conflicts=True, conflict_target="dedupe_key",
                          returning="id")
    noted = _noted.get()
    if noted is not None:
        noted.extend(written)
    return written


@contextmanager
def sending_after_commit() -> Iterator[None]:
    """Run the block; once it has committed, send the notifications it recorded (the
    periodic job is the safety net: a failure here is logged, the rows stay pending)."""
    token = _noted.set([])
    try:
        yield
        noted = _noted.get() or []
    finally:
        _noted.reset(token)
    if noted and not database_proxy.in_transaction():  # else: not committed yet
        send_notifications(noted)


def send_notifications(ids: Sequence[str], *, now: datetime | None = None) -> int:
    """Send these pending notifications and mark them sent; how many were sent."""
    if _sender is None or not ids:
        return 0
    now = now or utcnow()
    sent = 0
    for notification in Notification.select().where(Notification.id.in_(list(ids)),
                                                     Notification.status == Notification.PENDING):
        try:
            Notification.update(attempts=Notification.attempts + 1).where(
                Notification.id == notification.id).execute()
            _sender(notification.id, notification.payload)
        except Exception:
            logger.warning("Could not send notification=%s; the periodic job will",
                           notification.id, exc_info=True)
            continue
        Notification.update(status=Notification.SENT, sent_at=now).where(
            Notification.id == notification.id, Notification.status == Notification.PENDING,
        ).execute()
        sent += 1
    return sent


def send_pending_notifications(*, now: datetime | None = None, limit: int = 1000) -> int:
    """The periodic job: send the notifications a crash left pending; how many."""
    now = now or utcnow()
    ids = [notification_id for (notification_id,) in Notification.select(Notification.id).where(
        Notification.status == Notification.PENDING, Notification.created_at <= now - SEND_GRACE,
    ).order_by(Notification.created_at).limit(limit).tuples()]
    return send_notifications(ids, now=now)
