"""The chaos run's host notification actor: records every notification it receives, one row per delivery.

The chaos run sets OUTREACH_NOTIFY_ACTOR to ``record_notification`` and its workers
import this module (``dramatiq outreach_actors outreach_actors.dev.chaos_notify``).
A row per delivery, not per id, so that the audit can count a notification received
twice by its stable id as well as one never received. The rows go to the run's own
PostgreSQL database (durable across the Redis restart the run injects); when it is
down the actor raises and Dramatiq retries it soon.
"""

from __future__ import annotations

from typing import Any

import dramatiq
import peewee

from outreach_actors.domain.store.models import BaseModel, utcnow

ACTOR_PATH = "outreach_actors.dev.chaos_notify.record_notification"
QUEUE = "chaos_notifications"


class ReceivedNotification(BaseModel):
    """One delivery of a notification to the host's actor."""

    notification_id = peewee.CharField(index=True)
    type = peewee.CharField()
    enrollment_id = peewee.IntegerField(null=True)
    received_at = peewee.DateTimeField(default=utcnow)


# Retried within seconds: the run is short, and PostgreSQL is down only a few seconds.
@dramatiq.actor(queue_name=QUEUE, max_retries=100, min_backoff=200, max_backoff=2000)
def record_notification(payload: dict[str, Any]) -> None:
    """Record one delivery of the notification ``payload`` (see domain/notifications.py)."""
    ReceivedNotification.create(notification_id=payload["id"], type=payload["type"],
                                enrollment_id=payload.get("enrollment_id"))


__all__ = ["ACTOR_PATH", "ReceivedNotification", "record_notification"]
