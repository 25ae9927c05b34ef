"""Hand a person's reply to a person: one forward per reply, through SendGrid, to the
sender identity's forward address, the prospect as Reply-To and the original attached.

A forward is no campaign send: no plan, no rate limit, no timers. It is stored as an
OutboundMessage without enrollment under the unique key ``forward:<post>``, so that
running twice sends once (the insert is the claim) and SendGrid's events for it find
their message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from email.utils import parseaddr
from typing import NamedTuple, Protocol

import peewee

from outreach_actors.domain.mail.outgoing import REPLY_TO_HEADER, OutgoingEmail, SendOutcome
from outreach_actors.domain.replies.classify import body_text
from outreach_actors.domain.replies.matching import load_messages
from outreach_actors.domain.replies.parse import ParsedInbound, parse_post
from outreach_actors.domain.store.models import (
    InboundPost,
    OutboundMessage,
    SenderIdentity,
    database_proxy,
    insert_rows,
    new_message_id,
    utcnow,
    write_transaction,
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


@dataclass(frozen=True)
class ReplyToForward:
    """A person's reply to forward: its post, our email it answers (id, tenant, sender,
    subject), and the reply as read."""

    post_id: int
    original: OutboundMessage
    parsed: ParsedInbound


class Forwarded(NamedTuple):
    """What came of one forward; ``retry``: SendGrid refused it for now."""

    what: str
    retry: bool = False


def forward_key(post_id: int) -> str:
    return f"forward:{post_id}"


def forward_reply(post_id: int, provider: MailProvider) -> str:
    """Forward the reply of one processed post, read again; returns what happened. Safe
    to run twice: a forward already sent (or being sent) is not sent again. Raises
    ForwardNotSent when SendGrid refused it for now (a later run sends it)."""
    post = InboundPost.select(InboundPost.id, InboundPost.body, InboundPost.headers,
                              InboundPost.forward_status, InboundPost.message).where(
        InboundPost.id == post_id).first()
    if post is None or post.forward_status not in {InboundPost.FORWARD_PENDING,
                                                    InboundPost.FORWARD_SENDING}:
        return "nothing to forward"
    original = load_messages([post.message_id]).get(post.message_id) if post.message_id else None
    if original is None:
        _finish([post_id], InboundPost.FORWARD_FAILED, "its email was purged before the forward")
        return "original purged"
    parsed = parse_post(bytes(post.body), (post.headers or {}).get("content-type"))
    forwarded = forward_replies([ReplyToForward(post_id, original, parsed)], provider)[post_id]
    if forwarded.retry:
        raise ForwardNotSent(f"forward of post {post_id}: {forwarded.what}")
    return forwarded.what


def forward_replies(replies: Sequence[ReplyToForward], provider: MailProvider,
                    ) -> dict[int, Forwarded]:
    """Forward each reply once, as read by the run that processed its post; by post id,
    what came of each. Safe to run twice, as forward_reply.

    The forwards are claimed together (one commit before the first send: a worker that
    dies in the sends leaves the rest ``sending``, which the reconciler makes
    ambiguous), sent one by one, and their outcomes recorded together."""
    if not replies:
        return {}
    forward_to = _forward_addresses(replies)
    emails = {reply.post_id: _email(reply, forward_to[reply.post_id]) for reply in replies}
    with write_transaction():
        claimed = _claim(emails)
        for address in {forward_to[post_id] for post_id in claimed}:
            InboundPost.update(forward_status=InboundPost.FORWARD_SENDING, forward_to=address).where(
                InboundPost.id.in_([p for p in claimed if forward_to[p] == address])).execute()
    outcomes = {post_id: provider.send(replace(emails[post_id], message_id=message_id))
                for post_id, message_id in claimed.items()}
    return {post_id: Forwarded("already forwarded") for post_id in emails
            if post_id not in claimed} | _record(claimed, outcomes)


def _forward_addresses(replies: Sequence[ReplyToForward]) -> dict[int, str]:
    """Where each reply goes, by post: its sender identity's forward address, else the
    sender itself."""
    pairs = sorted({(reply.original.tenant_id, reply.original.from_email) for reply in replies})
    addresses = {(tenant, email): forward_to for tenant, email, forward_to in SenderIdentity.select(
        SenderIdentity.tenant, SenderIdentity.email, SenderIdentity.forward_replies_to,
    ).where(peewee.Tuple(SenderIdentity.tenant, SenderIdentity.email).in_(pairs)).tuples()
        if forward_to}
    return {reply.post_id: addresses.get((reply.original.tenant_id, reply.original.from_email),
                                         reply.original.from_email) for reply in replies}


def _email(reply: ReplyToForward, forward_to: str) -> OutgoingEmail:
    """The forward of one reply (its message id given once claimed)."""
    message, original = reply.parsed.message, reply.original
    prospect = parseaddr(str(message.get("reply-to") or message.get("from") or ""))[1] or None
    return OutgoingEmail(
        message_id="", tenant=original.tenant_id, to_email=forward_to,
        from_email=original.from_email, from_name=original.from_name or None,
        subject=(str(message.get("subject") or "") or f"Re: {original.subject}")[:MAX_SUBJECT],
        html=None, text=body_text(message) or "(the reply has no text; see the attached email)",
        headers={FORWARD_HEADER: str(reply.post_id)}, reply_to=prospect,
        attachments=(("reply.eml", "message/rfc822", reply.parsed.raw),),
    )


def _claim(emails: dict[int, OutgoingEmail]) -> dict[int, str]:
    """Claim the forward of each post: a new message under its unique key, or one
    SendGrid refused for now; by post, the message id of each claimed."""
    now = utcnow()
    post_of = {forward_key(post_id): post_id for post_id in emails}
    # Kept whole (but the attachment) in the row: the ambiguous-send policy may resend it.
    rows = [{
        "id": new_message_id(), "tenant": email.tenant, "dedupe_key": forward_key(post_id),
        "status": OutboundMessage.SENDING, "to_email": email.to_email,
        "from_email": email.from_email, "from_name": email.from_name or "", "subject": email.subject,
        "html": "", "text": email.text, "send_started_at": now, "attempts": 1,
        "headers": {**email.headers, **({REPLY_TO_HEADER: email.reply_to} if email.reply_to else {})},
    } for post_id, email in emails.items()]
    claimed = {post_of[key]: message_id for message_id, key in insert_rows(
        OutboundMessage, rows, ignore_conflicts=True, conflict_target="dedupe_key",
        returning=("id", "dedupe_key"))}
    if taken := [key for key, post_id in post_of.items() if post_id not in claimed]:
        # Sent, or being sent, by an earlier run (never twice: a worker that died in
        # the call leaves it `sending`, which the reconciler makes ambiguous); only a
        # forward SendGrid refused for now is claimed again.
        claimed |= {post_of[key]: message_id for message_id, key in OutboundMessage.update(
            status=OutboundMessage.SENDING, attempts=OutboundMessage.attempts + 1).where(
            OutboundMessage.dedupe_key.in_(taken), OutboundMessage.status == RETRY_LATER,
        ).returning(OutboundMessage.id, OutboundMessage.dedupe_key).tuples().execute()}
    return claimed


def _record(claimed: dict[int, str], outcomes: dict[int, SendOutcome]) -> dict[int, Forwarded]:
    """Store what came of each claimed forward (by post), in one transaction."""
    now = utcnow()
    results: dict[int, Forwarded] = {}
    with database_proxy.atomic():
        for post_id, outcome in outcomes.items():
            message_id = claimed[post_id]
            if outcome.kind == "sent":
                OutboundMessage.update(status=OutboundMessage.SENT, sent_at=now,
                                       provider_message_id=outcome.provider_message_id).where(
                    OutboundMessage.id == message_id).execute()
                logger.info("Forwarded post=%s as message=%s", post_id, message_id)
                results[post_id] = Forwarded("forwarded")
            elif outcome.kind == "retry":
                OutboundMessage.update(status=RETRY_LATER, error=outcome.error).where(
                    OutboundMessage.id == message_id).execute()
                results[post_id] = Forwarded(f"{outcome.status_code} {outcome.error}", retry=True)
            else:
                status = (OutboundMessage.AMBIGUOUS if outcome.kind == "ambiguous"
                          else OutboundMessage.FAILED)
                OutboundMessage.update(status=status, error=outcome.error).where(
                    OutboundMessage.id == message_id).execute()
                _finish([post_id], InboundPost.FORWARD_FAILED, f"{outcome.kind}: {outcome.error}")
                logger.warning("Forward of post=%s %s: %s", post_id, outcome.kind, outcome.error)
                results[post_id] = Forwarded(f"forward {outcome.kind}")
        _finish([p for p, result in results.items() if result.what == "forwarded"],
                InboundPost.FORWARD_SENT, None, now)
    return results


def _finish(post_ids: list[int], status: str, error: str | None,
            now: datetime | None = None) -> None:
    if post_ids:
        InboundPost.update(forward_status=status, forward_error=error,
                           forwarded_at=now if status == InboundPost.FORWARD_SENT else None,
                           ).where(InboundPost.id.in_(post_ids)).execute()


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
