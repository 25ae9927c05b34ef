"""The periodic actors that periodiq schedules: dispatch, reconcile, purge, reputation."""

from __future__ import annotations

import dramatiq
from periodiq import cron

from outreach_actors.domain import (
    dispatch,
    host_events,
    ingest,
    maintenance,
    notifications,
    reputation,
)
from outreach_actors.domain.mail import ambiguous
from outreach_actors.domain.replies import forward
from outreach_actors.domain.store.counters import fold_counts
from outreach_actors.domain.store.models import InboundPost, database_proxy
from outreach_actors.settings import get_settings
from outreach_actors.worker.actors.mail import (
    enqueue_actions,
    enqueue_send,
    requeue_actions,
    requeue_send,
)
from outreach_actors.worker.actors.replies import enqueue_inbound_post, forward_reply
from outreach_actors.worker.actors.webhooks import enqueue_delivery


@dramatiq.actor(queue_name="periodic", max_retries=0, periodic=cron("* * * * *"))
def dispatch_due(remaining: int | None = None) -> None:
    """Enqueue due actions; started every minute, it repeats every dispatch interval.

    periodiq ticks once a minute; each tick starts a short chain of runs spaced by
    OUTREACH_DISPATCH_INTERVAL that ends before the next tick, so chains never pile up.
    """
    settings = get_settings()
    dispatch.dispatch_due_actions(enqueue_actions, settings=settings)
    interval_ms = int(settings.dispatch_interval.total_seconds() * 1000)
    if remaining is None:
        remaining = max(0, 60_000 // max(interval_ms, 1) - 1)
    if remaining > 0 and interval_ms > 0:
        dispatch_due.send_with_options(args=(remaining - 1,), delay=interval_ms)


@dramatiq.actor(queue_name="periodic", max_retries=0, periodic=cron("* * * * *"))
def reconcile() -> None:
    """Repair what crashes leave behind.

    Actions whose lease expired are enqueued again; sends that were lost are
    enqueued again and sends cut short become ambiguous; ambiguous sends past
    their window are settled by policy; webhook deliveries and Inbound Parse posts
    stored but never read, and forwards never sent, are enqueued again; host
    events stored but not processed are processed; host notifications left
    pending are sent; the funnel's count deltas are summed.
    """
    settings = get_settings()
    dispatch.reconcile_expired_leases(requeue_actions, settings=settings)
    dispatch.reconcile_stuck_messages(enqueue_send, settings=settings)
    ambiguous.settle_ambiguous_sends(requeue_send, settings=settings)
    ingest.requeue_stale_deliveries(enqueue_delivery, settings.action_lease)
    with dispatch.dispatch_after_commit(enqueue_actions, settings=settings):
        host_events.process_pending_host_events()
    notifications.send_pending_notifications()
    ingest.requeue_stale_deliveries(enqueue_inbound_post, settings.action_lease,
                                    model=InboundPost)
    forward.requeue_pending_forwards(forward_reply.send, settings.action_lease)
    # The funnel's deltas, summed once a minute, so that `outreach stats` reads few rows.
    fold_counts(database_proxy.obj)


@dramatiq.actor(queue_name="periodic", max_retries=0, periodic=cron("17 3 * * *"))
def purge() -> None:
    """Daily: delete raw webhook bodies and finished contacts' events past retention."""
    maintenance.purge_old_data()


@dramatiq.actor(queue_name="periodic", max_retries=0, periodic=cron("*/5 * * * *"))
def check_reputation() -> None:
    """Every five minutes: pause senders and plans whose complaint or hard-bounce rate
    is past its threshold (see domain/reputation.py)."""
    reputation.check_reputation()
