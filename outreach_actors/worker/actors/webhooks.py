"""What the web endpoints hand to the workers: ``normalize_webhook`` processes one
stored SendGrid webhook delivery, ``apply_unsubscribe`` one unsubscribe that came
while the database was down."""

from __future__ import annotations

import logging

import dramatiq
from dramatiq.middleware import CurrentMessage

from outreach_actors.domain import dispatch, ingest, unsubscribe
from outreach_actors.providers.sendgrid.events import parse_sendgrid_batch
from outreach_actors.settings import get_settings
from outreach_actors.worker.actors.mail import enqueue_actions
from outreach_actors.worker.middleware.polling import WEBHOOK_QUEUE

logger = logging.getLogger(__name__)

# Retries cover a database outage and events whose message is not found: about 40
# minutes in all. Then a delivery that still fails stays `failed` with its error
# until `outreach webhooks replay ID`, and events of messages still missing are
# stored without them (see ingest.normalize_delivery).
WEBHOOK_MAX_RETRIES = 10


# No idempotency lease: every event is stored once by its unique key, so running a
# delivery twice is harmless, and `outreach webhooks replay ID` must run it again
# even after an earlier run finished (a body kept as failed, then replayed).
@dramatiq.actor(
    queue_name=WEBHOOK_QUEUE, max_retries=WEBHOOK_MAX_RETRIES, min_backoff=5_000,
    max_backoff=600_000, idempotency_key=False,
)
def normalize_webhook(delivery_id: int) -> None:
    """Normalize one delivery; running it twice stores and applies each event once."""
    message = CurrentMessage.get_current_message()
    retries = message.options.get("retries", 0) if message else 0
    try:
        # A click that moves a contact to a thanks email: enqueued once the events commit.
        with dispatch.dispatch_after_commit(enqueue_actions):
            ingest.normalize_delivery(delivery_id, parse_batch=parse_sendgrid_batch,
                                     last_attempt=retries >= WEBHOOK_MAX_RETRIES)
    except ingest.MessagesNotYetStored as exc:
        # Expected, and retried: a WARNING, not an error with a traceback for Sentry.
        logger.warning("%s (attempt %d of %d)", exc, retries + 1, WEBHOOK_MAX_RETRIES + 1)
        raise dramatiq.Retry(str(exc)) from exc


@dramatiq.actor(queue_name=WEBHOOK_QUEUE, max_retries=WEBHOOK_MAX_RETRIES, min_backoff=5_000,
                max_backoff=600_000)
def apply_unsubscribe(token: str) -> None:
    """Apply an unsubscribe link's POST that the database could not take at the time."""
    try:
        request = unsubscribe.read_token(get_settings(), token)
    except unsubscribe.InvalidUnsubscribeToken:
        # The page read it before queueing it: only a secret changed since does this.
        logger.error("Queued unsubscribe token no longer reads with the configured secrets")
        return
    if not unsubscribe.apply_unsubscribe(request):
        logger.warning("Queued unsubscribe of message=%s: its tenant no longer exists",
                       request.message_id)


def enqueue_delivery(delivery_id: int) -> None:
    """Hand a committed delivery to the ``normalize_webhook`` actor."""
    normalize_webhook.send(delivery_id)
