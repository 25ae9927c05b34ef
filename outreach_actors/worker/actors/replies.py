"""What the inbound endpoint hands to the workers: ``ingest_inbound_post`` reads one
stored Inbound Parse post, ``forward_reply`` forwards a person's reply once."""

from __future__ import annotations

import logging

import dramatiq

from outreach_actors.domain import dispatch
from outreach_actors.domain.replies import forward, ingest
from outreach_actors.providers.sendgrid.client import sendgrid_client_from_settings
from outreach_actors.settings import get_settings
from outreach_actors.worker.actors.mail import enqueue_actions

logger = logging.getLogger(__name__)

REPLIES_MAX_RETRIES = 10


# No idempotency lease: the reply's event is stored once by its unique key, so running a
# post twice acts once, and `outreach replies replay ID` must run it again.
@dramatiq.actor(queue_name="webhooks", max_retries=REPLIES_MAX_RETRIES, min_backoff=5_000,
                max_backoff=600_000, idempotency_key=False)
def ingest_inbound_post(post_id: int) -> None:
    """Read one stored post and act on its reply; running it twice acts once."""
    # A reply routed to a thanks email: enqueued once the move commits.
    with dispatch.dispatch_after_commit(enqueue_actions):
        status = ingest.ingest_post(post_id, enqueue_forward=forward_reply.send)
    logger.debug("Inbound post=%s is %s", post_id, status)


@dramatiq.actor(queue_name="webhooks", max_retries=REPLIES_MAX_RETRIES, min_backoff=5_000,
                max_backoff=600_000, idempotency_key=False)
def forward_reply(post_id: int) -> None:
    """Forward the reply of one post to its sender's forward address, once."""
    outcome = forward.forward_reply(post_id, sendgrid_client_from_settings(get_settings()))
    logger.info("Forward of inbound post=%s: %s", post_id, outcome)


def enqueue_inbound_post(post_id: int) -> None:
    """Hand a committed post to the ``ingest_inbound_post`` actor."""
    ingest_inbound_post.send(post_id)
