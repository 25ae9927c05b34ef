"""What the web endpoints hand to the workers: ``normalize_webhook`` processes one
stored SendGrid webhook delivery, ``apply_unsubscribe`` one unsubscribe that came
while the database was down."""

from __future__ import annotations

import logging

import dramatiq

from .. import ingest, unsubscribe
from ..settings import get_settings

logger = logging.getLogger(__name__)

# Retries cover events that arrive before their message row is committed (and a
# database outage): about 40 minutes in all, after which the delivery stays
# `failed` with its error until `outreach webhooks replay ID`.
WEBHOOK_MAX_RETRIES = 10


# No idempotency lease: every event is stored once by its unique key, so running a
# delivery twice is harmless, and `outreach webhooks replay ID` must run it again
# even after an earlier run finished (a body kept as failed, then replayed).
@dramatiq.actor(
    queue_name="webhooks", max_retries=WEBHOOK_MAX_RETRIES, min_backoff=5_000,
    max_backoff=600_000, idempotency_key=False,
)
def normalize_webhook(delivery_id: int) -> None:
    """Normalize one delivery; running it twice stores and applies each event once."""
    ingest.normalize_delivery(delivery_id)


@dramatiq.actor(queue_name="webhooks", max_retries=WEBHOOK_MAX_RETRIES, min_backoff=5_000,
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
