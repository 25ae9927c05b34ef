"""Wiring for a process: Sentry first, then the broker, then the database binding."""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
from dramatiq.middleware import SkipMessage

from outreach_actors.domain import notifications
from outreach_actors.domain.store import models
from outreach_actors.domain.store.db import database_from_url
from outreach_actors.settings import Settings, get_settings
from outreach_actors.worker.broker import make_broker
from outreach_actors.worker.notify import send_to_host

logger = logging.getLogger(__name__)


def init_sentry(settings: Settings) -> bool:
    """Start sentry-sdk with the Dramatiq integration, if a DSN is configured.

    Must run before any broker is built: the integration patches Broker.__init__.
    """
    if not settings.sentry_dsn:
        return False
    try:
        import sentry_sdk
        from sentry_sdk.integrations.dramatiq import DramatiqIntegration
    except ImportError as exc:
        from outreach_actors.settings import SettingsError

        raise SettingsError(
            "OUTREACH_SENTRY_DSN is set but sentry-sdk is not installed; "
            "install outreach_actors[sentry]"
        ) from exc
    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        environment=settings.sentry_environment,
        integrations=[DramatiqIntegration()],
        before_send=sentry_before_send,
        # Frames' local variables would carry recipients' addresses and whole emails.
        include_local_variables=False,
    )
    return True


def bind_database(settings: Settings) -> None:
    models.bind(database_from_url(settings.database_url, settings))


def setup(settings: Settings | None = None) -> dramatiq.Broker:
    """Build and install the process-wide broker and database for these settings."""
    settings = settings or get_settings()
    init_sentry(settings)
    broker = make_broker(settings)
    dramatiq.set_broker(broker)
    bind_database(settings)
    notifications.install_sender(send_to_host)
    return broker


def install(settings: Settings) -> dramatiq.Broker:
    """Switch this process to other settings: new broker, database, actors moved over.

    For programs that configure themselves after import (the demo, host apps that
    build settings from their own config).
    """
    from outreach_actors.settings import configure

    actors = list(dramatiq.get_broker().actors.values())
    configure(settings)
    broker = setup(settings)
    rebind_actors(broker, actors)
    return broker


def rebind_actors(broker: dramatiq.Broker, actors: list[dramatiq.Actor]) -> None:
    """Move already-declared actors onto another broker (tests switch brokers)."""
    for actor in actors:
        actor.broker = broker
        broker.declare_actor(actor)


def sentry_before_send(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any] | None:
    """Drop flow control that reaches Sentry as an exception: deferrals and skipped duplicates."""
    exc_info = hint.get("exc_info")
    if exc_info and isinstance(exc_info[1], SkipMessage):
        return None
    return event
