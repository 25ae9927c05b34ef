"""Hand a person's reply to a person: one forward per reply, through SendGrid, to the
sender identity's forward address, the prospect as Reply-To and the original attached.

A forward is no campaign send: no plan, no rate limit, no timers. It is stored as an
OutboundMessage without enrollment under the unique key ``forward:<post>``, so that
running twice sends once (the insert is the claim) and SendGrid's events for it find
their message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from email.utils import parseaddr
from typing import Protocol

from outreach_actors.domain.mail.outgoing import REPLY_TO_HEADER, OutgoingEmail, SendOutcome
from outreach_actors.domain.replies.classify import body_text
from outreach_actors.domain.replies.parse import parse_post
from outreach_actors.domain.store.models import (
    InboundPost,
    OutboundMessage,
    SenderIdentity,
    insert_rows,
    new_message_id,
    utcnow,
)

logger = logging.getLogger(__name__)

#: Marks our forwards: one that comes back to the inbound address is a loop, not a reply.
FORWARD_HEADER = "X-Outreach-Forward"
MAX_SUBJECT = 900
#: A forward SendGrid refused for now: not ``rendered``, so no campaign send takes it.
RETRY_LATER = "forward_retry"


class MailProvider(Protocol):
    def send(self, email: OutgoingEmail) -> SendOutcome: ...


class ForwardNotSent(RuntimeError):
    """SendGrid refused the forward for now; it is retried."""


def forward_key(post_id: int) -> str:
    return f"forward:{post_id}"


def forward_reply(post_id: int, provider: MailProvider) -> str:
    """Forward the reply of one processed post; returns what happened. Safe to run twice:
    a forward already sent (or being sent) is not sent again."""
    post = InboundPost.get_or_none(InboundPost.id == post_id)
    if post is None or post.forward_status not in {InboundPost.FORWARD_PENDING,
                                                    InboundPost.FORWARD_SENDING}:
        return "nothing to forward"
    original = OutboundMessage.get_or_none(OutboundMessage.id == post.message_id)
    if original is None:
        _finish(post_id, InboundPost.FORWARD_FAILED, "its email was purged before the forward")
        return "original purged"
    identity = SenderIdentity.get_or_none(SenderIdentity.tenant == original.tenant_id,
                                          SenderIdentity.email == original.from_email)
    forward_to = (identity.forward_replies_to if identity else None) or original.from_email
    parsed = parse_post(bytes(post.body), (post.headers or {}).get("content-type"))
    reply = parsed.message
    prospect = parseaddr(str(reply.get("reply-to") or reply.get("from") or ""))[1] or None
    subject = (str(reply.get("subject") or "") or f"Re: {original.subject}")[:MAX_SUBJECT]
    key = forward_key(post_id)
    text = body_text(reply) or "(the reply has no text; see the attached email)"
    # Kept whole (but the attachment) in the row: the ambiguous-send policy may resend it.
    headers = {FORWARD_HEADER: str(post_id), **({REPLY_TO_HEADER: prospect} if prospect else {})}
    inserted = insert_rows(OutboundMessage, [{
        "id": new_message_id(), "tenant": original.tenant_id, "dedupe_key": key,
        "status": OutboundMessage.SENDING, "to_email": forward_to,
        "from_email": original.from_email, "from_name": original.from_name,
        "subject": subject, "html": "", "text": text, "headers": headers,
        "send_started_at": utcnow(), "attempts": 1,
    }], ignore_conflicts=True, conflict_target="dedupe_key", returning="id")
    if inserted:
        message_id = inserted[0]
    else:
        # Sent, or being sent, by an earlier run (never twice: a worker that died in
        # the call leaves it `sending`, which the reconciler makes ambiguous); only a
        # forward SendGrid refused for now is claimed again.
        message_id = (OutboundMessage.update(status=OutboundMessage.SENDING,
                                             attempts=OutboundMessage.attempts + 1)
                      .where(OutboundMessage.dedupe_key == key,
                             OutboundMessage.status == RETRY_LATER)
                      .returning(OutboundMessage.id).tuples().execute())
        message_id = next(iter(message_id), (None,))[0]
        if message_id is None:
            return "already forwarded"
    InboundPost.update(forward_status=InboundPost.FORWARD_SENDING, forward_to=forward_to).where(
        InboundPost.id == post_id).execute()
    outcome = provider.send(OutgoingEmail(
        message_id=message_id, tenant=original.tenant_id, to_email=forward_to,
        from_email=original.from_email, from_name=original.from_name or None, subject=subject,
        html=None, text=text, headers={FORWARD_HEADER: str(post_id)}, reply_to=prospect,
        attachments=(("reply.eml", "message/rfc822", parsed.raw),),
    ))
    now = utcnow()
    if outcome.kind == "sent":
        OutboundMessage.update(status=OutboundMessage.SENT, sent_at=now,
                               provider_message_id=outcome.provider_message_id).where(
            OutboundMessage.id == message_id).execute()
        _finish(post_id, InboundPost.FORWARD_SENT, None)
        logger.info("Forwarded post=%s as message=%s", post_id, message_id)
        return "forwarded"
    if outcome.kind == "retry":
        OutboundMessage.update(status=RETRY_LATER, error=outcome.error).where(
            OutboundMessage.id == message_id).execute()
        raise ForwardNotSent(f"forward of post {post_id}: {outcome.status_code} {outcome.error}")
    status = OutboundMessage.AMBIGUOUS if outcome.kind == "ambiguous" else OutboundMessage.FAILED
    OutboundMessage.update(status=status, error=outcome.error).where(
        OutboundMessage.id == message_id).execute()
    _finish(post_id, InboundPost.FORWARD_FAILED, f"{outcome.kind}: {outcome.error}")
    logger.warning("Forward of post=%s %s: %s", post_id, outcome.kind, outcome.error)
    return f"forward {outcome.kind}"


def _finish(post_id: int, status: str, error: str | None) -> None:
    InboundPost.update(forward_status=status, forward_error=error,
                       forwarded_at=utcnow() if status == InboundPost.FORWARD_SENT else None,
                       ).where(InboundPost.id == post_id).execute()


def requeue_pending_forwards(enqueue: Callable[[int], None], older_than: timedelta, *,
                             now: datetime | None = None, limit: int = 1000) -> int:
    """Enqueue again forwards still ``pending`` ``older_than`` after their post was read
    (an enqueue lost after the commit), each at most once per ``older_than``. A forward
    enqueued twice is sent once (forward_reply)."""
    now = now or utcnow()
    cutoff = now - older_than
    ids = [post_id for (post_id,) in InboundPost.select(InboundPost.id).where(
        InboundPost.forward_status == InboundPost.FORWARD_PENDING,
        InboundPost.processed_at < cutoff,
        InboundPost.requeued_at.is_null() | (InboundPost.requeued_at < cutoff),
    ).order_by(InboundPost.id).limit(limit).tuples()]
    if ids:
        InboundPost.update(requeued_at=now).where(InboundPost.id.in_(ids)).execute()
    for post_id in ids:
        enqueue(post_id)
    return len(ids)
