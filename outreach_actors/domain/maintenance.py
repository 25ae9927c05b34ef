"""Housekeeping: purge raw webhook bodies, Inbound Parse posts and events past the
retention period."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from outreach_actors.domain.store.models import (
    Enrollment,
    HostEvent,
    InboundPost,
    MessageEvent,
    Notification,
    OutboundMessage,
    PeriodicTick,
    WebhookDelivery,
    utcnow,
)
from outreach_actors.settings import Settings, get_settings

logger = logging.getLogger(__name__)

# Tick rows only guard against a second scheduler sending the same tick.
TICK_RETENTION = timedelta(days=1)


def purge_old_data(*, now: datetime | None = None, settings: Settings | None = None) -> dict[str, int]:
    """Delete what is older than OUTREACH_RETENTION and no longer needed.

    Processed webhook deliveries go; failed ones stay until replayed (nothing
    received is dropped silently). Events go only once their enrollment has
    finished: an active contact's timers still look for its opens and clicks.
    """
    settings = settings or get_settings()
    now = now or utcnow()
    cutoff = now - settings.retention
    finished_messages = (
        OutboundMessage.select(OutboundMessage.id)
        .join(Enrollment)
        .where(Enrollment.status.not_in(Enrollment.LIVE))  # a paused one resumes
    )
    events = (
        MessageEvent.delete()
        .where(
            MessageEvent.received_at < cutoff,
            (MessageEvent.message.is_null()) | (MessageEvent.message.in_(finished_messages)),
        )
        .execute()
    )
    # Host events once processed, notifications once sent: the moves and sends are recorded.
    HostEvent.delete().where(HostEvent.status == HostEvent.PROCESSED,
                             HostEvent.received_at < cutoff).execute()
    Notification.delete().where(Notification.status == Notification.SENT,
                                Notification.created_at < cutoff).execute()
    deliveries = (
        WebhookDelivery.delete()
        .where(WebhookDelivery.status == WebhookDelivery.PROCESSED,
               WebhookDelivery.received_at < cutoff)
        .execute()
    )
    # Inbound Parse posts likewise: a failed one stays until replayed.
    posts = (
        InboundPost.delete()
        .where(InboundPost.status != InboundPost.FAILED, InboundPost.status != InboundPost.RECEIVED,
               InboundPost.received_at < cutoff)
        .execute()
    )
    ticks = PeriodicTick.delete().where(PeriodicTick.created_at < now - TICK_RETENTION).execute()
    counts = {"events": events, "deliveries": deliveries, "posts": posts, "ticks": ticks}
    logger.info("Purged events=%d deliveries=%d posts=%d ticks=%d", events, deliveries, posts,
                ticks)
    return counts
