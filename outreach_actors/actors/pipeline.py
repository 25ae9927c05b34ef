"""The campaign actors: render, send, fire timeouts; and how due actions become messages.

Each one loads ids and calls the domain; duplicates are absorbed by the domain's
row claims and by the idempotency middleware, rate limits by the rate-limit one.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage

from .. import delivery, timeouts
from ..models import OutboundMessage, ScheduledAction, SenderIdentity
from ..ratelimit import Limit, default_limits
from ..settings import get_settings

logger = logging.getLogger(__name__)

SEND_MAX_RETRIES = get_settings().send_max_retries


@lru_cache(maxsize=4)
def _client(api_key: str | None, host: str, timeout_s: float):
    from ..providers.sendgrid import SendGridClient

    return SendGridClient(api_key or "", host, timeout_s)


def sendgrid_client():
    settings = get_settings()
    return _client(settings.sendgrid_api_key, settings.sendgrid_api_host,
                   settings.sendgrid_timeout.total_seconds())


@dramatiq.actor(queue_name="render", max_retries=5)
def render(action_id: int) -> str | None:
    """Render a send action's email; its result (a message id) is piped to `send`."""
    return delivery.render_action(action_id)


def send_rate_limits(message: dramatiq.Message) -> list[Limit]:
    """Every scope one send takes: its sender, tenant, recipient domain and the global one."""
    message_id = message.args[0] if message.args else None
    if message_id is None:
        return []
    row = OutboundMessage.get_or_none(OutboundMessage.id == message_id)
    if row is None or row.status != OutboundMessage.RENDERED:
        return []  # nothing will be sent: do not take a slot
    sender = SenderIdentity.get_or_none(SenderIdentity.tenant == row.tenant_id,
                                        SenderIdentity.email == row.from_email)
    return default_limits(
        get_settings(), tenant=row.tenant_id, sender=row.from_email,
        recipient_domain=row.to_email.rsplit("@", 1)[-1],
        tenant_overrides=row.tenant.rate_limits or {},
        sender_overrides=(sender.rate_limits if sender else None) or {},
    )


@dramatiq.actor(queue_name="send", max_retries=SEND_MAX_RETRIES, min_backoff=5_000,
                max_backoff=600_000, rate_limits=send_rate_limits)
def send(message_id: str | None) -> None:
    """Send one rendered message through SendGrid."""
    if message_id is None:
        return  # the render found nothing to send
    message = CurrentMessage.get_current_message()
    retries = message.options.get("retries", 0) if message else 0
    delivery.send_message(message_id, sendgrid_client(), final_attempt=retries >= SEND_MAX_RETRIES)


@dramatiq.actor(queue_name="timeouts", max_retries=10)
def fire_timeout(action_id: int) -> None:
    """Fire a due timeout: a synthetic no_open/no_click/elapsed event, exactly once."""
    timeouts.fire_timeout(action_id)


def enqueue_action(action: ScheduledAction, delay_ms: int, **options: Any) -> None:
    """Turn a claimed ScheduledAction into broker messages (``options``: message options)."""
    if action.kind == ScheduledAction.SEND:
        dramatiq.pipeline([
            render.message_with_options(args=(action.id,), **options),
            send.message_with_options(**options),
        ]).run(delay=delay_ms or None)
    else:
        fire_timeout.send_with_options(args=(action.id,), delay=delay_ms or None, **options)


def enqueue_send(message_id: str, **options: Any) -> None:
    send.send_with_options(args=(message_id,), **options)


# Deliberate re-runs, where the database says the work is not done: they skip the
# idempotency lease. A delivery that found the claim of a killed worker taken ran
# to its end ("replay") and left the effect marked done; that mark must not skip
# the re-run, or the timer (or the resend) is lost until the mark expires.
def requeue_action(action: ScheduledAction, delay_ms: int) -> None:
    """Enqueue again an action whose lease expired."""
    enqueue_action(action, delay_ms, idempotency_key=False)


def requeue_send(message_id: str) -> None:
    """Enqueue an ambiguous send again under the ``resend`` policy."""
    enqueue_send(message_id, idempotency_key=False)
