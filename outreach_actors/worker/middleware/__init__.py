"""Dramatiq middleware for the rules that cut across actors: rate limits, idempotency."""

from __future__ import annotations

import logging

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from outreach_actors.settings import Settings, SettingsError, env_name
from outreach_actors.worker.embedded import ensure_embedded_redis
from outreach_actors.worker.leases import Leases, MemoryLeases, RedisLeases
from outreach_actors.worker.limiters import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from outreach_actors.worker.middleware.database import DatabaseConnections
from outreach_actors.worker.middleware.idempotency import Idempotency
from outreach_actors.worker.middleware.outages import install_service_outages
from outreach_actors.worker.middleware.periodic import PeriodicTickLock
from outreach_actors.worker.middleware.polling import PROMPT_QUEUES, WorkerPolling
from outreach_actors.worker.middleware.rate_limits import RateLimits
from outreach_actors.worker.middleware.render_processes import RenderProcesses
from outreach_actors.worker.middleware.skips import install_quiet_skips
from outreach_actors.worker.middleware.startup import ConfigurationChecks

logger = logging.getLogger(__name__)


def state_redis(broker: dramatiq.Broker, settings: Settings) -> redis.Redis | None:
    """The Redis that keeps rate-limit and lease state for ``broker``; None means in-process.

    A Redis broker (embedded included) keeps it in its own server; RabbitMQ in
    ``state_redis_url`` or else the embedded server; the stub broker in memory.
    """
    if isinstance(broker, StubBroker):
        return None
    if isinstance(broker, RedisBroker):
        return broker.client
    if settings.state_redis_url:
        return redis.Redis.from_url(settings.state_redis_url)
    logger.warning(
        "Rate limits and idempotency leases are kept in the embedded Redis of this host; "
        "with workers on several hosts set %s.", env_name("state_redis_url"),
    )
    return ensure_embedded_redis(settings.data_dir).client()


class BrokerState:
    """The limiter and lease store of one broker, sharing one Redis client.

    Resolved when the first worker boots: building a broker does no I/O.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client: redis.Redis | None = None
        self.resolved = False

    def redis(self, broker: dramatiq.Broker) -> redis.Redis | None:
        if not self.resolved:
            self.client, self.resolved = state_redis(broker, self.settings), True
        return self.client

    def limiter(self, broker: dramatiq.Broker) -> RateLimiter:
        client = self.redis(broker)
        if client is None:
            return MemoryRateLimiter()
        return RedisRateLimiter(client, prefix=f"{self.settings.broker_namespace}:ratelimit:")

    def leases(self, broker: dramatiq.Broker) -> Leases:
        client = self.redis(broker)
        if client is None:
            return MemoryLeases()
        return RedisLeases(client, prefix=f"{self.settings.broker_namespace}:idempotency:")


def _ms(settings: Settings, name: str) -> int:
    value = int(getattr(settings, name).total_seconds() * 1000)
    if value <= 0:
        raise SettingsError(f"{env_name(name)} must be longer than zero")
    return value


def project_middleware(settings: Settings) -> list[dramatiq.Middleware]:
    """The project's own middleware, in the order it must run.

    The configuration is checked first: a worker it refuses has touched nothing.
    The database connection opens next (the others may query) and closes last.
    The periodic tick lock comes next: a tick that already ran needs nothing else.
    Idempotency runs before RateLimits: a duplicate is skipped before it can take
    a rate-limit slot, and when RateLimits defers a message, Idempotency releases
    the message's lease in ``after_skip_message``.
    """
    state = BrokerState(settings)
    install_quiet_skips()  # their skips are flow control: no WARNING from Dramatiq for each
    install_service_outages()  # an outage is one line per message, not a traceback
    return [
        ConfigurationChecks(settings),
        WorkerPolling(
            interval_ms=_ms(settings, "worker_idle_poll_interval"),
            prompt_queues=PROMPT_QUEUES,
            prompt_interval_ms=_ms(settings, "worker_poll_interval"),
        ),
        DatabaseConnections(),
        PeriodicTickLock(),
        Idempotency(
            leases_for=state.leases,
            lease_ttl=_ms(settings, "idempotency_lease"),
            done_ttl=_ms(settings, "idempotency_done_ttl"),
            duplicate_delay=_ms(settings, "idempotency_duplicate_delay"),
        ),
        RateLimits(
            limiter_for=state.limiter,
            max_deferral=_ms(settings, "ratelimit_max_deferral"),
        ),
        RenderProcesses(settings),
    ]
