"""The endpoints every host mounts, built once from the settings: the paths they are
served at, the host's settings over the environment, and ``activate``, which makes
them this process's settings, database and broker."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from outreach_actors.domain.unsubscribe import require_unforgeable_links
from outreach_actors.settings import ENV_PREFIX, Settings, settings_from_mapping
from outreach_actors.web.events import EventsReceiver
from outreach_actors.web.inbound import SendGridInboundReceiver
from outreach_actors.web.unsubscribe import UnsubscribePage
from outreach_actors.web.webhooks import SendGridWebhookReceiver
from outreach_actors.worker.runtime import install

WEBHOOK_PATH = "/webhooks/sendgrid"
INBOUND_PATH = "/webhooks/sendgrid/inbound"
UNSUBSCRIBE_PATH = "/unsubscribe/"


@dataclass(frozen=True)
class Endpoints:
    """The endpoints a host mounts, built once from the settings."""

    settings: Settings
    webhook: SendGridWebhookReceiver
    unsubscribe: UnsubscribePage
    events: EventsReceiver
    inbound: SendGridInboundReceiver


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
    """Make these the process's settings, database and broker; the endpoints to mount.

    Raises SettingsError, having changed nothing, when the settings mail real recipients
    with a secret anyone could forge unsubscribe links with.
    """
    require_unforgeable_links(settings)
    install(settings)
    return Endpoints(settings, SendGridWebhookReceiver(settings), UnsubscribePage(settings),
                     EventsReceiver(settings), SendGridInboundReceiver(settings))
