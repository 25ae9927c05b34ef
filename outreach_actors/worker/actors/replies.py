"""What the inbound endpoint hands to the workers: ``ingest_inbound_post`` reads stored
Inbound Parse posts (its own and others waiting) and forwards their people's replies,
``forward_reply`` forwards one reply again, with retries."""

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
    """Read one stored post, and others that wait, and act on their replies; running it
    twice acts once. Their people's replies are forwarded right after the commit, by
    this run, which has read them (see forward_now)."""
    # A reply routed to a thanks email: enqueued once the move commits.
    with dispatch.dispatch_after_commit(enqueue_actions):
        batch = ingest.ingest_posts(post_id)
    logger.debug("Inbound post=%s is %s (%d posts in its batch)", post_id,
                 batch.statuses[post_id], len(batch.statuses))
    forward_now(batch.forwards)


def forward_now(replies: list[forward.ReplyToForward]) -> None:
    """Forward replies a run has just read and committed. One SendGrid refused for now,
    or all of them when this fails, go to ``forward_reply`` and its retries (a forward
    already sent is not sent again); one whose enqueue is lost is found by reconcile."""
    if not replies:
        return
    try:
        outcomes = forward.forward_replies(replies, sendgrid_client_from_settings(get_settings()))
    except Exception:
        logger.warning("Forwarding %d replies failed; each is handed to forward_reply",
                       len(replies), exc_info=True)
        outcomes = {reply.post_id: forward.Forwarded("failed", retry=True) for reply in replies}
    for post_id, outcome in outcomes.items():
        if outcome.retry:
            forward_reply.send(post_id)


@dramatiq.actor(queue_name="webhooks", max_retries=REPLIES_MAX_RETRIES, min_backoff=5_000,
                max_backoff=600_000, idempotency_key=False)
def forward_reply(post_id: int) -> None:
    """Forward the reply of one post to its sender's forward address, once."""
    try:
        outcome = forward.forward_reply(post_id, sendgrid_client_from_settings(get_settings()))
    except forward.ForwardNotSent as exc:
        # Expected (429, 5xx): retried as the send actor's refusals are, in one line,
        # without a traceback or a Sentry error.
        logger.warning("Forward of inbound post=%s will be retried: %s", post_id, exc)
        raise dramatiq.Retry(str(exc)) from exc
    logger.info("Forward of inbound post=%s: %s", post_id, outcome)


def enqueue_inbound_post(post_id: int) -> None:
    """Hand a committed post to the ``ingest_inbound_post`` actor."""
    ingest_inbound_post.send(post_id)
