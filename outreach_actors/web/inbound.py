"""Receive SendGrid Inbound Parse posts, framework-neutral: verify, limit, store raw, enqueue.

The same receiver as the Event Webhook's (web/webhooks.py), with its own key, opt-in and
size limit: SendGrid signs Inbound Parse posts under a webhook security policy with the
Event Webhook's ECDSA scheme and headers. A post SendGrid retries byte for byte is
stored once (by its digest); the ``ingest_inbound_post`` actor reads it.
"""

from __future__ import annotations

import hashlib

from outreach_actors.domain.store.models import InboundPost, insert_rows, utcnow
from outreach_actors.web.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, SendGridWebhookReceiver
from outreach_actors.worker.actors.replies import enqueue_inbound_post


class SendGridInboundReceiver(SendGridWebhookReceiver):
    """Verifies, size-checks and stores one Inbound Parse post, then enqueues it.

    Parameters:
      settings(Settings): ``sendgrid_inbound_public_key`` (the security policy's public
        key), ``sendgrid_inbound_allow_unsigned``, ``webhook_replay_window``,
        ``inbound_max_body_bytes`` (SendGrid's own limit, 30 MB, by default).
    """

    key_setting = "sendgrid_inbound_public_key"
    allow_unsigned_setting = "sendgrid_inbound_allow_unsigned"
    max_body_setting = "inbound_max_body_bytes"
    what = "inbound post"
    replay_group = "replies"
    # SendGrid documents ECDSA for Inbound Parse but names no headers; the Event
    # Webhook's are expected, and the same names without "Twilio-" are taken too, as
    # seen in tools that post Inbound Parse forms.
    signature_headers = (
        (SIGNATURE_HEADER, TIMESTAMP_HEADER),
        ("X-Email-Event-Webhook-Signature", "X-Email-Event-Webhook-Timestamp"),
    )

    def store(self, body: bytes, headers: dict[str, str]) -> tuple[int, bool]:
        digest = hashlib.sha256(body).hexdigest()
        inserted = insert_rows(InboundPost, [{
            "body": body, "headers": headers, "body_digest": digest, "received_at": utcnow(),
        }], ignore_conflicts=True, conflict_target="body_digest", returning="id")
        if inserted:
            return inserted[0], True
        return InboundPost.select(InboundPost.id).where(
            InboundPost.body_digest == digest).scalar(), False

    def enqueue(self, stored_id: int) -> None:
        enqueue_inbound_post(stored_id)
