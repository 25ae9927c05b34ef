"""What the Flask, Django and standalone WSGI hosts share: settings, runtime, endpoints, enroll.

A host app configures the package once at start (``activate``): its settings
replace the environment's, the database is bound and the broker rebuilt for
them. Sentry is left to the host app, which initialises it for itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import peewee

from outreach_actors.domain import engine
from outreach_actors.domain.engine import AlreadyEnrolled, EnrollmentError
from outreach_actors.domain.store.models import Enrollment
from outreach_actors.settings import ENV_PREFIX, Settings, settings_from_mapping
from outreach_actors.web.http import database_connection
from outreach_actors.web.unsubscribe import UnsubscribePage
from outreach_actors.web.webhooks import SendGridWebhookReceiver
from outreach_actors.worker.runtime import install

WEBHOOK_PATH = "/webhooks/sendgrid"
UNSUBSCRIBE_PATH = "/unsubscribe/"

__all__ = ["UNSUBSCRIBE_PATH", "WEBHOOK_PATH", "AlreadyEnrolled", "Endpoints", "EnrollmentError",
           "OutreachUnavailable", "activate", "enroll", "host_settings"]


class OutreachUnavailable(RuntimeError):
    """The outreach database could not be reached: nothing was enrolled; try again
    later (a view answers 503, or queues the signup)."""


@dataclass(frozen=True)
class Endpoints:
    """The two endpoints a host mounts, built once from the settings."""

    settings: Settings
    webhook: SendGridWebhookReceiver
    unsubscribe: UnsubscribePage


def host_settings(
    config: Mapping[str, Any], *, prefixed: bool = True, environ: Mapping[str, str] | None = None
) -> Settings:
    """Settings from a host's config over the ``OUTREACH_*`` environment.

    ``prefixed`` config uses ``OUTREACH_*`` keys (Flask's ``app.config``); otherwise
    bare field names (Django's ``OUTREACH`` dict).
    """
    environ = os.environ if environ is None else environ
    merged: dict[str, Any] = {k: v for k, v in environ.items() if k.startswith(ENV_PREFIX)}
    for key, value in config.items():
        if prefixed and not key.startswith(ENV_PREFIX):
            continue
        merged[key if prefixed else ENV_PREFIX + key.upper()] = value
    return settings_from_mapping(merged)


def activate(settings: Settings) -> Endpoints:
    """Make these the process's settings, database and broker; the endpoints to mount."""
    install(settings)
    return Endpoints(settings, SendGridWebhookReceiver(settings), UnsubscribePage(settings))


def enroll(
    tenant_id: str,
    email: str,
    plan_name: str,
    *,
    fields: dict[str, Any] | None = None,
    timezone: str | None = None,
) -> Enrollment:
    """Enroll a contact from a host app's view (see ``engine.enroll``).

    Raises AlreadyEnrolled (an EnrollmentError, like the other refusals: an unknown
    plan or tenant, an invalid address), both importable from here; and
    OutreachUnavailable when the database cannot be reached.
    """
    try:
        with database_connection():
            return engine.enroll(tenant_id, email, plan_name, fields=fields, timezone=timezone)
    except peewee.OperationalError as exc:
        raise OutreachUnavailable(f"the outreach database cannot be reached: {exc}") from exc
