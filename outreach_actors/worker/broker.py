"""The Dramatiq broker chosen by ``OUTREACH_BROKER_URL``, with our middleware set."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse
from uuid import uuid4

import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import current_millis
from dramatiq.middleware import CurrentMessage
from periodiq import PeriodiqMiddleware

from outreach_actors.settings import Settings, SettingsError
from outreach_actors.worker.embedded import EmbeddedRedis, ensure_embedded_redis

logger = logging.getLogger(__name__)


def extra_middleware(settings: Settings) -> list[dramatiq.Middleware]:
    """Middleware every broker gets on top of Dramatiq's defaults (Pipelines included)."""
    from outreach_actors.worker.middleware import project_middleware

    return [
        CurrentMessage(),
        PeriodiqMiddleware(skip_delay=60),
        *project_middleware(settings),
    ]


def _redis_broker(url: str, settings: Settings) -> dramatiq.Broker:
    from dramatiq.brokers.redis import RedisBroker

    if url.startswith("unix://"):
        path = urlparse(url).path
        return RedisBroker(unix_socket_path=path, namespace=settings.broker_namespace)
    return RedisBroker(url=url, namespace=settings.broker_namespace)


def _rabbitmq_broker(url: str, settings: Settings) -> dramatiq.Broker:
    try:
        from dramatiq.brokers.rabbitmq import RabbitmqBroker
    except ImportError as exc:  # pika is an extra
        raise SettingsError(
            "OUTREACH_BROKER_URL is amqp:// but pika is not installed; "
            "install outreach_actors[rabbitmq]"
        ) from exc
    return RabbitmqBroker(url=url)


def broker_url_for(settings: Settings) -> str:
    """The URL actually used: the configured one or the embedded server's socket."""
    if settings.broker_url:
        return settings.broker_url
    return EmbeddedRedis(settings.data_dir).url


def make_broker(settings: Settings) -> dramatiq.Broker:
    """Build the broker for these settings, with every middleware added.

    Building does no I/O, so importing the package (from a Django or Flask app, or
    the CLI) never starts a server; the embedded Redis is started on first use.
    """
    url = broker_url_for(settings)
    scheme = url.split("://", 1)[0].lower()
    if scheme == "stub":
        broker: dramatiq.Broker = StubBroker()
    elif scheme in {"redis", "rediss", "unix"}:
        broker = _redis_broker(url, settings)
    elif scheme in {"amqp", "amqps"}:
        broker = _rabbitmq_broker(url, settings)
    else:  # Settings validation already refuses these.
        raise SettingsError(f"OUTREACH_BROKER_URL: unsupported scheme {scheme!r}")
    if not settings.broker_url:
        broker.add_middleware(EmbeddedRedisStarter(settings.data_dir))
    for middleware in extra_middleware(settings):
        broker.add_middleware(middleware)
    if settings.metrics_enabled:
        broker.add_middleware(_prometheus_middleware())
    return broker


def enqueue_many(broker: dramatiq.Broker, messages: Sequence[dramatiq.Message]) -> None:
    """Enqueue ``messages`` (none delayed), each with its middleware hooks, as
    ``broker.enqueue`` would: on Redis in one round trip, elsewhere one by one."""
    from dramatiq.brokers.redis import RedisBroker

    if not isinstance(broker, RedisBroker) or len(messages) < 2:
        for message in messages:
            broker.enqueue(message)
        return
    # RedisBroker.enqueue (Dramatiq 2.x; setup.cfg pins <3) with its dispatch script's
    # calls pipelined: a render's 20 sends cost one round trip, not 20 (each was as
    # much client CPU as a no-op message's fetch).
    copies = [message.copy(options={"redis_message_id": str(uuid4())}) for message in messages]
    for message in copies:
        broker.emit_before("enqueue", message, None)
    dispatch = broker.scripts["dispatch"]
    with broker.client.pipeline(transaction=False) as pipe:
        for message in copies:
            dispatch(keys=[broker.namespace], client=pipe, args=[
                "enqueue", current_millis(), message.queue_name, broker.broker_id,
                broker.heartbeat_timeout, broker.dead_message_ttl,
                broker._should_do_maintenance("enqueue"), broker._max_unpack_size(),
                message.options["redis_message_id"], message.encode(),
            ])
        pipe.execute()
    for message in copies:
        broker.emit_after("enqueue", message, None)


def _prometheus_middleware() -> dramatiq.Middleware:
    # Looked for, not imported: prometheus_client must be imported first after the
    # middleware's after_process_boot has pointed it at the directory its exporter
    # reads; imported sooner, every count stays in the worker's memory, unexported.
    if importlib.util.find_spec("prometheus_client") is None:
        raise SettingsError(
            "OUTREACH_METRICS_ENABLED is set but prometheus-client is missing; "
            "install outreach_actors[prometheus]"
        )
    from dramatiq.middleware.prometheus import Prometheus

    return Prometheus()


class EmbeddedRedisStarter(dramatiq.Middleware):
    """Starts (or joins) the embedded Redis server the first time the broker is used."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.started = False

    def ensure_started(self) -> None:
        if not self.started:
            ensure_embedded_redis(self.data_dir)
            self.started = True

    def before_worker_boot(self, broker, worker) -> None:
        self.ensure_started()

    def before_enqueue(self, broker, message, delay) -> None:
        self.ensure_started()
