"""Run each periodiq tick once, however many ``periodiq`` processes sent it."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import dramatiq
import peewee

from outreach_actors.domain.store.models import PeriodicTick, database_proxy
from outreach_actors.worker.middleware.skips import quiet_skip


def tick_of(scheduled_at: str) -> str:
    """The minute a periodiq message was scheduled for, in UTC (cron's granularity)."""
    moment = datetime.fromisoformat(scheduled_at)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M")


class PeriodicTickLock(dramatiq.Middleware):
    """Middleware that skips a periodic message whose tick already ran.

    periodiq has no lock: two schedulers started by mistake send every tick twice.
    The first message of a tick inserts a unique (job, tick) row; the others find
    it taken and are skipped. Messages sent by hand (no ``scheduled_at``) always run.
    """

    def __init__(self) -> None:
        self.logger = logging.getLogger(type(self).__name__)

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        actor = broker.get_actor(message.actor_name)
        scheduled_at = message.options.get("scheduled_at")
        if not actor.options.get("periodic") or not scheduled_at:
            return
        tick = tick_of(scheduled_at)
        try:
            with database_proxy.atomic():
                PeriodicTick.create(job=message.actor_name, tick=tick)
        except peewee.IntegrityError:
            self.logger.info("Skipping %s for tick %s: it already ran", message.actor_name, tick)
            raise quiet_skip(message.message_id, "tick already ran") from None
