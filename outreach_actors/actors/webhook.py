"""The ``normalize_webhook`` actor: process one stored SendGrid webhook delivery."""

from __future__ import annotations

import dramatiq

from .. import ingest

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
